"""Small helpers shared by the tests."""

import numpy as np

import tinymoe as tm


def randn(*shape, device="cpu", seed=0, requires_grad=True, dtype=np.float64):
    """A float64 leaf tensor of standard-normal values, made on ``device``."""
    data = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return tm.tensor(data, requires_grad=requires_grad, device=device)


def numpy_of(x):
    """A NumPy array from a Tensor, CuPy or NumPy array."""
    return x.numpy() if isinstance(x, tm.Tensor) else tm.backend.to_numpy(x)
