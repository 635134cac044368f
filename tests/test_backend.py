"""NumPy/CuPy choice, devices and seeded randomness."""

import numpy as np
import pytest

import tinymoe as tm
from tinymoe import backend


def test_array_module_is_numpy_for_numpy_arrays():
    assert backend.array_module(np.zeros(2)) is np
    assert backend.device_of(np.zeros(2)) == "cpu"


def test_unknown_device_is_rejected():
    with pytest.raises(ValueError, match=r"device must be one of \('cpu', 'cuda'\), got 'tpu'"):
        tm.tensor([1.0], device="tpu")


def test_cuda_request_explains_the_fix_or_works():
    if backend.cuda_available():
        assert tm.tensor([1.0], device="cuda").device == "cuda"
    else:
        with pytest.raises(RuntimeError, match="requirements-gpu.txt"):
            tm.tensor([1.0], device="cuda")


def test_same_seed_same_numbers_and_state_round_trip():
    tm.manual_seed(123)
    a = backend.rng().standard_normal(4)
    tm.manual_seed(123)
    state = backend.get_rng_state()
    b = backend.rng().standard_normal(4)
    np.testing.assert_array_equal(a, b)
    later = backend.rng().standard_normal(4)
    backend.set_rng_state(state)  # state taken before the draw of b
    np.testing.assert_array_equal(backend.rng().standard_normal(4), b)
    assert not np.array_equal(later, b)


def test_seed_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="non-negative integer"):
        tm.manual_seed(-1)
