"""tm.save / tm.load: checkpoints that come back bit for bit, or fail loudly."""

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.nn import Linear


def same_bits(a, b):
    """Equal dtype, shape and bytes: stricter than ==, and true for NaN == NaN too."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_module_round_trip_is_bit_exact(tmp_path):
    model = Linear(3, 4)
    model.bias.data[:] = [0.1, -0.2, 1e-30, 3.0]  # not just the zeros it starts with
    tm.save(model, tmp_path / "model.npz")
    loaded = tm.load(tmp_path / "model.npz")
    assert sorted(loaded) == ["bias", "weight"]
    for name, array in model.state_dict().items():
        assert same_bits(loaded[name], array), name

    tm.manual_seed(1)
    fresh = Linear(3, 4)
    fresh.load_state_dict(loaded)
    assert same_bits(fresh.weight.numpy(), model.weight.numpy())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_round_trip_bit_exact_even_special_values(dtype, tmp_path):
    info = np.finfo(dtype)
    array = np.array([[1 / 3, -0.0, np.nan], [np.inf, info.tiny / 2, info.max]], dtype)  # tiny/2: subnormal
    tm.save({"x": array}, tmp_path / "ckpt.npz")
    assert same_bits(tm.load(tmp_path / "ckpt.npz")["x"], array)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8])
def test_integer_arrays_round_trip(dtype, tmp_path):
    info = np.iinfo(dtype)
    array = np.array([info.min, 0, 1, info.max], dtype)
    tm.save({"ids": array}, tmp_path / "ckpt.npz")
    assert same_bits(tm.load(tmp_path / "ckpt.npz")["ids"], array)


def test_nested_dicts_numbers_and_strings_round_trip(tmp_path):
    weights = np.arange(6, dtype=np.float32).reshape(2, 3)
    tm.save({"model": {"fc": {"weight": weights}}, "step": 7, "note": "x"}, tmp_path / "ckpt.npz")
    loaded = tm.load(tmp_path / "ckpt.npz")
    assert sorted(loaded) == ["model", "note", "step"]
    assert same_bits(loaded["model"]["fc"]["weight"], weights)
    assert loaded["step"].item() == 7
    assert loaded["note"].item() == "x"


@pytest.mark.parametrize(
    "contents",
    [b"this is not a checkpoint at all", b"", b"PK\x03\x04 truncated zip"],
    ids=["garbage", "empty", "truncated-zip"],
)
def test_a_corrupt_file_raises_a_clear_value_error(contents, tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(contents)
    with pytest.raises(ValueError, match="not a readable tinymoe checkpoint"):
        tm.load(path)


def test_a_half_written_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "ckpt.npz"
    tm.save({"x": np.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match="not a readable tinymoe checkpoint"):
        tm.load(path)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        tm.load(tmp_path / "nope.npz")


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    tm.save({"step": 1}, path)
    tm.save({"step": 2}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]
    assert tm.load(path)["step"].item() == 2


@pytest.mark.parametrize("tree", [{"a/b": np.zeros(1)}, {"model": {"fc/weight": np.zeros(1)}}], ids=["top", "nested"])
def test_a_key_containing_a_slash_is_rejected_before_writing(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(ValueError, match="may not contain '/'"):
        tm.save(tree, path)
    assert list(tmp_path.iterdir()) == []


def test_a_bare_npy_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.zeros(3))
    with pytest.raises(ValueError, match="not a readable tinymoe checkpoint"):
        tm.load(path)


def test_a_module_inside_a_dict_is_saved_as_its_state(tmp_path):
    layer = tm.nn.Linear(2, 3)
    tm.save({"model": layer, "step": 4}, tmp_path / "ckpt.npz")
    loaded = tm.load(tmp_path / "ckpt.npz")
    np.testing.assert_array_equal(loaded["model"]["weight"], layer.weight.data)
    assert int(loaded["step"]) == 4
