"""Elementwise ops: arithmetic and activations, each forward beside its derivative.

Binary ops broadcast like NumPy; the engine (``tensor._sum_to_shape``) sums each
gradient back to its input's shape, so the backward methods here may return
full-size gradients.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe.backend import array_module, special
from tinymoe.tensor import Function, Tensor


def _broadcast_error(op: str, a, b) -> ValueError:
    return ValueError(
        f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together "
        "(each axis, aligned from the right, must be equal or 1)"
    )


class _Binary(Function):
    """Shared by the broadcasting binary ops: a clear message when shapes do not fit."""

    def forward(self, a, b):
        try:
            return self.compute(a, b)
        except ValueError as error:
            raise _broadcast_error(type(self).__name__.lower(), a, b) from error


class Add(_Binary):
    def compute(self, a, b):
        return a + b

    def backward(self, g):  # d(a+b)/da = d(a+b)/db = 1
        return g, g


class Sub(_Binary):
    def compute(self, a, b):
        return a - b

    def backward(self, g):
        return g, -g


class Mul(_Binary):
    def compute(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, g):  # d(ab)/da = b, d(ab)/db = a
        return g * self.b, g * self.a


class Div(_Binary):
    def compute(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, g):  # d(a/b)/da = 1/b, d(a/b)/db = -a/b^2
        gb = -g * self.a / (self.b * self.b) if self.inputs[1].requires_grad else None
        return g / self.b, gb


class Pow(_Binary):
    """``a ** b``; the gradient for the exponent, a^b log a, is formed only when needed.

    At a = 0 the formulas meet 0 * inf; the limits are taken instead (as PyTorch does):
    d/da = b a^(b-1) is 0 where b = 0 (a^0 = 1 is constant), and d/db = a^b log a is 0
    where a = 0 and b >= 0 (0^b stays 0, or 1 at b = 0, as b moves).
    """

    def compute(self, a, b):
        self.a, self.b = a, b
        self.y = a**b
        return self.y

    def backward(self, g):
        xp = array_module(g)
        with np.errstate(divide="ignore", invalid="ignore"):  # the 0 * inf entries are replaced
            ga = xp.where(self.b == 0, 0, g * self.b * self.a ** (self.b - 1))
            gb = None
            if self.inputs[1].requires_grad:
                gb = xp.where((self.a == 0) & (self.b >= 0), 0, g * self.y * xp.log(self.a))
        return ga, gb


class Maximum(_Binary):
    """Elementwise max; where a == b the gradient goes to ``a`` (a subgradient choice)."""

    def compute(self, a, b):
        self.a_wins = a >= b
        return array_module(a).maximum(a, b)

    def backward(self, g):
        return g * self.a_wins, g * ~self.a_wins


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, g):
        return (-g,)


class Exp(Function):
    def forward(self, x):
        self.y = array_module(x).exp(x)
        return self.y

    def backward(self, g):  # d e^x = e^x
        return (g * self.y,)


class Log(Function):
    def forward(self, x):
        self.x = x
        return array_module(x).log(x)

    def backward(self, g):
        return (g / self.x,)


class Sqrt(Function):
    def forward(self, x):
        self.y = array_module(x).sqrt(x)
        return self.y

    def backward(self, g):  # d sqrt(x) = 1 / (2 sqrt(x))
        return (g / (2 * self.y),)


class Tanh(Function):
    def forward(self, x):
        self.y = array_module(x).tanh(x)
        return self.y

    def backward(self, g):
        return (g * (1 - self.y * self.y),)


def _sigmoid(x):
    # 1/(1+e^-x) overflows e^-x for very negative x; the tanh form never does
    return 0.5 * (array_module(x).tanh(0.5 * x) + 1)


def sigmoid_backward(s, g):
    """The gradient of x from the gradient g of s = sigmoid(x): g s (1 - s)."""
    return g * s * (1 - s)


class Sigmoid(Function):
    def forward(self, x):
        self.y = _sigmoid(x)
        return self.y

    def backward(self, g):
        return (sigmoid_backward(self.y, g),)


class Relu(Function):
    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, g):  # derivative 0 at x = 0, as in PyTorch
        return (g * self.positive,)


class Erf(Function):
    def forward(self, x):
        self.x = x
        return special(array_module(x)).erf(x).astype(x.dtype, copy=False)  # SciPy gives float16 back as float32

    def backward(self, g):  # erf'(x) = 2/sqrt(pi) e^(-x^2)
        return (g * (2 / math.sqrt(math.pi)) * array_module(self.x).exp(-self.x * self.x),)


def _normal_pdf(x):
    return array_module(x).exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _normal_cdf(x):
    """Phi(x) in x's dtype (SciPy's erf turns float16 into float32)."""
    return (0.5 * (1 + special(array_module(x)).erf(x / math.sqrt(2)))).astype(x.dtype, copy=False)


class NormalCdf(Function):
    """Phi(x), the standard normal CDF (Shazeer et al. 2017 use it in the load estimator)."""

    def forward(self, x):
        self.x = x
        return _normal_cdf(x)

    def backward(self, g):  # Phi' = phi, the normal density
        return (g * _normal_pdf(self.x),)


class Gelu(Function):
    """GELU(x) = x Phi(x), the exact form (Hendrycks & Gimpel 2016), not the tanh approximation."""

    def forward(self, x):
        self.x, self.cdf = x, _normal_cdf(x)
        return x * self.cdf

    def backward(self, g):  # (x Phi)' = Phi + x phi
        return (g * (self.cdf + self.x * _normal_pdf(self.x)),)


class Silu(Function):
    """SiLU(x) = x sigmoid(x) (also called swish), the gate of SwiGLU."""

    def forward(self, x):
        self.x, self.s = x, _sigmoid(x)
        return x * self.s

    def backward(self, g):  # (x s)' = s + x s (1 - s)
        return (g * self.s * (1 + self.x * (1 - self.s)),)


class Softplus(Function):
    """softplus(x) = log(1 + e^x), computed as max(x, 0) + log1p(e^-|x|) so it never overflows."""

    def forward(self, x):
        xp = array_module(x)
        self.x = x
        return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))

    def backward(self, g):  # softplus' = sigmoid
        return (g * _sigmoid(self.x),)


class Abs(Function):
    def forward(self, x):
        self.sign = array_module(x).sign(x)
        return x * self.sign

    def backward(self, g):  # sign(x); 0 at x = 0
        return (g * self.sign,)


class Clip(Function):
    """Clamp to [low, high]; the gradient passes where low <= x <= high (ends included)."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, x):
        xp = array_module(x)
        self.inside = xp.ones(x.shape, dtype=bool)
        if self.low is not None:
            self.inside &= x >= self.low
        if self.high is not None:
            self.inside &= x <= self.high
        return xp.clip(x, self.low, self.high)

    def backward(self, g):
        return (g * self.inside,)


class Where(Function):
    """``condition ? a : b`` with a boolean array condition (no gradient for it)."""

    def __init__(self, condition):
        self.condition = condition

    def forward(self, a, b):
        try:
            return array_module(a).where(self.condition, a, b)
        except ValueError as error:
            raise _broadcast_error("where", a, b) from error

    def backward(self, g):
        zero = g.dtype.type(0)
        xp = array_module(g)
        return xp.where(self.condition, g, zero), xp.where(self.condition, zero, g)


class AsType(Function):
    """Change the float dtype; the engine casts the gradient back to the input's dtype."""

    def __init__(self, dtype):
        self.dtype = dtype

    def forward(self, x):
        return x.astype(self.dtype)

    def backward(self, g):
        return (g,)


def add(a, b) -> Tensor:
    return Add()(a, b)


def sub(a, b) -> Tensor:
    return Sub()(a, b)


def mul(a, b) -> Tensor:
    return Mul()(a, b)


def div(a, b) -> Tensor:
    return Div()(a, b)


def pow(a, b) -> Tensor:  # noqa: A001 - the op is called pow
    return Pow()(a, b)


def maximum(a, b) -> Tensor:
    return Maximum()(a, b)


def neg(x) -> Tensor:
    return Neg()(x)


def exp(x) -> Tensor:
    return Exp()(x)


def log(x) -> Tensor:
    return Log()(x)


def sqrt(x) -> Tensor:
    return Sqrt()(x)


def tanh(x) -> Tensor:
    return Tanh()(x)


def sigmoid(x) -> Tensor:
    return Sigmoid()(x)


def relu(x) -> Tensor:
    return Relu()(x)


def gelu(x) -> Tensor:
    return Gelu()(x)


def silu(x) -> Tensor:
    return Silu()(x)


def softplus(x) -> Tensor:
    return Softplus()(x)


def erf(x) -> Tensor:
    return Erf()(x)


def normal_cdf(x) -> Tensor:
    return NormalCdf()(x)


def abs(x) -> Tensor:  # noqa: A001 - the op is called abs
    return Abs()(x)


def clip(x, low=None, high=None) -> Tensor:
    return Clip(low, high)(x)


def where(condition, a, b) -> Tensor:
    condition = condition.data if isinstance(condition, Tensor) else condition
    return Where(condition)(a, b)


def astype(x, dtype) -> Tensor:
    return AsType(dtype)(x)
