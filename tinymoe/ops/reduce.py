"""Reductions: sum, mean, max, var. Their backward spreads the gradient back over the
reduced axes (``_unreduce``), since every input element fed the reduced value."""

from __future__ import annotations

from tinymoe.backend import array_module
from tinymoe.ops.axes import normalize_axes
from tinymoe.tensor import Function, Tensor


def _unreduce(g, shape, axes, keepdims):
    """Give ``g`` (the gradient of a reduction) back the reduced axes, broadcast to ``shape``."""
    xp = array_module(g)
    if not keepdims:
        g = xp.expand_dims(g, axes)
    return xp.broadcast_to(g, shape)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape, self.axes = x.shape, normalize_axes(self.axis, x.ndim, type(self).__name__.lower())
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):  # each summed element gets the whole gradient
        return (_unreduce(g, self.shape, self.axes, self.keepdims),)


class Mean(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.shape, self.axes = x.shape, normalize_axes(self.axis, x.ndim, type(self).__name__.lower())
        self.count = 1
        for a in self.axes:
            self.count *= x.shape[a]
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, g):  # each element carries 1/count of the mean
        return (_unreduce(g / self.count, self.shape, self.axes, self.keepdims),)


class Max(Function):
    """Max over axes; when several elements tie for the max they share the gradient equally."""

    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axes = normalize_axes(self.axis, x.ndim, type(self).__name__.lower())
        y = x.max(axis=self.axes, keepdims=True)
        is_max = x == y
        self.share = (is_max / is_max.sum(axis=self.axes, keepdims=True)).astype(x.dtype)
        return y if self.keepdims else y.squeeze(self.axes)

    def backward(self, g):
        return (_unreduce(g, self.share.shape, self.axes, self.keepdims) * self.share,)


class Var(Function):
    """Variance with ``ddof`` (0: the population variance, as Shazeer et al.'s CV uses).

    float16 is accumulated in float32 (squares of values near 300 already overflow
    float16's 65504) and the result cast back.
    """

    def __init__(self, axis=None, keepdims=False, ddof=0):
        self.axis, self.keepdims, self.ddof = axis, keepdims, ddof

    def forward(self, x):
        self.axes = normalize_axes(self.axis, x.ndim, "var")
        count = 1
        for a in self.axes:
            count *= x.shape[a]
        if count - self.ddof <= 0:
            raise ValueError(f"var: {count} elements with ddof={self.ddof} leave no degrees of freedom")
        wide = x.astype("float32") if x.dtype == "float16" else x
        self.centered = (wide - wide.mean(axis=self.axes, keepdims=True)).astype(x.dtype)
        self.scale = 2 / (count - self.ddof)
        return wide.var(axis=self.axes, keepdims=self.keepdims, ddof=self.ddof).astype(x.dtype)

    def backward(self, g):  # d var / dx_j = 2 (x_j - mean) / (count - ddof)
        g = _unreduce(g, self.centered.shape, self.axes, self.keepdims)
        return (g * self.scale * self.centered,)


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - the op is called sum
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False) -> Tensor:
    return Mean(axis, keepdims)(x)


def max(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001 - the op is called max
    return Max(axis, keepdims)(x)


def var(x, axis=None, keepdims=False, ddof=0) -> Tensor:
    return Var(axis, keepdims, ddof)(x)
