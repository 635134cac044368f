"""The basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout.

Initial weights come from the library's seeded generator (``tm.manual_seed``) and are
made on the CPU, so the same seed gives the same model on every device.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import backend
from tinymoe import functional as F
from tinymoe.nn.checks import as_input, probability, token_ids
from tinymoe.nn.module import Module, Parameter
from tinymoe.validate import integer, real


def uniform(shape, bound: float, dtype=np.float32) -> Parameter:
    """A parameter drawn from U(-bound, bound) with the library generator."""
    return Parameter(backend.rng("cpu").uniform(-bound, bound, size=shape).astype(dtype))


def normal(shape, std: float, dtype=np.float32) -> Parameter:
    """A parameter drawn from N(0, std^2) with the library generator."""
    return Parameter((backend.rng("cpu").standard_normal(shape) * std).astype(dtype))


def _norm_arguments(owner: str, d, eps) -> tuple[int, float]:
    """A norm's width, and its eps (> 0: it keeps a constant row from dividing by 0)."""
    return integer(owner, "d", d, 1), real(owner, "eps", eps, 0, low_open=True)


class Linear(Module):
    """y = x W + b, with W of shape (d_in, d_out) (rows are inputs: x is a row vector).

    W ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), which keeps the output variance near the input's
    (LeCun-style fan-in scaling); b starts at 0.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True, dtype=np.float32):
        self.d_in, self.d_out = integer("Linear", "d_in", d_in, 1), integer("Linear", "d_out", d_out, 1)
        self.weight = uniform((d_in, d_out), 1 / math.sqrt(d_in), dtype)
        self.bias = Parameter(np.zeros(d_out, dtype)) if bias else None

    def forward(self, x):
        x = as_input(self, x, "..., d_in", self.d_in)
        if x.ndim == 1:  # a single token: matmul works on rows, so make it a batch of one
            return F.squeeze(F.linear(F.unsqueeze(x, 0), self.weight, self.bias), 0)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.d_in}, {self.d_out}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: row i of ``weight`` (n, d) is the vector of token i. Init N(0, 0.02^2)
    as in GPT-2. ``ids``: integers in [0, n) of any shape (a Tensor, array or list)."""

    def __init__(self, n: int, d: int, dtype=np.float32):
        self.n, self.d = integer("Embedding", "n", n, 1), integer("Embedding", "d", d, 1)
        self.weight = normal((n, d), 0.02, dtype)

    def forward(self, ids):
        return F.embedding(self.weight, token_ids("Embedding", ids, self.device))

    def extra_repr(self):
        return f"{self.n}, {self.d}"


class LayerNorm(Module):
    """Normalise the last axis to mean 0, variance 1, then scale and shift (Ba et al. 2016)."""

    def __init__(self, d: int, eps: float = 1e-5, dtype=np.float32):
        self.d, self.eps = _norm_arguments("LayerNorm", d, eps)
        self.weight = Parameter(np.ones(d, dtype))
        self.bias = Parameter(np.zeros(d, dtype))

    def forward(self, x):
        return F.layer_norm(as_input(self, x, "..., d", self.d), self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.d}"


class RMSNorm(Module):
    """Divide the last axis by its root mean square, then scale (Zhang & Sennrich 2019)."""

    def __init__(self, d: int, eps: float = 1e-6, dtype=np.float32):
        self.d, self.eps = _norm_arguments("RMSNorm", d, eps)
        self.weight = Parameter(np.ones(d, dtype))

    def forward(self, x):
        return F.rms_norm(as_input(self, x, "..., d", self.d), self.weight, self.eps)

    def extra_repr(self):
        return f"{self.d}"


class Dropout(Module):
    """Inverted dropout while training; the identity in ``eval()`` mode."""

    def __init__(self, p: float = 0.1):
        self.p = probability("Dropout", "p", p)

    def forward(self, x):
        return F.dropout(as_input(self, x), self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"
