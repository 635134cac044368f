"""Shape ops: they move numbers around without changing them, so each backward moves the
gradient back the same way (reshape back, transpose back, sum over broadcast copies...)."""

from __future__ import annotations

import math

from tinymoe.backend import add_at, array_module
from tinymoe.ops.axes import normalize_axis, normalize_permutation
from tinymoe.tensor import Function, Tensor


class Matmul(Function):
    """``a @ b`` over the last two axes, batched and broadcast like ``numpy.matmul``.

    Gradients: dL/da = g b^T and dL/db = a^T g. When ``b`` is a plain matrix and ``a`` has
    batch axes (the ``x @ W`` of every linear layer), dL/db is one matrix product over all
    rows at once instead of a batch of products summed afterwards.
    """

    def forward(self, a, b):
        if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
            raise ValueError(
                f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not fit; both need "
                "2+ dimensions and a.shape[-1] must equal b.shape[-2]"
            )
        self.a, self.b = a, b
        return a @ b

    def backward(self, g):
        xp = array_module(g)
        a, b = self.a, self.b
        ga = g @ xp.swapaxes(b, -1, -2) if self.inputs[0].requires_grad else None
        gb = None
        if self.inputs[1].requires_grad:
            if b.ndim == 2:
                rows = math.prod(a.shape[:-1])  # explicit, not -1: an empty axis leaves -1 undefined
                gb = a.reshape(rows, a.shape[-1]).T @ g.reshape(rows, g.shape[-1])
            else:
                gb = xp.swapaxes(a, -1, -2) @ g  # summed over broadcast axes by the engine
        return ga, gb


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.in_shape = x.shape
        try:
            return x.reshape(self.shape)
        except ValueError as error:
            raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} into {self.shape}") from error

    def backward(self, g):
        return (g.reshape(self.in_shape),)


class Transpose(Function):
    """Permute axes (reverse them when ``axes`` is None).

    Backward applies the inverse permutation: output axis i is input axis ``axes[i]``, so
    the gradient's axis ``axes[i]`` must go back to place i. The axes are made non-negative
    first: sorting the raw ``(-1, 0)`` would give the wrong inverse.
    """

    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        if self.axes is None:
            axes = tuple(reversed(range(x.ndim)))
        else:
            axes = normalize_permutation(self.axes, x.ndim, "transpose")
        self.inverse = tuple(sorted(range(len(axes)), key=lambda i: axes[i]))
        return x.transpose(axes)

    def backward(self, g):
        return (g.transpose(self.inverse),)


class BroadcastTo(Function):
    """Expand to a larger shape; the engine sums the gradient over the copies."""

    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        try:
            return array_module(x).broadcast_to(x, self.shape)
        except ValueError as error:
            raise ValueError(f"expand: cannot broadcast {tuple(x.shape)} to {self.shape}") from error

    def backward(self, g):
        return (g,)


class Concat(Function):
    """Join tensors along an axis; each input gets its slice of the gradient back."""

    def __init__(self, axis=0):
        self.axis = axis

    def forward(self, *arrays):
        if not arrays:
            raise ValueError("concat: needs at least one tensor")
        self.axis = normalize_axis(self.axis, arrays[0].ndim, "concat")
        self.sizes = [a.shape[self.axis] for a in arrays]
        try:
            return array_module(arrays[0]).concatenate(arrays, axis=self.axis)
        except ValueError as error:
            shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
            raise ValueError(
                f"concat: shapes {shapes} must match on every axis but axis {self.axis}"
            ) from error

    def backward(self, g):
        xp = array_module(g)
        cuts = [sum(self.sizes[: i + 1]) for i in range(len(self.sizes) - 1)]
        return tuple(xp.split(g, cuts, axis=self.axis))


def _is_basic(index) -> bool:
    """Slices, ints, None and ``...`` only: then x[index] is a view with no repeats."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis or isinstance(p, (int, slice)) for p in parts)


class GetItem(Function):
    """``x[index]`` with slices and integer/boolean arrays (NumPy indexing rules).

    Backward writes the gradient into a zero array at the same places; integer arrays may
    repeat an element, so then the writes must add (``add_at``).
    """

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.shape, self.dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, g):
        gx = array_module(g).zeros(self.shape, dtype=self.dtype)
        if _is_basic(self.index):
            gx[self.index] = g
        else:
            add_at(gx, self.index, g)
        return (gx,)


def matmul(a, b) -> Tensor:
    return Matmul()(a, b)


def reshape(x, shape) -> Tensor:
    return Reshape(tuple(shape) if not isinstance(shape, int) else (shape,))(x)


def transpose(x, axes=None) -> Tensor:
    return Transpose(None if axes is None else tuple(axes))(x)


def swapaxes(x, a: int, b: int) -> Tensor:
    a, b = normalize_axis(a, x.ndim, "swapaxes"), normalize_axis(b, x.ndim, "swapaxes")
    axes = list(range(x.ndim))
    axes[a], axes[b] = axes[b], axes[a]
    return Transpose(tuple(axes))(x)


def expand(x, shape) -> Tensor:
    return BroadcastTo(shape)(x)


def unsqueeze(x, axis: int) -> Tensor:
    axis = normalize_axis(axis, x.ndim + 1, "unsqueeze")  # the new axis may go after the last
    return reshape(x, x.shape[:axis] + (1,) + x.shape[axis:])


def squeeze(x, axis: int) -> Tensor:
    axis = normalize_axis(axis, x.ndim, "squeeze")
    if x.shape[axis] != 1:
        raise ValueError(f"squeeze: axis {axis} has size {x.shape[axis]}, not 1 (shape {x.shape})")
    return reshape(x, x.shape[:axis] + x.shape[axis + 1 :])


def concat(tensors, axis: int = 0) -> Tensor:
    return Concat(axis)(*tensors)


def stack(tensors, axis: int = 0) -> Tensor:
    return concat([unsqueeze(t, axis) for t in tensors], axis)


def split(x, sections, axis: int = -1) -> list[Tensor]:
    """Split into ``sections`` equal parts (an int) or parts of the given sizes (a list)."""
    axis = normalize_axis(axis, x.ndim, "split")
    n = x.shape[axis]
    if isinstance(sections, int) and not isinstance(sections, bool):
        if sections < 1:
            raise ValueError(f"split: sections must be >= 1, got {sections}")
        if n % sections:
            raise ValueError(f"split: axis of size {n} does not divide into {sections} equal parts")
        sizes = [n // sections] * sections
    else:
        sizes = list(sections)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in sizes):
            raise ValueError(f"split: sizes must be non-negative integers, got {sizes}")
        if sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} add up to {sum(sizes)}, not the axis size {n}")
    lead = (slice(None),) * axis
    parts, start = [], 0
    for size in sizes:
        parts.append(getitem(x, lead + (slice(start, start + size),)))
        start += size
    return parts


def getitem(x, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    elif isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return GetItem(index)(x)
