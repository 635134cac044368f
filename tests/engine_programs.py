"""Random programs over the whole public API, run in tinymoe and in plain NumPy side by side.

Used by ``tests/test_engine_properties.py``, whose docstring explains the idea. Here:

- ``OPS``: one entry per public entry point: every op of ``tinymoe.ops`` and ``F.linear``,
  ``F.mse_loss`` (as ``F.<name>``), every Tensor operator and method (as ``Tensor.<name>``).
  An entry says which earlier values it accepts, how hypothesis draws its other arguments,
  how tinymoe is called, and what plain NumPy/SciPy computes instead. The NumPy side is
  written from the op's definition and never calls tinymoe.
- ``programs()``: the hypothesis strategy that draws leaves and steps.
- ``check(program)``: runs a program and compares every value and every gradient.

Domains. ``log``, ``sqrt``, a division and a real power are applied to ``x * x + 0.5``, never
to ``x`` itself, so any earlier value can be their input; ``exp`` and powers only take values
small enough that nothing overflows. Kinks (relu, abs, max, clip, top-k, maximum at a tie) are
not avoided by construction: a central difference across a kink is not a derivative, so
``check`` looks for one (the two one-sided slopes disagree) and rejects that example.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import operator
from collections.abc import Callable

import numpy as np
import scipy.special
from hypothesis import assume
from hypothesis import strategies as st

import tinymoe as tm
from tinymoe import functional as F
from tinymoe.tensor import Tensor

LIMIT = 1e3  # no value may exceed this: finite differences stay accurate, float32 meaningful
CAP = 48  # elements per value at most: finite differences (two runs per element) stay cheap
EPS = 1e-6  # the central-difference step, in float64
FORWARD_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-9}
GRAD_RTOL = 1e-4  # backprop in float64 against float64 central differences
FLOAT32_GRAD_RTOL = 2e-3  # backprop in float32 against backprop in float64
MARGIN = 1e-3  # a comparison that picks a branch must not be this close to a tie


# ------------------------------------------------------------------------- programs
@dataclasses.dataclass(frozen=True)
class Leaf:
    data: np.ndarray  # float32 or float64
    requires_grad: bool


@dataclasses.dataclass(frozen=True)
class Step:
    op: str  # a key of OPS
    inputs: tuple[int, ...]  # indices of earlier values
    args: dict  # everything else the entry point takes (axes, indices, constants...)
    n_out: int  # how many values the step adds (split gives several)
    retain_grad: bool


@dataclasses.dataclass(frozen=True)
class Program:
    """Values are numbered in order: the leaves first, then each step's outputs."""

    leaves: tuple[Leaf, ...]
    steps: tuple[Step, ...]
    seed: int  # the loss weights and the dropout masks
    backward_twice: bool  # gradients must then accumulate to exactly twice as much

    def names(self) -> list[str]:
        """``v7 = F.softmax(...)`` for each value, for messages."""
        names = [f"v{i} (leaf)" for i in range(len(self.leaves))]
        for step in self.steps:
            names += [f"v{len(names)} = {step.op}(...)" for _ in range(step.n_out)]
        return names

    def __repr__(self) -> str:
        lines = [f"Program(seed={self.seed}, backward_twice={self.backward_twice}):"]
        for i, leaf in enumerate(self.leaves):
            grad = ", requires_grad=True" if leaf.requires_grad else ""
            lines.append(f"  v{i} = tensor({_short(leaf.data)}{grad})")
        n = len(self.leaves)
        for step in self.steps:
            outs = ", ".join(f"v{n + j}" for j in range(step.n_out))
            args = "".join(f", {key}={_short(value)}" for key, value in step.args.items())
            inputs = ", ".join(f"v{i}" for i in step.inputs)
            retain = "  # retain_grad" if step.retain_grad else ""
            lines.append(f"  {outs} = {step.op}({inputs}{args}){retain}")
            n += step.n_out
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:  # how hypothesis prints a failing example
        printer.text(repr(self))


def _short(value) -> str:
    if isinstance(value, np.ndarray) and value.size == 0:
        return f"np.empty({value.shape}, {value.dtype})"
    if isinstance(value, np.ndarray):
        text = np.array2string(value, separator=",", precision=4).replace("\n", "")
        return f"np.array({text})" if value.dtype.kind == "b" else f"np.array({text}, {value.dtype})"
    if isinstance(value, type):
        return f"np.{value.__name__}"
    if isinstance(value, tuple):  # an index tuple
        return "(" + ", ".join(_short(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return repr(value)


# ------------------------------------------------------------------------- drawing helpers
@dataclasses.dataclass(frozen=True)
class Val:
    """What drawing knows about an earlier value: its NumPy data, in its own dtype."""

    data: np.ndarray

    shape = property(lambda self: self.data.shape)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: self.data.size)

    def below(self, bound: float) -> bool:
        return bool(np.all(np.abs(self.data) <= bound))


def _choose(draw, options):
    """One of ``options``, about uniformly. Hypothesis's integers favour the ends of their
    range (0 above all), which would make the first op of the table, the first value and
    every "1 in n" choice far more common than meant; the sum of two draws modulo n is
    nearly uniform, and still shrinks towards the first option."""
    n = len(options)
    return options[(draw(st.integers(0, n - 1)) + draw(st.integers(0, n - 1))) % n]


def _chance(draw, n: int) -> bool:
    """True about once in n."""
    return _choose(draw, range(n)) == 0


def _seeded(draw):
    """A NumPy generator for constant arrays (hypothesis draws its seed)."""
    return np.random.default_rng(draw(st.integers(0, 2**16)))


def _fits(shape) -> bool:
    return math.prod(shape) <= CAP


def _broadcast(*shapes):
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        return None


def _broadcasting(pool, shape, accepts=lambda v: True) -> list[int]:
    """The earlier values that broadcast with ``shape`` into a value small enough."""
    return [
        j
        for j, v in enumerate(pool)
        if accepts(v) and (out := _broadcast(shape, v.shape)) is not None and _fits(out)
    ]


def _partner(draw, pool, first, accepts=lambda v: True) -> int:
    """An earlier value that broadcasts with value ``first`` (``first`` itself qualifies)."""
    return _choose(draw, _broadcasting(pool, pool[first].shape, accepts))


def _into(draw, shape) -> tuple:
    """A shape that broadcasts into ``shape``: a suffix of it, some axes set to 1."""
    suffix = shape[len(shape) - draw(st.integers(0, len(shape))) :]
    return tuple(1 if draw(st.booleans()) else n for n in suffix)


def _constant(draw, shape, low=-2.0, high=2.0):
    """A constant operand: a Python float, or a float32/float64 array that broadcasts with
    ``shape`` (arrays reach tinymoe as ``ndarray op Tensor`` or ``Tensor op ndarray``)."""
    if draw(st.booleans()):
        return draw(st.sampled_from(tuple(low + (high - low) * f for f in (0.1, 0.35, 0.8))))
    dtype = draw(st.sampled_from((np.float32, np.float64)))
    return _seeded(draw).uniform(low, high, _into(draw, shape)).astype(dtype)


def _axis(draw, shape, nonempty=False) -> int:
    """An axis of ``shape``, as often negative as not (``nonempty``: of size > 0)."""
    n = len(shape)
    return draw(st.sampled_from([a for a in range(-n, n) if not nonempty or shape[a] > 0]))


def _axes(draw, shape, ok: Callable[[int], bool]):
    """None, one axis, or a tuple of distinct axes (any order, each negative or not), such
    that ``ok(number of elements reduced)``."""
    n = len(shape)
    choices = {"None": [None], "int": list(range(-n, n)), "tuple": []}
    for r in range(n + 1):
        for axes in itertools.permutations(range(n), r):
            for shifts in itertools.product((0, n), repeat=r):
                choices["tuple"].append(tuple(a - s for a, s in zip(axes, shifts, strict=True)))

    def count(axes):
        axes = range(n) if axes is None else (axes,) if isinstance(axes, int) else axes
        return math.prod(shape[a] for a in axes)

    choices = {kind: [a for a in axes if ok(count(a))] for kind, axes in choices.items()}
    kind = draw(st.sampled_from([kind for kind, axes in choices.items() if axes]))
    return draw(st.sampled_from(choices[kind]))


def _indices(draw, n: int, shape) -> np.ndarray:
    """Integer indices into an axis of size n, any of them negative, repeats likely."""
    count = math.prod(shape)
    values = draw(st.lists(st.integers(-n, n - 1), min_size=count, max_size=count)) if count else []
    return np.array(values, dtype=np.int64).reshape(shape)


def _with(shape, axis: int, n) -> tuple:
    """``shape`` (or an index tuple) with ``n`` at ``axis``."""
    axis %= len(shape)
    return (*shape[:axis], n, *shape[axis + 1 :])


def _without(shape, axis: int) -> tuple:
    """``shape`` with 1 at ``axis``: what must agree, or broadcast, along the other axes."""
    return _with(shape, axis, 1)


# ------------------------------------------------------------------------- the table
@dataclasses.dataclass(frozen=True)
class Op:
    name: str  # the entry point: "F.add", "Tensor.__add__", ...
    accepts: Callable[[Val], bool]  # may this value be the first input?
    arguments: Callable  # (draw, pool, first) -> (inputs, args)
    tm: Callable  # tm(*tensors, **args) -> a Tensor, or a tuple of Tensors and index arrays
    np: Callable  # np(*arrays, **args) -> the same, in plain NumPy
    detached: tuple[int, ...] = ()  # inputs that reach the output without a gradient
    min_ndim: int = 0  # the tests give leaf 0 at least this many axes, so the op fits
    random: bool = False  # the reference needs the mask tinymoe drew (dropout)


def _anything(v: Val) -> bool:
    return True


def _positive(x):
    """Into (0.5, inf) with no kink: the domain of log, sqrt, division and real powers.
    (NumPy turns 0-d array arithmetic into a NumPy scalar, which tinymoe takes for a Python
    number; so a constant stays an array here, and its dtype counts as NumPy says.)"""
    y = x * x + 0.5
    return np.asarray(y) if isinstance(x, np.ndarray) else y


def _pair(xs, c=None, swap=False):
    """The operands of a binary step: two values, or a value and the constant ``c``."""
    a, b = (xs[0], xs[1]) if len(xs) == 2 else (xs[0], c)
    return (b, a) if swap else (a, b)


def unary(name, tm_fn, np_fn, accepts=_anything, **kw) -> Op:
    return Op(name, accepts, lambda draw, pool, i: ((i,), {}), tm_fn, np_fn, **kw)


def _binary_arguments(draw, pool, i, swap: bool, accepts=_anything):
    """The second operand: an earlier value (3 times in 4) or a constant; ``swap``: which
    of the two goes first."""
    if _chance(draw, 4):
        inputs, args = (i,), {"c": _constant(draw, pool[i].shape)}
    else:
        inputs, args = (i, _partner(draw, pool, i, accepts)), {}
    if swap:
        args["swap"] = draw(st.booleans())
    return inputs, args


def binary(name, tm_fn, np_fn, swap: bool, accepts=_anything) -> Op:
    """``fn(a, b)`` on the operands ``_binary_arguments`` draws."""
    return Op(
        name,
        accepts,
        lambda draw, pool, i: _binary_arguments(draw, pool, i, swap, accepts),
        lambda *xs, **kw: tm_fn(*_pair(xs, **kw)),
        lambda *xs, **kw: np_fn(*_pair(xs, **kw)),
    )


def reflected(name, fn, low=-2.0, high=2.0, accepts=_anything) -> Op:
    """``fn(c, x)`` with a constant c on the left: Python calls ``Tensor.__r<op>__``."""
    return Op(
        name,
        accepts,
        lambda draw, pool, i: ((i,), {"c": _constant(draw, pool[i].shape, low, high)}),
        lambda x, c: fn(c, x),
        lambda x, c: fn(c, x),  # with arrays on both sides this is plain NumPy
    )


# --- powers --------------------------------------------------------------------------
def _power(pow_fn):
    """base ** exponent: an integer power k > 0 of any value, a real power or a tensor power
    of a positive base (``_positive``), or ``c ** x`` with a constant base c > 0."""

    def call(*xs, k=None, c=None):
        if c is not None:
            return pow_fn(c, xs[0])
        base = xs[0] if isinstance(k, int) and k > 0 else _positive(xs[0])
        return pow_fn(base, xs[1] if len(xs) == 2 else k)

    return call


def _power_arguments(constant_base: bool):
    def arguments(draw, pool, i):
        kind = draw(st.sampled_from(("tensor", "k", "c") if constant_base else ("tensor", "k")))
        if kind == "tensor":
            return (i, _partner(draw, pool, i, lambda v: v.below(3))), {}
        if kind == "k":
            return (i,), {"k": draw(st.sampled_from((2, 3, -1, 0.5, -1.5, 2.5)))}
        return (i,), {"c": _constant(draw, pool[i].shape, 0.5, 2.5)}

    return arguments


# --- matmul and linear ---------------------------------------------------------------
def _matmul_arguments(draw, pool, i, swap: bool):
    """b: an earlier value that fits (batch axes broadcast), else a constant matrix, after
    or (``swap``) before a."""
    a = pool[i].shape
    fits = [
        j
        for j, v in enumerate(pool)
        if v.ndim >= 2
        and v.shape[-2] == a[-1]
        and (batch := _broadcast(a[:-2], v.shape[:-2])) is not None
        and _fits((*batch, a[-2], v.shape[-1]))
    ]
    if fits and not _chance(draw, 4):
        return (i, _choose(draw, fits)), {}
    m = draw(st.integers(1, 3))
    args = {"swap": draw(st.booleans())} if swap else {}
    shape = (m, a[-2]) if args.get("swap") else (a[-1], m)
    args["c"] = _seeded(draw).uniform(-2, 2, shape).astype(draw(st.sampled_from((np.float32, np.float64))))
    return (i,), args


def _linear_arguments(draw, pool, i):
    """weight: an earlier (d_in, d_out) value or a constant; bias: none, an earlier value
    that broadcasts with the output, or a constant."""
    x = pool[i].shape
    weights = [j for j, v in enumerate(pool) if v.ndim == 2 and v.shape[0] == x[-1]]
    if weights and draw(st.booleans()):
        inputs, args = [i, _choose(draw, weights)], {}
        out = (*x[:-1], pool[inputs[1]].shape[1])
    else:
        m = draw(st.integers(1, 3))
        inputs, args = [i], {"weight": _seeded(draw).uniform(-1, 1, (x[-1], m)).astype(pool[i].data.dtype)}
        out = (*x[:-1], m)
    bias = draw(st.sampled_from(("none", "value", "constant")))
    biases = [j for j, v in enumerate(pool) if _broadcast(out, v.shape) == out]
    if bias == "value" and biases:
        inputs.append(_choose(draw, biases))
        args["bias"] = "input"
    elif bias == "constant":
        args["bias"] = _constant(draw, out)
    return tuple(inputs), args


def _linear(fn):
    def call(x, *rest, weight=None, bias=None):
        rest = list(rest)
        if weight is None:
            weight = rest.pop(0)
        if isinstance(bias, str):  # "input": the next input is the bias
            bias = rest.pop(0)
        return fn(x, weight, bias)

    return call


def _linear_np(x, w, b):
    y = np.matmul(x, w)
    return y if b is None else y + b


# --- reductions ----------------------------------------------------------------------
def _reduce_arguments(needs: int, ddof: bool = False):
    """axis (None, an int or a tuple, negative or not) and keepdims; the reduction must see
    at least ``needs`` elements (the max of nothing is undefined, its mean 0/0)."""

    def arguments(draw, pool, i):
        args = {"ddof": draw(st.sampled_from((0, 1))) if pool[i].size > 1 else 0} if ddof else {}
        at_least = needs + args.get("ddof", 0)
        args["axis"] = _axes(draw, pool[i].shape, lambda count: count >= at_least)
        args["keepdims"] = draw(st.booleans())
        return (i,), args

    return arguments


def _method_reduction(method: str):
    """``x.sum()`` with no arguments when they are the defaults, else ``x.sum(axis, keepdims=...)``."""

    def call(x, axis, keepdims):
        if axis is None and not keepdims:
            return getattr(x, method)()
        return getattr(x, method)(axis, keepdims=keepdims)

    return call


# --- nn ops --------------------------------------------------------------------------
def _nonempty_rows(v: Val) -> bool:
    """logsumexp and top-k need an axis of size > 0 (other axes may be empty): the
    logsumexp of nothing is -inf, and there is no top 1 of nothing."""
    return v.ndim >= 1 and max(v.shape) > 0


def _softmax_arguments(draw, pool, i):
    return (i,), {"axis": _axis(draw, pool[i].shape)}


def _softmax_np(softmax):
    """SciPy's softmax, and nothing for nothing: an empty axis gives an empty result."""

    def call(x, axis):
        return x.copy() if x.shape[axis] == 0 else softmax(x, axis=axis)

    return call


def _logsumexp_arguments(draw, pool, i):
    return (i,), {"axis": _axis(draw, pool[i].shape, nonempty=True), "keepdims": draw(st.booleans())}


def _cross_entropy_arguments(draw, pool, i):
    logits = pool[i].shape
    count = math.prod(logits[:-1])
    targets = draw(st.lists(st.integers(0, logits[-1] - 1), min_size=count, max_size=count))
    return (i,), {"targets": np.array(targets, dtype=np.int64).reshape(logits[:-1])}


def _cross_entropy_np(logits, targets):
    """The mean over positions of -log softmax(logits)[target]."""
    log_p = scipy.special.log_softmax(logits.astype(np.float64), axis=-1)
    picked = log_p[(*np.indices(targets.shape), targets)]
    return np.asarray(-picked.mean(), dtype=logits.dtype)


def _topk_arguments(draw, pool, i):
    axis = _axis(draw, pool[i].shape, nonempty=True)
    return (i,), {"k": draw(st.integers(1, pool[i].shape[axis])), "axis": axis}


def _topk_np(x, k, axis):
    """The k largest, best first: the values by sorting, the indices by a stable sort (ties
    go to the lowest index, as documented)."""
    values = np.flip(np.sort(x, axis=axis), axis=axis)
    indices = np.argsort(-x, axis=axis, kind="stable")
    first_k = (slice(None),) * (axis % x.ndim) + (slice(0, k),)
    return values[first_k], indices[first_k]


def _normalizable(statistic):
    """Layer and RMS norm take any row of a float64 value. A float32 row must be well spread
    (variance, or mean square, at least 1e-3): rounding in a near-constant row is amplified
    by 1/sqrt(var + eps), 316 times for eps = 1e-5 (and again by a second norm), beyond what
    float32 can be compared with float64 at."""

    def accepts(v: Val) -> bool:
        if v.ndim == 0 or v.shape[-1] == 0:
            return False
        return v.data.dtype == np.float64 or bool(np.all(statistic(v.data.astype(np.float64)) >= 1e-3))

    return accepts


def _norm_arguments(params: str):
    """Each parameter ("w": weight, "b": bias) is none or an earlier value that broadcasts
    with x; eps is the default's order or much larger."""

    def arguments(draw, pool, i):
        inputs, used = [i], ""
        for p in params:
            if draw(st.booleans()):
                inputs.append(_partner(draw, pool, i))
                used += p
        return tuple(inputs), {"params": used, "eps": draw(st.sampled_from((1e-5, 1e-2)))}

    return arguments


def _norm(fn, accepted: str):
    """fn(x, weight[, bias], eps=eps) with the parameters the step drew (None for the rest)."""

    def call(x, *given, params, eps):
        given = dict(zip(params, given, strict=True))
        return fn(x, *(given.get(p) for p in accepted), eps=eps)

    return call


def _layer_norm_np(x, w, b, eps):
    y = (x - x.mean(axis=-1, keepdims=True)) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    y = y if w is None else y * w
    return y if b is None else y + b


def _rms_norm_np(x, w, eps):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if w is None else y * w


def _dropout_arguments(draw, pool, i):
    return (i,), {"p": draw(st.sampled_from((0.0, 0.25, 0.5))), "training": draw(st.booleans())}


def _dropout_np(x, p, training, mask):
    """Inverted dropout with the mask tinymoe drew, read off its output where x is not 0
    (see ``accepts`` and ``_run``): the random draw is the one thing a reference cannot redo."""
    if not training or p == 0:
        return x
    return np.where(mask, x / (1 - p), 0).astype(x.dtype)


# --- index ops -----------------------------------------------------------------------
def _take_arguments(draw, pool, i):
    x = pool[i].shape
    axis = _axis(draw, x)
    shape = draw(st.sampled_from(((), (2,), (3,), (2, 2), (1, 3)))) if x[axis] else (0,)
    return (i,), {"index": _indices(draw, x[axis], shape), "axis": axis}


def _embedding_arguments(draw, pool, i):
    shape = draw(st.sampled_from(((), (3,), (2, 2), (1, 3))))
    rows = pool[i].shape[0]
    return (i,), {"ids": _indices(draw, rows, shape) % rows}  # token ids are not negative


def _gather_arguments(draw, pool, i):
    """An index with x's number of axes; along the other axes it broadcasts against x, as in
    ``numpy.take_along_axis`` (the same size, or 1 on either side)."""
    x = pool[i].shape
    axis = _axis(draw, x) % len(x)
    shape = [draw(st.sampled_from((n, 1) if n != 1 else (1, 2))) for n in x]
    shape[axis] = draw(st.integers(1, 3)) if x[axis] else 0
    index = _indices(draw, x[axis], tuple(shape))
    return (i,), {"index": index, "axis": axis - len(x) * draw(st.booleans())}


def _gather_np(x, index, axis):
    """out[..., j, ...] = x[..., index[..., j, ...], ...], x and index broadcast along the
    other axes."""
    axis %= x.ndim
    others = np.broadcast_shapes(_without(x.shape, axis), _without(index.shape, axis))
    x = np.broadcast_to(x, _with(others, axis, x.shape[axis]))
    index = np.broadcast_to(index, _with(others, axis, index.shape[axis]))
    out = np.empty(index.shape, dtype=x.dtype)
    for pos in np.ndindex(index.shape):
        out[pos] = x[_with(pos, axis, index[pos])]
    return out


def _scatter_add_arguments(draw, pool, i):
    """src: an earlier value with x's number of axes, cropped to a leading block no larger
    than x along the other axes (``src[:2, :1]``: the index may be smaller than x there, as
    the definition allows); index has the block's shape."""
    x = pool[i].shape
    axis = _axis(draw, x) % len(x)
    j = _choose(draw, [j for j, v in enumerate(pool) if v.ndim == len(x)])  # x itself qualifies
    block = tuple(
        (n if x[axis] else 0) if d == axis else _choose(draw, range(1, min(n, x[d]) + 1) if min(n, x[d]) else [0])
        for d, n in enumerate(pool[j].shape)
    )
    index = _indices(draw, x[axis], block)
    return (i, j), {"block": block, "index": index, "axis": axis - len(x) * draw(st.booleans())}


def _scatter_add(fn):
    def call(x, src, block, index, axis):
        return fn(x, index, src[tuple(slice(0, n) for n in block)], axis)

    return call


def _scatter_add_np(x, index, src, axis):
    """out = x, then out[..., index[..., j, ...], ...] += src[..., j, ...]."""
    axis %= x.ndim
    out = x.copy()
    for pos in np.ndindex(index.shape):
        out[_with(pos, axis, index[pos])] += src[pos]
    return out


def _index_add_arguments(draw, pool, i):
    """src: x's shape but for m slices along ``axis`` (src does not broadcast: as documented,
    and as in PyTorch), an earlier value (x itself always fits) or a constant; a 1-D index
    of m positions."""
    x = pool[i].shape
    axis = _axis(draw, x)
    fits = [j for j, v in enumerate(pool) if v.ndim == len(x) and _without(v.shape, axis) == _without(x, axis)]
    if x[axis] == 0:  # nothing to index: src must hold no slices either
        fits = [j for j in fits if pool[j].shape[axis] == 0]
    args = {"axis": axis}
    if fits and not _chance(draw, 4):
        inputs = (i, _choose(draw, fits))
        m = pool[inputs[1]].shape[axis]
    else:
        inputs, m = (i,), draw(st.integers(0, 3)) if x[axis] else 0
        args["c"] = _seeded(draw).uniform(-2, 2, _with(x, axis, m)).astype(pool[i].data.dtype)
    return inputs, {**args, "index": _indices(draw, x[axis], (m,))}


def _index_add(fn):
    def call(x, *src, index, axis, c=None):
        return fn(x, index, src[0] if src else c, axis)

    return call


def _index_add_np(x, index, src, axis):
    """out = x, then out[index[i]] += src[i] along ``axis`` (whole slices)."""
    axis %= x.ndim
    out = x.copy()
    lead = (slice(None),) * axis
    for i, j in enumerate(index):
        out[(*lead, j)] += src[(*lead, i)]
    return out


def _getitem_arguments(draw, pool, i):
    return (i,), {"index": _index(draw, pool[i].shape)}


def _index(draw, shape):
    """Any NumPy index: ints (negative too), slices (negative steps too), None, Ellipsis,
    integer arrays with repeats, boolean masks, and tuples mixing them."""
    n = len(shape)
    kinds = ["parts", "ellipsis"] + ["int", "array", "array", "mask", "mask_all"] * (n >= 1) + ["arrays"] * 2 * (n >= 2)
    kind = _choose(draw, kinds)  # integer arrays (repeats: the gradient must add up) most of all
    if kind == "int" and shape[0] > 0:
        return draw(st.integers(-shape[0], shape[0] - 1))
    if kind == "array":  # an integer array on one axis, after slices
        axis = draw(st.integers(0, n - 1))
        index = _indices(draw, shape[axis], draw(st.sampled_from(((3,), (2, 2)))) if shape[axis] else (0,))
        return (slice(None),) * axis + (index,)
    if kind == "arrays":  # integer arrays on two axes, broadcast together
        rows = _indices(draw, shape[0], (2, 1) if shape[0] else (0, 1))
        return rows, _indices(draw, shape[1], (2,) if shape[1] else (0,))
    if kind == "mask":  # a boolean mask over the first axis
        return np.array(draw(st.lists(st.booleans(), min_size=shape[0], max_size=shape[0])), dtype=bool)
    if kind == "mask_all":  # a mask over every element: x[mask] is 1-D
        flat = draw(st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape)))
        return np.array(flat, dtype=bool).reshape(shape)
    lead = draw(st.integers(0, n))  # parts for the first axes; then maybe ... and the last axes
    parts = [_index_part(draw, size) for size in shape[:lead]]
    if kind == "ellipsis":
        trail = draw(st.integers(0, n - lead))
        parts += [Ellipsis] + [_index_part(draw, size) for size in shape[n - trail :]]
    if draw(st.booleans()):  # a new axis somewhere
        parts.insert(draw(st.integers(0, len(parts))), None)
    return tuple(parts)


def _index_part(draw, size: int):
    """The index of one axis: an int, a slice (any bounds, negative steps too) or ``:``."""
    part = draw(st.sampled_from(("slice", "int", "all") if size else ("slice", "all")))
    if part == "int":
        return draw(st.integers(-size, size - 1))
    if part == "all":
        return slice(None)
    bounds = st.none() | st.integers(-size - 1, size + 1)
    return slice(draw(bounds), draw(bounds), draw(st.sampled_from((None, 1, 2, -1, -2))))


# --- shape ops -----------------------------------------------------------------------
def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


def _reshape_arguments(draw, pool, i):
    """Another shape with as many elements (0-3 axes), maybe with one -1 to infer."""
    size = pool[i].size
    ndim = draw(st.integers(0 if size == 1 else 1, 3))
    if size == 0:
        shape = [draw(st.integers(1, 3)) for _ in range(ndim)]
        shape[draw(st.integers(0, ndim - 1))] = 0
        return (i,), {"shape": tuple(shape)}
    shape = [1] * ndim
    for p in _prime_factors(size):
        shape[draw(st.integers(0, ndim - 1))] *= p
    if ndim and draw(st.booleans()):
        shape[draw(st.integers(0, ndim - 1))] = -1
    return (i,), {"shape": tuple(shape)}


def _reshape(x, shape):
    """F.reshape takes a tuple, or an int for a 1-D result."""
    return F.reshape(x, shape[0] if len(shape) == 1 else shape)


def _reshape_method(x, shape):
    """Tensor.reshape(2, 3) and Tensor.reshape((2, 3)) are both allowed."""
    return x.reshape(*shape) if len(shape) != 1 else x.reshape(shape)


def _expand_arguments(draw, pool, i):
    """New leading axes, and size-1 axes stretched."""
    lead = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2))))
    shape = lead + tuple(draw(st.integers(1, 3)) if n == 1 else n for n in pool[i].shape)
    assume(_fits(shape))
    return (i,), {"shape": shape}


def _transpose_arguments(draw, pool, i, packed=False):
    """axes: None (reverse them) or a permutation, each axis negative or not; ``packed``:
    Tensor.transpose takes them one by one, ``x.transpose(1, 0)``, or as one tuple."""
    ndim = pool[i].ndim
    axes = None
    if not _chance(draw, 4):
        axes = tuple(a - ndim * draw(st.booleans()) for a in draw(st.permutations(range(ndim))))
    if not packed:
        return (i,), {"axes": axes}
    return (i,), {"axes": axes, "packed": axes is not None and draw(st.booleans())}


def _transpose_method(x, axes, packed):
    return x.transpose(axes) if packed else x.transpose(*(axes or ()))


def _concat_arguments(draw, pool, i, stack: bool):
    """1-3 tensors (the same one again, maybe) that agree but along ``axis`` (stack: on all)."""
    shape = pool[i].shape
    if stack:
        axis = draw(st.integers(-len(shape) - 1, len(shape)))
        fits = [j for j, v in enumerate(pool) if v.shape == shape]
    else:
        axis = _axis(draw, shape)
        agree = _without(shape, axis)
        fits = [j for j, v in enumerate(pool) if v.ndim == len(shape) and _without(v.shape, axis) == agree]
    return (i, *(_choose(draw, fits) for _ in range(draw(st.integers(0, 2))))), {"axis": axis}


def _split_arguments(draw, pool, i):
    """sections: an int that divides the axis, or a list of sizes (0 allowed) adding up to it."""
    shape = pool[i].shape
    axis = _axis(draw, shape)
    n = shape[axis]
    if draw(st.booleans()):
        sections = draw(st.sampled_from([k for k in (1, 2, 3) if n % k == 0]))
    else:
        cuts = sorted(draw(st.lists(st.integers(0, n), min_size=1, max_size=2)))
        sections = [b - a for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    return (i,), {"sections": sections, "axis": axis}


def _split_np(x, sections, axis):
    if isinstance(sections, int):
        return tuple(np.split(x, sections, axis=axis))
    return tuple(np.split(x, np.cumsum(sections)[:-1], axis=axis))


# --- where and the comparisons -------------------------------------------------------
def _where_arguments(draw, pool, i):
    """where(condition, a, b): a drawn boolean condition; b a value or a constant."""
    inputs, args = _binary_arguments(draw, pool, i, swap=True)
    out = _broadcast(pool[i].shape, pool[inputs[1]].shape if len(inputs) == 2 else np.shape(args["c"]))
    shape = _into(draw, out)
    flat = draw(st.lists(st.booleans(), min_size=math.prod(shape), max_size=math.prod(shape)))
    return inputs, {**args, "condition": np.array(flat, dtype=bool).reshape(shape)}


def _compare_arguments(draw, pool, i):
    """Inputs (a, b, p[, q]) for ``where(p OP q, a, b)`` (or ``p OP c``, a constant). p and q
    pick the branch and get no gradient; they must not be within MARGIN of a tie, where
    float32 and float64 could pick different branches."""
    q = None if _chance(draw, 4) else _partner(draw, pool, i)
    args = {"c": draw(st.sampled_from((-0.5, 0.0, 0.75)))} if q is None else {}
    if q != i:
        gap = np.abs(pool[i].data.astype(np.float64) - (args["c"] if q is None else pool[q].data))
        assume(bool(np.all(gap >= MARGIN)))
    condition = pool[i].shape if q is None else _broadcast(pool[i].shape, pool[q].shape)
    a = _choose(draw, _broadcasting(pool, condition))
    b = _choose(draw, _broadcasting(pool, _broadcast(condition, pool[a].shape)))
    return (a, b, i) + (() if q is None else (q,)), args


def _compare(comparison, where):
    def call(a, b, p, q=None, c=None):
        return where(comparison(p, c if q is None else q), a, b)

    return call


def _with_partner(draw, pool, i):
    return (i, _partner(draw, pool, i)), {}


CLIP_BOUNDS = [  # one bound or both
    {"low": lo, "high": hi} for lo in (None, -1.5, -0.3) for hi in (None, 0.4, 1.75) if (lo, hi) != (None, None)
]


def _squeeze_arguments(draw, pool, i):
    shape = pool[i].shape
    return (i,), {"axis": _choose(draw, [a for a in range(-len(shape), len(shape)) if shape[a] == 1])}


def _table() -> dict[str, Op]:
    sp = scipy.special
    small = {bound: (lambda v, bound=bound: v.below(bound)) for bound in (3, 6)}  # exp and powers
    nd = {n: (lambda v, n=n: v.ndim >= n) for n in (1, 2)}
    ops = [
        # elementwise, one input
        unary("F.abs", F.abs, np.abs),
        unary("F.erf", F.erf, sp.erf),
        unary("F.exp", F.exp, np.exp, small[6]),
        unary("F.gelu", F.gelu, lambda x: x * sp.ndtr(x)),
        unary("F.log", lambda x: F.log(_positive(x)), lambda x: np.log(_positive(x))),
        unary("F.neg", F.neg, np.negative),
        unary("F.normal_cdf", F.normal_cdf, sp.ndtr),
        unary("F.relu", F.relu, lambda x: np.maximum(x, 0)),
        unary("F.sigmoid", F.sigmoid, sp.expit),
        unary("F.silu", F.silu, lambda x: x * sp.expit(x)),
        unary("F.softplus", F.softplus, lambda x: np.logaddexp(0, x)),
        unary("F.sqrt", lambda x: F.sqrt(_positive(x)), lambda x: np.sqrt(_positive(x))),
        unary("F.tanh", F.tanh, np.tanh),
        unary("Tensor.exp", lambda x: x.exp(), np.exp, small[6]),
        unary("Tensor.log", lambda x: _positive(x).log(), lambda x: np.log(_positive(x))),
        unary("Tensor.__neg__", operator.neg, np.negative),
        Op(
            "F.clip",
            _anything,
            lambda draw, pool, i: ((i,), draw(st.sampled_from(CLIP_BOUNDS))),
            F.clip,
            lambda x, low, high: np.clip(x, low, high),
        ),
        Op(
            "F.astype",
            _anything,
            lambda draw, pool, i: ((i,), {"dtype": draw(st.sampled_from((np.float32, np.float64)))}),
            F.astype,
            lambda x, dtype: x.astype(dtype),
        ),
        Op(
            "Tensor.astype",
            _anything,
            lambda draw, pool, i: ((i,), {"dtype": draw(st.sampled_from((np.float32, np.float64)))}),
            lambda x, dtype: x.astype(dtype),
            lambda x, dtype: x.astype(dtype),
        ),
        Op("F.dropout", lambda v: bool(np.all(v.data != 0)), _dropout_arguments, F.dropout, _dropout_np, random=True),
        # elementwise, two inputs (broadcasting; a constant on either side)
        binary("F.add", F.add, np.add, swap=True),
        binary("F.sub", F.sub, np.subtract, swap=True),
        binary("F.mul", F.mul, np.multiply, swap=True),
        binary("F.div", lambda a, b: F.div(a, _positive(b)), lambda a, b: a / _positive(b), swap=True),
        binary("F.maximum", F.maximum, np.maximum, swap=True),
        binary("Tensor.__add__", operator.add, np.add, swap=False),
        binary("Tensor.__sub__", operator.sub, np.subtract, swap=False),
        binary("Tensor.__mul__", operator.mul, np.multiply, swap=False),
        binary("Tensor.__truediv__", lambda a, b: a / _positive(b), lambda a, b: a / _positive(b), swap=False),
        reflected("Tensor.__radd__", operator.add),
        reflected("Tensor.__rsub__", operator.sub),
        reflected("Tensor.__rmul__", operator.mul),
        reflected("Tensor.__rtruediv__", lambda c, x: c / _positive(x)),
        reflected("Tensor.__rpow__", operator.pow, 0.5, 2.5, accepts=small[6]),
        Op("F.pow", small[3], _power_arguments(constant_base=True), _power(F.pow), _power(np.power)),
        Op("Tensor.__pow__", small[3], _power_arguments(constant_base=False), _power(operator.pow), _power(np.power)),
        Op(
            "F.where",
            _anything,
            _where_arguments,
            lambda *xs, condition, **kw: F.where(condition, *_pair(xs, **kw)),
            lambda *xs, condition, **kw: np.where(condition, *_pair(xs, **kw)),
        ),
        *(
            Op(f"Tensor.{name}", _anything, _compare_arguments, _compare(cmp, F.where), _compare(cmp, np.where), (2, 3))
            for name, cmp in [(f"__{c.__name__}__", c) for c in (operator.lt, operator.le, operator.gt, operator.ge)]
        ),
        # matrix products
        Op(
            "F.matmul",
            nd[2],
            lambda draw, pool, i: _matmul_arguments(draw, pool, i, swap=True),
            lambda *xs, **kw: F.matmul(*_pair(xs, **kw)),
            lambda *xs, **kw: np.matmul(*_pair(xs, **kw)),
            min_ndim=2,
        ),
        Op(
            "Tensor.__matmul__",
            nd[2],
            lambda draw, pool, i: _matmul_arguments(draw, pool, i, swap=False),
            lambda *xs, **kw: operator.matmul(*_pair(xs, **kw)),
            lambda *xs, **kw: np.matmul(*_pair(xs, **kw)),
            min_ndim=2,
        ),
        Op(
            "Tensor.__rmatmul__",
            nd[2],
            lambda draw, pool, i: ((i,), {"c": _seeded(draw).uniform(-2, 2, (3, pool[i].shape[-2]))}),
            lambda x, c: c @ x,
            lambda x, c: c @ x,
            min_ndim=2,
        ),
        Op("F.linear", nd[2], _linear_arguments, _linear(F.linear), _linear(_linear_np), min_ndim=2),
        Op(
            "F.mse_loss",
            lambda v: v.size > 0,
            lambda draw, pool, i: ((i, _partner(draw, pool, i, lambda v: v.size > 0)), {}),
            F.mse_loss,
            lambda p, t: np.mean((p - t) ** 2),
        ),
        # reductions
        Op("F.sum", _anything, _reduce_arguments(0), F.sum, np.sum),
        Op("F.mean", lambda v: v.size > 0, _reduce_arguments(1), F.mean, np.mean),
        Op("F.max", lambda v: v.size > 0, _reduce_arguments(1), F.max, np.max),
        Op("F.var", lambda v: v.size > 0, _reduce_arguments(1, ddof=True), F.var, np.var),
        Op("Tensor.sum", _anything, _reduce_arguments(0), _method_reduction("sum"), np.sum),
        Op("Tensor.mean", lambda v: v.size > 0, _reduce_arguments(1), _method_reduction("mean"), np.mean),
        Op("Tensor.max", lambda v: v.size > 0, _reduce_arguments(1), _method_reduction("max"), np.max),
        # nn ops
        Op("F.softmax", nd[1], _softmax_arguments, F.softmax, _softmax_np(sp.softmax), min_ndim=1),
        Op("F.log_softmax", nd[1], _softmax_arguments, F.log_softmax, _softmax_np(sp.log_softmax), min_ndim=1),
        Op("F.logsumexp", _nonempty_rows, _logsumexp_arguments, F.logsumexp, sp.logsumexp, min_ndim=1),
        Op(
            "F.cross_entropy",
            lambda v: v.ndim >= 1 and v.size > 0,
            _cross_entropy_arguments,
            F.cross_entropy,
            _cross_entropy_np,
            min_ndim=1,
        ),
        Op("F.topk", _nonempty_rows, _topk_arguments, F.topk, _topk_np, min_ndim=1),
        Op(
            "F.layer_norm",
            _normalizable(lambda x: x.var(axis=-1)),
            _norm_arguments("wb"),
            _norm(F.layer_norm, "wb"),
            _norm(_layer_norm_np, "wb"),
            min_ndim=1,
        ),
        Op(
            "F.rms_norm",
            _normalizable(lambda x: np.mean(x * x, axis=-1)),
            _norm_arguments("w"),
            _norm(F.rms_norm, "w"),
            _norm(_rms_norm_np, "w"),
            min_ndim=1,
        ),
        # index ops
        Op("F.take", nd[1], _take_arguments, F.take, lambda x, index, axis: np.take(x, index, axis), min_ndim=1),
        Op(
            "F.embedding",
            lambda v: v.ndim == 2 and v.shape[0] > 0,
            _embedding_arguments,
            F.embedding,
            lambda w, ids: w[ids],
            min_ndim=2,
        ),
        Op("F.gather", nd[1], _gather_arguments, F.gather, _gather_np, min_ndim=1),
        Op(
            "F.scatter_add",
            nd[1],
            _scatter_add_arguments,
            _scatter_add(F.scatter_add),
            _scatter_add(_scatter_add_np),
            min_ndim=1,
        ),
        Op("F.index_add", nd[1], _index_add_arguments, _index_add(F.index_add), _index_add(_index_add_np), min_ndim=1),
        Op("F.getitem", _anything, _getitem_arguments, F.getitem, lambda x, index: x[index]),
        Op("Tensor.__getitem__", _anything, _getitem_arguments, lambda x, index: x[index], lambda x, index: x[index]),
        # shape ops
        Op("F.reshape", _anything, _reshape_arguments, _reshape, np.reshape),
        Op("Tensor.reshape", _anything, _reshape_arguments, _reshape_method, np.reshape),
        Op("F.expand", _anything, _expand_arguments, F.expand, lambda x, shape: np.broadcast_to(x, shape).copy()),
        Op(
            "F.squeeze",
            lambda v: 1 in v.shape,
            _squeeze_arguments,
            F.squeeze,
            np.squeeze,
        ),
        Op(
            "F.unsqueeze",
            _anything,
            lambda draw, pool, i: ((i,), {"axis": draw(st.integers(-pool[i].ndim - 1, pool[i].ndim))}),
            F.unsqueeze,
            np.expand_dims,
        ),
        Op(
            "F.swapaxes",
            nd[1],
            lambda draw, pool, i: ((i,), {"a": _axis(draw, pool[i].shape), "b": _axis(draw, pool[i].shape)}),
            F.swapaxes,
            lambda x, a, b: np.swapaxes(x, a, b),
            min_ndim=1,
        ),
        Op("F.transpose", _anything, _transpose_arguments, F.transpose, np.transpose),
        Op(
            "Tensor.transpose",
            _anything,
            lambda draw, pool, i: _transpose_arguments(draw, pool, i, packed=True),
            _transpose_method,
            lambda x, axes, packed: np.transpose(x, axes),
        ),
        unary("Tensor.T", lambda x: x.T, lambda x: x.T),
        Op(
            "F.concat",
            nd[1],
            lambda draw, pool, i: _concat_arguments(draw, pool, i, stack=False),
            lambda *xs, axis: F.concat(list(xs), axis),
            lambda *xs, axis: np.concatenate(xs, axis=axis),
            min_ndim=1,
        ),
        Op(
            "F.stack",
            _anything,
            lambda draw, pool, i: _concat_arguments(draw, pool, i, stack=True),
            lambda *xs, axis: F.stack(list(xs), axis),
            lambda *xs, axis: np.stack(xs, axis=axis),
        ),
        Op("F.split", nd[1], _split_arguments, lambda x, **kw: tuple(F.split(x, **kw)), _split_np, min_ndim=1),
        # what stops the gradient, and the identity
        unary("Tensor.detach", lambda x: x.detach(), lambda x: x, detached=(0,)),
        unary("Tensor.to", lambda x: x.to("cpu"), lambda x: x),
        Op("Tensor.numpy", _anything, _with_partner, lambda y, x: y.numpy() * x, np.multiply, detached=(0,)),
        Op(
            "Tensor.item",
            lambda v: v.size == 1,
            _with_partner,
            lambda y, x: x * y.item(),
            lambda y, x: x * y.item(),  # a Python float: x keeps its dtype
            detached=(0,),
        ),
    ]
    return {op.name: op for op in ops}


OPS = _table()

# Tensor attributes that are no computation to draw as a step; the harness uses each of them
# on every program (``check`` reads shapes and dtypes, calls backward, retain_grad...).
TENSOR_HARNESS = {
    "__init__": "tm.tensor makes every leaf",
    "__repr__": "printing, no computation",
    "__len__": "compared with NumPy's for every value",
    "data": "read for every value (writing it is the subject of tests/test_engine_safety.py)",
    "requires_grad_": "every leaf that requires grad (through tm.tensor)",
    "retain_grad": "drawn for each step; the retained gradients are checked",
    "backward": "every program, once or twice",
    "shape": "compared with NumPy's for every value",
    "dtype": "compared with NumPy's for every value",
    "ndim": "compared with NumPy's for every value",
    "size": "compared with NumPy's for every value",
    "device": "every op checks that its inputs share one device",
    "is_leaf": "checked for every value",
}


# ------------------------------------------------------------------------- programs()
@st.composite
def _leaf_shapes(draw, n: int, min_ndim: int):
    """Shapes that broadcast together: suffixes of one shape of 0-3 axes (mostly 2-3), some
    axes set to 1. Sides are 1-3; one program in five also has an empty axis."""
    ndim = _choose(draw, [k for k in (0, 1, 2, 2, 3, 3) if k >= min_ndim])
    full = [_choose(draw, (1, 2, 2, 3, 3)) for _ in range(ndim)]
    if ndim and _chance(draw, 5):
        full[draw(st.integers(0, ndim - 1))] = 0
    shapes = []
    for i in range(n):
        k = _choose(draw, [*range(min_ndim if i == 0 else 0, ndim + 1), ndim, ndim])  # mostly all axes
        shapes.append(tuple(1 if _chance(draw, 5) else side for side in full[ndim - k :]))
    return shapes


def _distinct_values(rng, count: int) -> np.ndarray:
    """Values at least 1/32 apart and from 0, in [-3, 3]: no ties and no kinks in the leaves.
    Multiples of 1/16 plus a jitter, so that sums of them rarely tie either."""
    grid = np.arange(1, 49) / 16
    grid = np.concatenate([-grid, grid])
    return rng.choice(grid, size=count, replace=False) + rng.uniform(-1 / 64, 1 / 64, count)


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _floats(outs) -> list[np.ndarray]:
    """The values among a reference's outputs (top-k's indices are not one)."""
    return [np.asarray(o) for o in outs if np.asarray(o).dtype.kind == "f"]


@st.composite
def programs(draw, must_use: str | None = None, min_steps: int = 3, max_steps: int = 8):
    """1-3 leaves, then ``min_steps``..``max_steps`` steps, each on any earlier values. With
    ``must_use``, that entry point is one of the steps."""
    shapes = draw(_leaf_shapes(_choose(draw, (1, 2, 3)), OPS[must_use].min_ndim if must_use else 0))
    seed = draw(st.integers(0, 2**32 - 1))
    data = _distinct_values(np.random.default_rng(seed), sum(math.prod(s) for s in shapes))
    leaves, start = [], 0
    for shape in shapes:
        dtype = draw(st.sampled_from((np.float64, np.float32)))
        size = math.prod(shape)
        leaves.append(Leaf(data[start : start + size].reshape(shape).astype(dtype), not _chance(draw, 4)))
        start += size
    if not any(leaf.requires_grad for leaf in leaves):
        leaves[0] = Leaf(leaves[0].data, True)
    pool = [Val(leaf.data) for leaf in leaves]

    steps, pending = [], must_use
    n_steps = _choose(draw, range(min_steps, max_steps + 1))
    for k in range(n_steps):
        if pending and (k == n_steps - 1 or draw(st.booleans())):
            op, pending = OPS[pending], None
            assume(any(op.accepts(v) for v in pool))
        else:
            op = _choose(draw, [op for op in OPS.values() if any(op.accepts(v) for v in pool)])
        inputs, args = op.arguments(draw, pool, _choose(draw, [i for i, v in enumerate(pool) if op.accepts(v)]))
        arrays = [pool[i].data for i in inputs]
        mask = {"mask": np.ones(arrays[0].shape, dtype=bool)} if op.random else {}  # a stand-in
        outs = _floats(_as_tuple(op.np(*arrays, **args, **mask)))
        for out in outs:  # every value small, finite, and cheap to differentiate numerically
            assume(out.size <= CAP and bool(np.all(np.abs(out) <= LIMIT)))
        pool += [Val(out) for out in outs]
        steps.append(Step(op.name, inputs, args, len(outs), draw(st.booleans())))
    return Program(tuple(leaves), tuple(steps), seed, draw(st.booleans()))


# ------------------------------------------------------------------------- check()
def check(program: Program) -> None:
    """Run ``program`` in tinymoe and in NumPy; compare every value and every gradient."""
    names = program.names()
    exact = _run(program, float64=True)
    frozen = _reference(program, exact.masks)  # the NumPy program, evaluated on its own
    for name, got, want in zip(names, exact.values, frozen, strict=True):
        _assert_close(got.numpy(), want, FORWARD_RTOL[np.dtype(np.float64)], f"{name} in a float64 run")
    loss, size_of_loss = _loss(frozen, exact.weights)
    for j, grad in exact.grads.items():
        numeric, roundoff = _numeric_gradient(program, exact, j, frozen, loss, size_of_loss)
        _assert_close(grad, numeric, GRAD_RTOL, f"gradient of {names[j]} (float64)", per_tensor=True, atol=roundoff)
    if not _has_float32(program):
        return
    drawn = _run(program, float64=False)
    for k, mask in exact.masks.items():
        np.testing.assert_array_equal(drawn.masks[k], mask, err_msg=f"step {k}: another dropout mask")
    for j, grad in drawn.grads.items():
        what = f"gradient of {names[j]} ({grad.dtype})"
        _assert_close(grad, exact.grads[j], FLOAT32_GRAD_RTOL, what, per_tensor=True)


@dataclasses.dataclass
class _Run:
    values: list[Tensor]  # one per value; an op that returns its input repeats a tensor
    masks: dict[int, np.ndarray]  # dropout masks, by step
    weights: list[np.ndarray]  # the loss is sum_i sum(values[i] * weights[i])
    grads: dict[int, np.ndarray]  # the backprop gradient of each checked tensor, by value


def _run(program: Program, float64: bool) -> _Run:
    """Run ``program`` in tinymoe (in float64, or in the program's own dtypes), compare each
    step with NumPy on the same inputs, then backprop ``sum_i sum(v_i * R_i)``."""
    names = program.names()
    tm.manual_seed(program.seed)  # the same dropout masks in both runs
    values = [
        tm.tensor(leaf.data.astype(np.float64) if float64 else leaf.data, requires_grad=leaf.requires_grad)
        for leaf in program.leaves
    ]
    masks, retained, requires_grad = {}, set(), [leaf.requires_grad for leaf in program.leaves]
    for k, step in enumerate(program.steps):
        op = OPS[step.op]
        args = _float64_args(step.args) if float64 else step.args
        xs = [values[i] for i in step.inputs]
        arrays = [x.numpy().copy() for x in xs]
        outs = _as_tuple(op.tm(*xs, **args))
        if op.random:  # the mask is read off the output: where x is 0 it cannot be (an earlier dropout)
            assume(bool(np.all(arrays[0] != 0)))
            masks[k] = outs[0].numpy() != 0
            args = {**args, "mask": masks[k]}
        wants = [np.asarray(w) for w in _as_tuple(op.np(*arrays, **args))]
        assert len(outs) == len(wants), f"step {k} ({step.op}): {len(outs)} outputs, expected {len(wants)}"
        rg = any(requires_grad[i] for pos, i in enumerate(step.inputs) if pos not in op.detached)
        # float32 anywhere in the step (an input, a constant, the output) sets the tolerance
        seen = [*arrays, *wants, *(a for a in args.values() if isinstance(a, np.ndarray))]
        rtol = max(FORWARD_RTOL.get(a.dtype, 0) for a in seen)
        for got, want in zip(outs, wants, strict=True):
            if not isinstance(got, Tensor):  # an index array (top-k's indices)
                np.testing.assert_array_equal(got, want, err_msg=f"step {k} ({step.op}): indices")
                continue
            what = names[len(values)]
            assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
            assert (got.ndim, got.size) == (want.ndim, want.size), f"{what}: ndim or size unlike its shape's"
            assert want.ndim == 0 or len(got) == len(want), f"{what}: len {len(got)}, expected {len(want)}"
            assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
            assert got.requires_grad == rg, f"{what}: requires_grad is {got.requires_grad}, expected {rg}"
            assert isinstance(got.data, np.ndarray), f"{what}: data is a {type(got.data).__name__}"
            _assert_close(got.numpy(), want, rtol, f"{what} ({want.dtype})")
            if step.retain_grad:
                got.retain_grad()
                retained.add(id(got))
            values.append(got)
            requires_grad.append(rg)

    rng = np.random.default_rng(program.seed)
    weights = [rng.standard_normal(v.shape).astype(np.float32).astype(np.float64) for v in values]
    before = [v.numpy().copy() for v in values]
    loss = sum((v * w.astype(v.dtype)).sum() for v, w in zip(values, weights, strict=True))
    for _ in range(2 if program.backward_twice else 1):
        loss.backward()
    for what, v, b in zip(names, values, before, strict=True):
        assert np.array_equal(v.numpy(), b), f"{what}: backward changed the value"

    grads, leaves = {}, {id(v) for v in values[: len(program.leaves)]}
    for j, v in enumerate(values):
        if values.index(v) != j:  # the same tensor again (an identity op): checked once
            continue
        assert v.is_leaf == (id(v) in leaves or not v.requires_grad), f"{names[j]}: is_leaf is {v.is_leaf}"
        if not (v.requires_grad and (id(v) in leaves or id(v) in retained)):
            assert v.grad is None, f"{names[j]}: has a .grad but is no leaf that requires grad, nor retained"
            continue
        assert v.grad is not None, f"{names[j]}: no .grad after backward"
        assert v.grad.shape == v.shape and v.grad.dtype == v.dtype, (
            f"{names[j]}: a {v.grad.shape} {v.grad.dtype} gradient for a {v.shape} {v.dtype} tensor"
        )
        grads[j] = v.grad / (2 if program.backward_twice else 1)
    return _Run(values, masks, weights, grads)


def _float64_args(args: dict) -> dict:
    """The same step in float64: float constants and the astype target become float64."""
    args = dict(args)
    for key, value in args.items():
        if key == "dtype":
            args[key] = np.float64
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            args[key] = value.astype(np.float64)
    return args


def _has_float32(program: Program) -> bool:
    """Float32 anywhere: a leaf, a constant, a cast. (If not, the float64 run was the run.)"""
    arrays = [leaf.data for leaf in program.leaves]
    arrays += [a for step in program.steps for a in step.args.values() if isinstance(a, np.ndarray)]
    casts = [step.args.get("dtype") for step in program.steps]
    return any(a.dtype == np.float32 for a in arrays) or np.float32 in casts


def _reference(program: Program, masks, bump=None, frozen=None) -> list[np.ndarray]:
    """Every value of ``program`` by NumPy alone, in float64. ``bump = (value, element, h)``
    adds h to one element of one value as soon as it exists; ``frozen`` (the values without
    a bump) is what detached inputs see, so that no bump passes through them."""
    values = []

    def add(array):
        if bump is not None and bump[0] == len(values):
            array = array.copy()
            array.flat[bump[1]] += bump[2]
        values.append(array)

    for leaf in program.leaves:
        add(leaf.data.astype(np.float64))
    for k, step in enumerate(program.steps):
        op = OPS[step.op]
        xs = [frozen[i] if frozen and pos in op.detached else values[i] for pos, i in enumerate(step.inputs)]
        mask = {"mask": masks[k]} if op.random else {}
        for out in _floats(_as_tuple(op.np(*xs, **_float64_args(step.args), **mask))):
            add(out)
    return values


def _loss(values, weights) -> tuple[float, float]:
    """sum_i sum(v_i * R_i), and the sum of the terms' magnitudes (for its rounding error)."""
    terms = [v * w for v, w in zip(values, weights, strict=True)]
    return sum(float(t.sum()) for t in terms), sum(float(np.abs(t).sum()) for t in terms)


def _numeric_gradient(program, run: _Run, j, frozen, loss, size_of_loss):
    """Central differences of the NumPy program for value j. Where the two one-sided slopes
    disagree, a kink or a jump lies within EPS and no derivative exists to compare with:
    hypothesis rejects the example. Also returns the rounding error the difference carries."""
    ups, downs = [], []
    for i in range(frozen[j].size):
        ups.append(_loss(_reference(program, run.masks, (j, i, EPS), frozen), run.weights)[0])
        downs.append(_loss(_reference(program, run.masks, (j, i, -EPS), frozen), run.weights)[0])
    ups, downs = np.array(ups), np.array(downs)
    grad = (ups - downs) / (2 * EPS)
    roundoff = 1e-8 * size_of_loss  # float64 rounding of the loss (~1e-14 of it), over EPS
    kink = np.abs((ups - loss) - (loss - downs)) / EPS
    assume(bool(np.all(kink <= GRAD_RTOL * (np.abs(grad) + np.abs(grad).max(initial=0)) + roundoff)))
    return grad.reshape(frozen[j].shape), roundoff


def _assert_close(got, want, rtol, what: str, per_tensor=False, atol=0.0) -> None:
    """|got - want| <= rtol (|want| + scale) + atol for every element. scale is the largest
    |want| (``per_tensor``: a gradient is judged against its largest entry), else at least 1:
    a relative test that does not fail on cancellation near 0."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = float(np.abs(want).max(initial=0))
    scale = scale if per_tensor else max(1.0, scale)
    error = np.abs(got - want)
    bad = ~(error <= rtol * (np.abs(want) + scale) + atol)  # `not <=` also catches NaN
    if bad.any():
        worst = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(error, nan=np.inf), -1))), bad.shape)
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} elements differ (rtol {rtol:g}); worst at "
            f"{tuple(int(i) for i in worst)}: tinymoe {got[worst]!r}, expected {want[worst]!r}\n"
            f"tinymoe:\n{got}\nexpected:\n{want}"
        )
