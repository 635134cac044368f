"""The autograd engine: ``Tensor``, ``Function`` and ``backward``.

A ``Tensor`` wraps an array (NumPy or CuPy) and remembers the ``Function`` that made it.
A ``Function`` has a ``forward`` on raw arrays and a ``backward`` that turns the gradient
of its output into gradients of its inputs (the chain rule, one op at a time).
``backward()`` visits the graph in reverse topological order, so every node's gradient is
complete (all its uses summed) before it is passed on: that is what makes re-used
intermediates ("diamond" graphs) correct.

Conventions, as in PyTorch:
- gradients accumulate into ``.grad`` of leaf tensors (``requires_grad=True`` and not
  produced by an op) until you reset them (``module.zero_grad()`` or ``x.grad = None``);
- inside ``with no_grad():`` ops record nothing;
- a Python number combined with a tensor takes the tensor's dtype (float32 stays float32);
- the graph owns what it saved: editing ``x.data`` in place between forward and backward
  (``x.data[:] = 0``, ``w.data *= 100``) changes ``x`` but not the gradient of the forward
  that already ran (see ``Tensor.data``).
"""

from __future__ import annotations

import contextlib

import numpy as np

from tinymoe import backend

_grad_enabled = True


@contextlib.contextmanager
def no_grad():
    """Run ops without recording the graph (evaluation, optimiser updates)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled() -> bool:
    return _grad_enabled


FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class Tensor:
    """An array plus what autograd needs: ``grad``, ``requires_grad`` and its creator."""

    __array_priority__ = 100  # so ``ndarray * Tensor`` calls Tensor.__rmul__

    def __init__(self, data, requires_grad: bool = False):
        if isinstance(data, np.generic):  # NumPy reductions return scalars: keep a 0-d array
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self.creator: Function | None = None  # the Function whose output this is
        self.retains_grad = False
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_(True)

    # -- the array, shared with the graph copy-on-write -----------------------------------
    @property
    def data(self):
        """The array. Read it, write it, assign it: the graph's saved copy stays intact.

        A recorded op keeps references to its input and output arrays for backward (Mul
        keeps both factors). Had ``x.data[:] = 0`` written into that array, backward would
        silently use the new values: a wrong gradient. So when a recorded op has saved this
        array (``_saved``), the first ``.data`` access hands the tensor a fresh copy and
        leaves the old array to the graph. The tensor changes; the gradient is still the
        one of the values forward used. Reading costs one copy per tensor per forward, and
        only for tensors whose ``.data`` is touched (the engine itself reads ``_data``).
        An alias taken *before* the forward (``a = x.data; y = x * 2; a[:] = 0``) is the
        graph's array too: such a write is not caught.
        """
        if self._saved:
            self._data, self._saved = self._data.copy(), False
        return self._data

    @data.setter
    def data(self, value):
        self._data, self._saved = value, False

    # -- what the tensor is ------------------------------------------------------------
    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    device = property(lambda self: backend.device_of(self._data))
    is_leaf = property(lambda self: self.creator is None)

    def __len__(self):
        return len(self._data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({self._data!r}, device={self.device!r}{grad})"

    def requires_grad_(self, flag: bool = True) -> Tensor:
        if flag and self.dtype.type not in FLOAT_DTYPES:
            raise TypeError(
                f"requires_grad needs a float tensor (float16/32/64), got dtype {self.dtype}"
            )
        self.requires_grad = flag
        return self

    def retain_grad(self) -> Tensor:
        """Keep ``.grad`` on this non-leaf tensor too (useful for looking inside a graph)."""
        self.retains_grad = True
        return self

    def numpy(self) -> np.ndarray:
        return backend.to_numpy(self.data)

    def item(self) -> float:
        return self._data.item()

    def to(self, device: str) -> Tensor:
        """A copy on ``device`` (the same tensor if it is already there); a new leaf."""
        if device == self.device:
            return self
        return Tensor(backend.to_device(self._data, device), requires_grad=self.requires_grad)

    def detach(self) -> Tensor:
        """The same data, cut from the graph: no gradient flows back through it."""
        return Tensor(self.data)

    def astype(self, dtype) -> Tensor:
        from tinymoe import ops

        return ops.astype(self, dtype)

    # -- backward ----------------------------------------------------------------------
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into ``leaf.grad`` for every leaf that requires grad.

        ``grad`` is the gradient of some final scalar with respect to ``self``; it may be
        left out only when ``self`` holds a single number (then it is 1).
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad: no input of the "
                "computation had requires_grad=True (or it ran inside no_grad())"
            )
        xp = backend.array_module(self._data)
        if grad is None:
            if self.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, but this tensor has shape "
                    f"{self.shape}; reduce it first (e.g. loss.sum()) or pass grad of that shape"
                )
            grad = xp.ones_like(self._data)
        grad = grad._data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}")

        grads = {id(self): grad}  # gradient of each visited tensor, summed over its uses
        for t in reversed(_topological_order(self)):
            g = grads.pop(id(t))
            if t.creator is None or t.retains_grad:  # leaves (and retained ones) keep it
                # copy on first write: g may be the very array another tensor also received
                t.grad = g.copy() if t.grad is None else t.grad + g
            if t.creator is None:
                continue
            fn = t.creator
            for x, gx in zip(fn.inputs, _input_gradients(fn, g), strict=True):  # one per input
                if gx is None or not x.requires_grad:
                    continue
                gx = _sum_to_shape(gx, x, fn).astype(x.dtype, copy=False)
                grads[id(x)] = grads[id(x)] + gx if id(x) in grads else gx

    # -- operators: each is one op from tinymoe.ops -----------------------------------
    def __add__(self, other):
        return ops.add(self, other)

    def __radd__(self, other):
        return ops.add(other, self)

    def __sub__(self, other):
        return ops.sub(self, other)

    def __rsub__(self, other):
        return ops.sub(other, self)

    def __mul__(self, other):
        return ops.mul(self, other)

    def __rmul__(self, other):
        return ops.mul(other, self)

    def __truediv__(self, other):
        return ops.div(self, other)

    def __rtruediv__(self, other):
        return ops.div(other, self)

    def __neg__(self):
        return ops.neg(self)

    def __pow__(self, exponent):
        return ops.pow(self, exponent)

    def __rpow__(self, base):
        return ops.pow(base, self)

    def __matmul__(self, other):
        return ops.matmul(self, other)

    def __rmatmul__(self, other):
        return ops.matmul(other, self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    # comparisons give plain boolean arrays: they have no gradient
    def __lt__(self, other):
        return self._data < _raw(other)

    def __le__(self, other):
        return self._data <= _raw(other)

    def __gt__(self, other):
        return self._data > _raw(other)

    def __ge__(self, other):
        return self._data >= _raw(other)

    __hash__ = object.__hash__  # tensors are graph nodes: identity, not value

    # -- the most used ops, as methods ---------------------------------------------------
    T = property(lambda self: ops.transpose(self))

    def sum(self, axis=None, keepdims=False):
        return ops.sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.max(self, axis, keepdims)

    def reshape(self, *shape):
        return ops.reshape(self, shape[0] if len(shape) == 1 else shape)

    def transpose(self, *axes):
        """``x.transpose(1, 0)`` or ``x.transpose((1, 0))``, as in NumPy; no axes reverses them."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return ops.transpose(self, axes or None)

    def exp(self):
        return ops.exp(self)

    def log(self):
        return ops.log(self)


def _raw(x):
    return x._data if isinstance(x, Tensor) else x


def _topological_order(root: Tensor) -> list[Tensor]:
    """Tensors that ``root`` depends on (through ops that need grad), inputs first.

    An iterative depth-first search with an explicit stack, so a 10 000-op chain does not
    hit Python's recursion limit.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        t, expanded = stack.pop()
        if expanded:  # all of t's inputs are already in `order`
            order.append(t)
            continue
        if id(t) in visited:  # pushed by two users; the later push already expanded it
            continue
        # Mark on expansion, not on push: a tensor pushed by one user may be reached again
        # through another user, and must then be placed before that one in `order` too.
        visited.add(id(t))
        stack.append((t, True))
        if t.creator is not None:
            for x in t.creator.inputs:
                if x.requires_grad and id(x) not in visited:
                    stack.append((x, False))
    return order


def _input_gradients(fn: Function, g) -> tuple:
    """``fn.backward(g)``, checked: one gradient (an array or None) per input.

    A hand-written ``Function`` (lesson 00 teaches writing one) that returns too few
    gradients, or a bare array where a tuple was meant, gets an error naming the op here
    instead of a wrong gradient later. As in PyTorch, a one-input op may return the
    gradient alone rather than a 1-tuple.
    """
    grads = fn.backward(g)
    name, n = type(fn).__name__, len(fn.inputs)
    if not isinstance(grads, (tuple, list)):
        if n == 1 and grads is not None and hasattr(grads, "shape"):
            grads = (grads,)
        else:
            raise TypeError(
                f"{name}.backward must return a tuple with one gradient (or None) per input, "
                f"{n} in all; got {type(grads).__name__}"
            )
    if len(grads) != n:
        raise ValueError(
            f"{name}.backward returned {len(grads)} gradient(s) for {n} input(s); return one "
            "per input of forward, in order (None for an input that has no gradient)"
        )
    for i, gx in enumerate(grads):
        if gx is not None and not hasattr(gx, "shape"):
            raise TypeError(f"{name}.backward: the gradient of input {i} is a {type(gx).__name__}, not an array")
    return grads


def _sum_to_shape(g, x: Tensor, fn: Function):
    """Undo broadcasting: sum ``g`` over the axes that broadcasting added or stretched.

    A gradient may be larger than its input only along the axes where forward broadcast
    that input to the output (``a + b`` with ``b`` of shape (d,) and the output (N, d)).
    Any other shape is a bug in the op's backward, and summing it away would hide the bug:
    an extra leading axis or a wrong size is an error naming the op and the input.
    """
    shape = x.shape
    if g.shape == shape:
        return g
    out = fn.output_shape
    lead = g.ndim - len(shape)
    # align the axes from the right; None marks an axis that broadcasting put in front of x's
    padded = (None,) * lead + tuple(shape)
    fits = len(shape) <= g.ndim <= len(out) and all(
        m == n or (n in (None, 1) and m == o) for n, m, o in zip(padded, g.shape, out[len(out) - g.ndim :], strict=True)
    )
    if not fits:
        index = next(i for i, t in enumerate(fn.inputs) if t is x)
        raise ValueError(
            f"{type(fn).__name__}.backward returned a gradient of shape {tuple(g.shape)} for input "
            f"{index} of shape {tuple(shape)} (output shape {tuple(out)}); it must have the input's "
            "shape, or the output's along axes where forward broadcast the input"
        )
    stretched = tuple(i + lead for i, n in enumerate(shape) if n == 1 and g.shape[i + lead] != 1)
    g = g.sum(axis=tuple(range(lead)) + stretched, keepdims=True)
    return g.reshape(shape)


class Function:
    """One differentiable op: ``forward`` on arrays, ``backward`` on gradients.

    Subclasses implement ``forward(self, *arrays)`` returning one array and
    ``backward(self, grad)`` returning one gradient per input (``None`` where there is
    none). Anything ``backward`` needs, ``forward`` keeps on ``self``. Non-tensor
    parameters (an axis, k, an index array) go to ``__init__``.
    """

    inputs: tuple[Tensor, ...] = ()

    def __call__(self, *inputs) -> Tensor:
        tensors = [x for x in inputs if isinstance(x, Tensor)]
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            raise RuntimeError(
                f"{type(self).__name__} got tensors on different devices ({', '.join(sorted(devices))}); "
                "move them to one device first with .to('cpu') or .to('cuda')"
            )
        like = tensors[0]._data if tensors else np.empty(0, np.float32)
        inputs = tuple(x if isinstance(x, Tensor) else _constant(x, like) for x in inputs)
        out = Tensor(self.forward(*(x._data for x in inputs)))
        if _grad_enabled and any(x.requires_grad for x in inputs):
            out.requires_grad = True
            out.creator = self
            self.inputs, self.output_shape = inputs, out.shape
            for t in (*inputs, out):  # backward may read these arrays: see Tensor.data
                t._saved = True
        return out

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad):
        raise NotImplementedError


def _constant(value, like) -> Tensor:
    """A number or array as a constant tensor on ``like``'s device (numbers take its dtype)."""
    xp = backend.array_module(like)
    if isinstance(value, (bool, int, float)) and like.dtype.type in FLOAT_DTYPES:
        return Tensor(xp.asarray(value, dtype=like.dtype))
    if backend.device_of(value) != backend.device_of(like):
        raise RuntimeError(
            f"an array on {backend.device_of(value)} was combined with a tensor on "
            f"{backend.device_of(like)}; move one of them first"
        )
    return Tensor(xp.asarray(value))


def tensor(data, requires_grad: bool = False, device: str = "cpu", dtype=None) -> Tensor:
    """Make a leaf tensor.

    Float16/32/64 arrays keep their dtype; Python numbers and lists become float32 (the
    usual deep-learning default); integer and boolean arrays stay as they are.
    """
    xp = backend.xp_of(device)
    if isinstance(data, Tensor):
        data = data._data
    if dtype is None and not hasattr(data, "dtype"):
        dtype = np.float32
    array = backend.to_device(data, "cpu") if device == "cpu" else data
    # a copy, like torch.tensor: optimiser updates must never write into the caller's array
    return Tensor(xp.array(array, dtype=dtype), requires_grad=requires_grad)


from tinymoe import ops  # noqa: E402  (ops needs Tensor and Function defined above)
