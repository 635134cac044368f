"""Index ops: pick elements by integer arrays (take, gather) or add into places
(scatter_add, index_add). Picking and adding are each other's backward: the gradient of a
gather is a scatter-add of the gradient, and the other way round.

Indices are plain integer arrays (not tensors): they have no gradient.
"""

from __future__ import annotations

from tinymoe.backend import add_at, array_module
from tinymoe.ops.axes import normalize_axis
from tinymoe.tensor import Function, Tensor


def _check_indices(name: str, index, size: int) -> None:
    if index.size and (index.min() < -size or index.max() >= size):
        raise IndexError(
            f"{name}: indices must lie in [0, {size}) (or [-{size}, 0) from the end), got "
            f"values from {int(index.min())} to {int(index.max())}"
        )


def _along(axis: int, index) -> tuple:
    """The index tuple that addresses ``index`` positions along ``axis``: (:, :, index)."""
    return (slice(None),) * axis + (index,)


class Take(Function):
    """``numpy.take(x, index, axis)``: whole slices along ``axis`` (embedding lookup is
    take along axis 0 of the table). Backward adds each gradient slice into its row."""

    def __init__(self, index, axis=0):
        self.index, self.axis = index, axis

    def forward(self, x):
        self.axis = normalize_axis(self.axis, x.ndim, "take")
        _check_indices("take", self.index, x.shape[self.axis])
        self.shape, self.dtype = x.shape, x.dtype
        return array_module(x).take(x, self.index, axis=self.axis)

    def backward(self, g):
        gx = array_module(g).zeros(self.shape, dtype=self.dtype)
        add_at(gx, _along(self.axis, self.index), g)
        return (gx,)


def _open_mesh(index, axis: int) -> tuple:
    """Index tuple for element-wise gather/scatter: ``index`` on ``axis``, ranges elsewhere."""
    xp = array_module(index)
    mesh = list(xp.indices(index.shape, sparse=True))
    mesh[axis] = index
    return tuple(mesh)


class Gather(Function):
    """``take_along_axis(x, index, axis)``: out[..., j, ...] = x[..., index[..., j, ...], ...].

    ``index`` has the same number of axes as ``x``; this is how an MoE picks each token's
    top-k router probabilities. Backward scatter-adds the gradient to the picked places.
    """

    def __init__(self, index, axis=-1):
        self.index, self.axis = index, axis

    def forward(self, x):
        self.axis = normalize_axis(self.axis, x.ndim, "gather")
        if self.index.ndim != x.ndim:
            raise ValueError(f"gather: index has {self.index.ndim} axes, x has {x.ndim}; they must match")
        _check_indices("gather", self.index, x.shape[self.axis])
        self.shape, self.dtype = x.shape, x.dtype
        return array_module(x).take_along_axis(x, self.index, axis=self.axis)

    def backward(self, g):
        # x and index broadcast against each other along the other axes, as in
        # take_along_axis: scatter into x's shape stretched like g's, and the engine sums
        # the stretched axes back to x's shape
        xp = array_module(g)
        a = self.axis
        gx = xp.zeros(g.shape[:a] + self.shape[a : a + 1] + g.shape[a + 1 :], dtype=self.dtype)
        add_at(gx, _open_mesh(xp.broadcast_to(self.index, g.shape), a), g)
        return (gx,)


class ScatterAdd(Function):
    """out = x, then out[..., index[..., j, ...], ...] += src[..., j, ...] (the inverse of gather).

    Backward: x gets the gradient unchanged; src gets it gathered from where it was added.
    """

    def __init__(self, index, axis=-1):
        self.index, self.axis = index, axis

    def forward(self, x, src):
        self.axis = normalize_axis(self.axis, x.ndim, "scatter_add")
        if self.index.shape != src.shape:
            raise ValueError(f"scatter_add: index shape {self.index.shape} must equal src shape {src.shape}")
        _check_indices("scatter_add", self.index, x.shape[self.axis])
        out = x.copy()
        add_at(out, _open_mesh(self.index, self.axis), src)
        return out

    def backward(self, g):
        # src[..., j, ...] went to the places _open_mesh names; index may be smaller than x
        # along the other axes, where take_along_axis would broadcast it instead
        return g, g[_open_mesh(self.index, self.axis)]


class IndexAdd(Function):
    """out = x, then out[index[i]] += src[i] along ``axis`` (whole slices, 1-D index)."""

    def __init__(self, index, axis=0):
        self.index, self.axis = index, axis

    def forward(self, x, src):
        self.axis = normalize_axis(self.axis, x.ndim, "index_add")
        _check_indices("index_add", self.index, x.shape[self.axis])
        expected = x.shape[: self.axis] + self.index.shape + x.shape[self.axis + 1 :]
        if src.shape != expected:  # add_at would broadcast it, and backward could not undo that
            raise ValueError(
                f"index_add: src has shape {tuple(src.shape)}, but it must be x's shape with the "
                f"index's length along axis {self.axis}: {tuple(expected)}"
            )
        out = x.copy()
        add_at(out, _along(self.axis, self.index), src)
        return out

    def backward(self, g):
        return g, array_module(g).take(g, self.index, axis=self.axis)


def _raw_index(index):
    return index.data if isinstance(index, Tensor) else index


def take(x, index, axis: int = 0) -> Tensor:
    return Take(_raw_index(index), axis)(x)


def gather(x, index, axis: int = -1) -> Tensor:
    return Gather(_raw_index(index), axis)(x)


def scatter_add(x, index, src, axis: int = -1) -> Tensor:
    return ScatterAdd(_raw_index(index), axis)(x, src)


def index_add(x, index, src, axis: int = 0) -> Tensor:
    """A new tensor: ``x`` with ``src``'s slices added at ``index`` along ``axis``."""
    return IndexAdd(_raw_index(index), axis)(x, src)


def embedding(weight, ids) -> Tensor:
    """Rows of the table ``weight`` (V, d) for integer ``ids`` of any shape -> (*ids.shape, d)."""
    return take(weight, ids, axis=0)
