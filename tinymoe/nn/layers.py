"""The basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout.

Initial weights come from the library's seeded generator (``tm.manual_seed``) and are
made on the CPU, so the same seed gives the same model on every device.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import backend
from tinymoe import functional as F
from tinymoe.nn.module import Module, Parameter


def uniform(shape, bound: float, dtype=np.float32) -> Parameter:
    """A parameter drawn from U(-bound, bound) with the library generator."""
    return Parameter(backend.rng("cpu").uniform(-bound, bound, size=shape).astype(dtype))


def normal(shape, std: float, dtype=np.float32) -> Parameter:
    """A parameter drawn from N(0, std^2) with the library generator."""
    return Parameter((backend.rng("cpu").standard_normal(shape) * std).astype(dtype))


def _check_width(name: str, x, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{name}: input's last axis must have size {expected}, got shape {tuple(x.shape)}")


class Linear(Module):
    """y = x W + b, with W of shape (d_in, d_out) (rows are inputs: x is a row vector).

    W ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), which keeps the output variance near the input's
    (LeCun-style fan-in scaling); b starts at 0.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, dtype=np.float32):
        self.d_in, self.d_out = d_in, d_out
        self.weight = uniform((d_in, d_out), 1 / math.sqrt(d_in), dtype)
        self.bias = Parameter(np.zeros(d_out, dtype)) if bias else None

    def forward(self, x):
        _check_width("Linear", x, self.d_in)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.d_in}, {self.d_out}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: row i of ``weight`` (n, d) is the vector of token i. Init N(0, 0.02^2)
    as in GPT-2."""

    def __init__(self, n: int, d: int, dtype=np.float32):
        self.n, self.d = n, d
        self.weight = normal((n, d), 0.02, dtype)

    def forward(self, ids):
        return F.embedding(self.weight, ids)

    def extra_repr(self):
        return f"{self.n}, {self.d}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale and shift (Ba et al. 2016)."""

    def __init__(self, d: int, eps: float = 1e-5, dtype=np.float32):
        self.d, self.eps = d, eps
        self.weight = Parameter(np.ones(d, dtype))
        self.bias = Parameter(np.zeros(d, dtype))

    def forward(self, x):
        _check_width("LayerNorm", x, self.d)
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.d}"


class RMSNorm(Module):
    """Divide the last axis by its root mean square, then scale (Zhang & Sennrich 2019)."""

    def __init__(self, d: int, eps: float = 1e-6, dtype=np.float32):
        self.d, self.eps = d, eps
        self.weight = Parameter(np.ones(d, dtype))

    def forward(self, x):
        _check_width("RMSNorm", x, self.d)
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.d}"


class Dropout(Module):
    """Inverted dropout while training; the identity in ``eval()`` mode."""

    def __init__(self, p: float = 0.1):
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
