"""``tm.save`` / ``tm.load``: checkpoints as ``.npz`` files, bit-exact.

An ``.npz`` is a zip of ``.npy`` arrays, which store raw bytes plus dtype and shape, so a
float32 weight comes back with every bit unchanged. Nested dicts (a model's state, an
optimiser's state, the step number...) are flattened to keys joined by "/". Pickle is
never used: loading a file cannot run code.

Saving is safe against crashes and against other writers: each save writes its own
temporary file next to the target, flushes it to disk and renames it over the target in
one atomic step, so a reader (or a crash) sees the old file or one writer's complete new
file, never a torn one; when several processes save to one path, the last rename wins.
"""

from __future__ import annotations

import os
import secrets
import zipfile

import numpy as np

from tinymoe import backend
from tinymoe.tensor import Tensor

SEP = "/"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if not isinstance(key, str):
            where = f"under {prefix[:-1]!r}" if prefix else "at the top level"
            raise TypeError(f"save: keys must be strings, got {key!r} ({type(key).__name__}) {where}")
        if SEP in key:
            raise ValueError(f"save: key {key!r} may not contain {SEP!r} (it separates nested dicts)")
        if key.endswith(".npy"):  # .npz names each array "<key>.npy" and reads "a.npy" back as key "a"
            raise ValueError(f"save: key {prefix + key!r} may not end in '.npy': the .npz format would confuse it "
                             f"with the key {prefix + key[:-4]!r}")
        if hasattr(value, "state_dict"):  # a Module (or optimiser) inside the dict
            value = value.state_dict()
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}{SEP}"))
        else:
            array = np.asarray(backend.to_numpy(value.data if isinstance(value, Tensor) else value))
            if array.dtype == object:
                raise TypeError(f"save: {prefix}{key} is not an array, number or string")
            flat[prefix + key] = array
    return flat


def save(obj, path) -> None:
    """Write a module's ``state_dict()`` or a (nested) dict of arrays/numbers/strings."""
    tree = obj.state_dict() if hasattr(obj, "state_dict") else obj
    if not isinstance(tree, dict):
        raise TypeError(f"save: expected a Module or a dict, got {type(obj).__name__}")
    flat = _flatten(tree)
    path = os.fspath(path)
    # A name no other writer uses (our pid and a random token; O_EXCL refuses an existing
    # file). Not tempfile.mkstemp: it makes the file private (0600), and a checkpoint should
    # get the permissions of any file the user writes (0666 less the umask).
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as f:  # a file object: numpy adds no ".npz" to the name
            np.savez(f, **flat)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)  # atomic on POSIX: the old file stays until the new one is complete
    except BaseException:  # including Ctrl-C: leave no temporary file behind
        os.unlink(tmp)
        raise


def load(path) -> dict:
    """Read what ``save`` wrote: a nested dict of NumPy arrays (0-d for numbers/strings).

    A file that ``save`` cannot have written (not an .npz, a member that is not an array,
    a name that is both an array and a group) raises a ValueError naming the file and,
    where there is one, the member.
    """
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array, not a checkpoint
            raise ValueError("it holds one array, not an .npz archive")
        with archive:
            flat = {key: archive[key] for key in archive.files}
        for key, value in flat.items():
            if not isinstance(value, np.ndarray):  # np.load gives the raw bytes of a member that is no .npy
                raise ValueError(f"member {key!r} is not an array")
            if key.endswith(".npy"):  # save refuses such keys: "a.npy" would read back the array of "a"
                raise ValueError(f"member '{key}.npy' has a name that save never writes")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"load: {path} is not a readable tinymoe checkpoint ({error})") from error
    return _unflatten(flat, path)


def _unflatten(flat: dict, path: str) -> dict:
    """{"model/fc/weight": array} -> {"model": {"fc": {"weight": array}}}."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(SEP)
        for depth, name in enumerate(parents):
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ValueError(f"load: {path}: {SEP.join(parents[: depth + 1])!r} is both an array and a group")
        if leaf in node:  # a group of that name came first
            raise ValueError(f"load: {path}: {key!r} is both an array and a group")
        node[leaf] = value
    return tree
