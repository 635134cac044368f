"""``tm.save`` / ``tm.load``: checkpoints as ``.npz`` files, bit-exact.

An ``.npz`` is a zip of ``.npy`` arrays, which store raw bytes plus dtype and shape, so a
float32 weight comes back with every bit unchanged. Nested dicts (a model's state, an
optimiser's state, the step number...) are flattened to keys joined by "/". Files are
written to a temporary name and then renamed, so a crash mid-save never destroys the
previous checkpoint. Pickle is never used: loading a file cannot run code.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from tinymoe import backend
from tinymoe.tensor import Tensor

SEP = "/"


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if SEP in key:
            raise ValueError(f"save: key {key!r} may not contain {SEP!r} (it separates nested dicts)")
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
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:  # a file object: numpy adds no ".npz" to the name
        np.savez(f, **flat)
    os.replace(tmp, path)  # atomic on POSIX: the old file stays until the new one is complete


def load(path) -> dict:
    """Read what ``save`` wrote: a nested dict of NumPy arrays (0-d for numbers/strings)."""
    path = os.fspath(path)
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a bare .npy array, not a checkpoint
            raise ValueError("it holds one array, not an .npz archive")
        with archive:
            flat = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"load: {path} is not a readable tinymoe checkpoint ({error})") from error
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree
