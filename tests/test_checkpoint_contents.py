"""What a checkpoint holds (issue 9, item 10): keys that would collide inside the .npz are
refused at save, and a damaged but readable file gives one clear error naming the field,
never a bare KeyError or a silent cast."""

import shutil
import zipfile

import numpy as np
import pytest

import tinymoe as tm
from tests.test_train import tiny
from tinymoe.train import CheckpointError, train

# ---------------------------------------------------------------------- tm.save / tm.load


@pytest.mark.parametrize(
    "tree, name",
    [({"a": np.zeros(2), "a.npy": np.ones(3)}, "a.npy"), ({"model": {"w": np.zeros(1), "w.npy": np.ones(1)}},
                                                          "model/w.npy"),
     ({"b.npy": np.ones(1)}, "b.npy")],
    ids=["top", "nested", "alone"],
)
def test_a_key_ending_in_npy_is_refused_at_save(tree, name, tmp_path):
    # np.savez stores key k as "k.npy", and np.load reads "a.npy" back as the array of "a":
    # before, {"a", "a.npy"} came back with both keys holding a's values
    with pytest.raises(ValueError, match=rf"save: key '{name}' may not end in '.npy'"):
        tm.save(tree, tmp_path / "ckpt.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", [0, ("a", "b"), None], ids=repr)
def test_a_key_that_is_not_a_string_is_refused_at_save(key, tmp_path):
    with pytest.raises(TypeError, match=rf"save: keys must be strings, got {key!r}".replace("(", r"\(")
                       .replace(")", r"\)")):
        tm.save({"model": {key: np.zeros(1)}}, tmp_path / "ckpt.npz")


def write_npz(path, members: dict):
    """An .npz that tm.save would never write: raw member names -> bytes or arrays."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            if isinstance(content, np.ndarray):
                with archive.open(name, "w") as f:
                    np.lib.format.write_array(f, content)
            else:
                archive.writestr(name, content)


@pytest.mark.parametrize(
    "members, message",
    [
        ({"w.npy": np.zeros(1), "notes.txt": b"hello"}, r"member 'notes.txt' is not an array"),
        ({"a.npy.npy": np.zeros(1)}, r"member 'a.npy.npy' has a name that save never writes"),
        ({"model.npy": np.zeros(1), "model/w.npy": np.zeros(2)}, r"'model' is both an array and a group"),
        ({"model/w.npy": np.zeros(2), "model.npy": np.zeros(1)}, r"'model' is both an array and a group"),
    ],
    ids=["not-an-array", "npy-suffix", "array-then-group", "group-then-array"],
)
def test_a_file_save_cannot_have_written_is_refused_naming_the_member(members, message, tmp_path):
    path = tmp_path / "odd.npz"
    write_npz(path, members)
    with pytest.raises(ValueError, match=message):
        tm.load(path)


# --------------------------------------------------------------- training checkpoints


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    train(tiny("switch", steps=2, checkpoint_every=2), folder, progress=False)
    return folder / "checkpoint.npz"


DELETE = object()


def set_field(tree, dotted, value):
    """Replace (or delete) the field "group/name"; a callable value is computed from the tree."""
    node = tree
    *parents, leaf = dotted.split("/")
    for name in parents:
        node = node[name]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value(tree) if callable(value) else value


def head_bias_in_float64(tree):
    return tree["model"]["head.bias"].astype(np.float64)  # the same numbers, another dtype


def negative_step_counts(tree):
    return -tree["optimizer"]["steps"]


DAMAGES = [
    ("format", DELETE, r"has no field 'format'"),
    ("format", 1, r"has checkpoint format 1; this tinymoe reads format 2"),
    ("step", DELETE, r"has no field 'step'"),
    ("step", -3, r"field 'step' must be >= 0, got -3"),
    ("step", 2.0, r"field 'step' must be a whole number, got a float64 array"),  # not cast to 2
    ("step", "2", r"field 'step' must be a whole number, got a <U1 array"),
    ("step", np.array([2]), r"field 'step' must be a whole number, got a int64 array of shape \(1,\)"),
    ("schedule_steps", 0, r"field 'schedule_steps' must be >= 1"),
    ("config", 7, r"field 'config' must be a JSON object"),
    ("config", "{not json", r"field 'config' is not valid JSON"),
    ("model", np.zeros(3), r"field 'model' must be a group of arrays"),
    ("model", DELETE, r"has no field 'model'"),
    ("model/head.bias", DELETE, r"field 'model' does not fit this model: missing \['head.bias'\]"),
    ("model/extra", np.zeros(1), r"field 'model' does not fit this model: missing \[\], unexpected \['extra'\]"),
    ("model/head.bias", head_bias_in_float64,  # not cast silently
     r"field 'model/head.bias' must be a float32 array of shape \(\d+,\), got a float64 array"),
    ("model/head.bias", {"x": np.zeros(1)}, r"field 'model/head.bias' must be a float32 array .* got a group"),
    ("optimizer/steps", negative_step_counts, r"field 'optimizer': .*steps must be .* >= 0"),
    ("optimizer/lr", np.nan, r"field 'optimizer': .*lr must be a finite number"),
    ("optimizer/m.0", DELETE, r"field 'optimizer' does not fit this model: missing \['m.0'\]"),
    ("rng", "{}", r"field 'rng' holds no valid generator state"),
    ("rng", '{"library": {"seed": -1}, "data": {}}', r"field 'rng' holds no valid generator state"),
    ("history", '{"history": [], "evals": []}', r"field 'history' has 0 steps, field 'step' says 2"),
    ("history", '{"history": 3}', r"field 'history' must hold the lists 'history' and 'evals'"),
]


@pytest.mark.parametrize("name, value, message", DAMAGES,
                         ids=[f"{n}={getattr(v, '__name__', v)!r}"[:40] for n, v, _ in DAMAGES])
def test_a_damaged_checkpoint_is_refused_naming_the_field(name, value, message, good_checkpoint, tmp_path):
    tree = tm.load(good_checkpoint)
    set_field(tree, name, value)
    tm.save(tree, tmp_path / "checkpoint.npz")
    with pytest.raises(CheckpointError, match=message):
        train(tiny("switch", steps=4, checkpoint_every=2), tmp_path, resume=True, progress=False)


def test_the_good_checkpoint_itself_resumes(good_checkpoint, tmp_path):
    shutil.copy(good_checkpoint, tmp_path / "checkpoint.npz")
    run = train(tiny("switch", steps=4, checkpoint_every=2), tmp_path, resume=True, progress=False)
    assert [h["step"] for h in run.history] == [0, 1, 2, 3]
