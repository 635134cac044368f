"""Neural-network ops with hand-derived, fused backward passes.

Each of these could be written from the elementary ops, but a fused version is both
faster (fewer temporaries) and numerically safer: softmax and logsumexp subtract the row
max before ``exp``, and log_softmax is ``x - logsumexp(x)``, never ``log(softmax(x))``
(which gives ``log(0) = -inf`` once a probability underflows).
"""

from __future__ import annotations

import numpy as np

from tinymoe import backend, validate
from tinymoe.backend import array_module
from tinymoe.ops.axes import normalize_axis
from tinymoe.ops.elementwise import mul
from tinymoe.tensor import Function, Tensor


def _wide(x):
    """float16 is computed in float32: sums of exponentials and squares overflow or lose
    every digit in float16 (its largest number is 65504, its precision 3 digits)."""
    return x.astype(np.float32) if x.dtype == np.float16 else x


def _exponentials(x, axis):
    """(m, z, e, s): the row max m, z = x - m, e = exp(z) and s = sum_j e_j along ``axis``.

    Subtracting the max makes every e_j <= 1, so nothing overflows, and one e_j is 1, so
    s >= 1. A row whose max is infinite is shifted by 0 instead: then a row of -inf gives
    log s = -inf and a row holding +inf gives +inf, where inf - inf would give NaN.
    """
    xp = array_module(x)
    if x.shape[axis] == 0:  # no terms: s = 0, so logsumexp = -inf and softmax is empty
        m = xp.zeros(x.shape[:axis] + (1,) + x.shape[axis + 1 :], x.dtype)
    else:
        m = x.max(axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0).astype(x.dtype)
    z = x - m
    e = xp.exp(z)
    return m, z, e, e.sum(axis=axis, keepdims=True)


def _log(s):
    with np.errstate(divide="ignore"):  # log(0) = -inf for a row of -inf is the right answer
        return array_module(s).log(s)


def _log_softmax(x, axis):
    """(log p, p). log p = z - log s: the max is never added back, so float32 logits near
    1e7 (where 1e7 + 0.7 rounds to 1e7) still give exact log-probabilities."""
    _, z, e, s = _exponentials(x, axis)
    return z - _log(s), e / s


def softmax_backward(p, g, axis=-1):
    """The gradient of the logits from the gradient g of p = softmax: p_i (g_i - sum_j g_j p_j)."""
    return p * (g - (g * p).sum(axis=axis, keepdims=True))


class Softmax(Function):
    """p_i = e^{x_i} / sum_j e^{x_j}."""

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        self.axis = normalize_axis(self.axis, x.ndim, "softmax")
        _, _, e, s = _exponentials(_wide(x), self.axis)
        self.p = e / s
        return self.p.astype(x.dtype, copy=False)

    def backward(self, g):
        return (softmax_backward(self.p, g, self.axis),)


class LogSoftmax(Function):
    """log p_i = x_i - logsumexp(x)."""

    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        self.axis = normalize_axis(self.axis, x.ndim, "log_softmax")
        y, self.p = _log_softmax(_wide(x), self.axis)
        return y.astype(x.dtype, copy=False)

    def backward(self, g):  # dx_i = g_i - p_i sum_j g_j
        return (g - self.p * g.sum(axis=self.axis, keepdims=True),)


class LogSumExp(Function):
    """log sum_j e^{x_j} (the router z-loss of ST-MoE squares this)."""

    def __init__(self, axis=-1, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.axis = normalize_axis(self.axis, x.ndim, "logsumexp")
        m, _, e, s = _exponentials(_wide(x), self.axis)
        with np.errstate(invalid="ignore"):  # a row of -inf has no softmax: NaN, as in PyTorch
            self.p = e / s  # d lse / dx = softmax(x)
        y = (m + _log(s)).astype(x.dtype, copy=False)
        return y if self.keepdims else y.squeeze(self.axis)

    def backward(self, g):
        if not self.keepdims:
            g = array_module(g).expand_dims(g, self.axis)
        return (g * self.p,)


class NonFiniteError(ValueError):
    """NaN or infinity where a finite number is needed (a diverged model)."""


class CrossEntropy(Function):
    """Mean over positions of -log softmax(logits)[target]; logits (..., C), targets (...) int.

    Backward: (softmax(logits) - onehot(target)) / number_of_positions.
    """

    def forward(self, logits, targets):
        xp = array_module(logits)
        n_classes = logits.shape[-1]
        if targets.shape != logits.shape[:-1]:
            raise ValueError(
                f"cross_entropy: targets shape {tuple(targets.shape)} must equal logits shape "
                f"without its last (class) axis, {tuple(logits.shape[:-1])}"
            )
        if targets.dtype.kind not in "iu":
            raise TypeError(f"cross_entropy: targets must be integer class ids, got dtype {targets.dtype}")
        if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
            raise ValueError(
                f"cross_entropy: targets must lie in [0, {n_classes}), got {int(targets.min())}..{int(targets.max())}"
            )
        bad = int((~xp.isfinite(logits)).sum())
        if bad:
            raise NonFiniteError(
                f"cross_entropy: the logits contain {bad} NaN/inf value(s); the model has diverged "
                "(lower the learning rate, clip gradients) or its input is bad"
            )
        log_p, self.p = _log_softmax(_wide(logits), -1)  # p = e / s: gradient rows sum to 0
        self.targets = targets
        picked = xp.take_along_axis(log_p, targets[..., None], axis=-1)
        return (-picked.mean()).astype(logits.dtype)

    def backward(self, g):
        xp = array_module(g)
        grad = self.p.copy()
        mesh = list(xp.indices(self.targets.shape, sparse=True))
        grad[(*mesh, self.targets)] -= 1
        return grad * (g / self.targets.size), None


class TopK(Function):
    """The k largest values along an axis, best first; ties go to the lowest index.

    The indices are a plain integer array (``self.indices``): choosing has no gradient.
    The values' gradient flows back to the chosen positions only.
    """

    def __init__(self, k, axis=-1):
        self.k, self.axis = k, axis

    def forward(self, x):
        xp = array_module(x)
        self.axis = normalize_axis(self.axis, x.ndim, "topk")
        n = x.shape[self.axis]
        self.k = validate.integer("topk", "k", self.k, 1, n)  # at most the axis size
        # A stable sort of -x keeps equal values in index order: the same tie-break on every
        # backend (argpartition would be faster but its order among ties is unspecified).
        self.indices = xp.argsort(-x, axis=self.axis, kind="stable").take(
            xp.arange(self.k), axis=self.axis
        )
        self.shape, self.dtype = x.shape, x.dtype
        return xp.take_along_axis(x, self.indices, axis=self.axis)

    def backward(self, g):
        xp = array_module(g)
        gx = xp.zeros(self.shape, dtype=self.dtype)
        xp.put_along_axis(gx, self.indices, g, axis=self.axis)  # indices in a row are distinct
        return (gx,)


class LayerNormalize(Function):
    """x_hat = (x - mean) / sqrt(var + eps) over the last axis (Ba et al. 2016), no affine.

    Backward: dx = (g - mean(g) - x_hat mean(g x_hat)) / sqrt(var + eps).
    float16 is normalised in float32 (its squares overflow at 256), the result cast back.
    """

    def __init__(self, eps=1e-5):
        self.eps = eps

    def forward(self, x):
        xp = array_module(x)
        wide = _wide(x)
        centered = wide - wide.mean(axis=-1, keepdims=True)
        self.inv_std = 1 / xp.sqrt((centered * centered).mean(axis=-1, keepdims=True) + self.eps)
        self.x_hat = centered * self.inv_std
        return self.x_hat.astype(x.dtype, copy=False)

    def backward(self, g):
        x_hat = self.x_hat
        mean_g = g.mean(axis=-1, keepdims=True)
        mean_gx = (g * x_hat).mean(axis=-1, keepdims=True)
        return ((g - mean_g - x_hat * mean_gx) * self.inv_std,)


class RMSNormalize(Function):
    """y = x / sqrt(mean(x^2) + eps) over the last axis (Zhang & Sennrich 2019), no gain.

    Backward: dx = (g - y mean(g y)) / sqrt(mean(x^2) + eps).
    float16 is normalised in float32 (x^2 overflows float16 from x = 256), the result cast back.
    """

    def __init__(self, eps=1e-6):
        self.eps = eps

    def forward(self, x):
        xp = array_module(x)
        wide = _wide(x)
        self.inv_rms = 1 / xp.sqrt((wide * wide).mean(axis=-1, keepdims=True) + self.eps)
        self.y = wide * self.inv_rms
        return self.y.astype(x.dtype, copy=False)

    def backward(self, g):
        return ((g - self.y * (g * self.y).mean(axis=-1, keepdims=True)) * self.inv_rms,)


def softmax(x, axis: int = -1) -> Tensor:
    return Softmax(axis)(x)


def log_softmax(x, axis: int = -1) -> Tensor:
    return LogSoftmax(axis)(x)


def logsumexp(x, axis: int = -1, keepdims: bool = False) -> Tensor:
    return LogSumExp(axis, keepdims)(x)


def cross_entropy(logits, targets) -> Tensor:
    targets = targets.data if isinstance(targets, Tensor) else targets
    return CrossEntropy()(logits, targets)


def topk(x, k: int, axis: int = -1):
    """(values Tensor, indices array): the k largest along ``axis``, best first."""
    op = TopK(k, axis)
    values = op(x)
    return values, op.indices


def layer_norm(x, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    y = LayerNormalize(eps)(x)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def rms_norm(x, weight=None, eps: float = 1e-6) -> Tensor:
    y = RMSNormalize(eps)(x)
    return y * weight if weight is not None else y


def dropout(x, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout),
    so evaluation needs no rescaling. The mask comes from the library's seeded generator."""
    p = validate.real("dropout", "p", p, 0, 1, high_open=True)
    if not training or p == 0:
        return x
    keep = backend.rng(x.device).random(x.shape) >= p
    return mul(x, (keep / (1 - p)).astype(x.dtype))
