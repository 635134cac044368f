"""``Module`` and ``Parameter``: how layers hold their weights.

A module's parameters are simply its attributes that are ``Parameter``s, and its
children are its attributes that are ``Module``s: nothing needs registering, and
``named_parameters()`` walks the attributes in the order they were set, giving dotted
names like ``"blocks.0.attn.qkv.weight"``. Buffers (state that is saved but not trained,
such as DeepSeek-V3's routing bias) are tensors named with ``register_buffer``.
"""

from __future__ import annotations

import numpy as np

from tinymoe import backend
from tinymoe.tensor import Tensor


class Parameter(Tensor):
    """A tensor that a module trains: a leaf with ``requires_grad=True``."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True)


class Module:
    """Base class of every layer and model. Subclasses set attributes and define ``forward``."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    # -- walking the tree ----------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def modules(self):
        """This module and all its descendants, depth first."""
        yield self
        for _, child in self.named_children():
            yield from child.modules()

    def named_parameters(self, prefix: str = ""):
        """(dotted name, parameter) pairs; a parameter shared by two modules (tied weights)
        is listed once, under its first name, so an optimiser updates it once."""
        seen = set()
        for name, p in self._all_parameters(prefix):
            if id(p) not in seen:
                seen.add(id(p))
                yield name, p

    def _all_parameters(self, prefix: str):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._all_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def register_buffer(self, name: str, value) -> None:
        """Keep ``value`` (an array) as ``self.<name>``: saved in the state dict, not trained."""
        if "_buffer_names" not in vars(self):
            self._buffer_names = []
        if name not in self._buffer_names:
            self._buffer_names.append(name)
        setattr(self, name, value if isinstance(value, Tensor) else Tensor(value))

    def named_buffers(self, prefix: str = ""):
        for name in vars(self).get("_buffer_names", []):
            yield prefix + name, getattr(self, name)
        for child_name, child in self.named_children():
            yield from child.named_buffers(f"{prefix}{child_name}.")

    def _named_tensors(self):
        yield from self.named_parameters()
        yield from self.named_buffers()

    # -- modes and devices ---------------------------------------------------------------
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to(self, device: str) -> Module:
        """Move every parameter and buffer (and gradient) to ``device``, in place."""
        backend.check_device(device)
        for _, t in self._named_tensors():
            t.data = backend.to_device(t.data, device)
            if t.grad is not None:
                t.grad = backend.to_device(t.grad, device)
        return self

    def astype(self, dtype) -> Module:
        """Convert every float parameter and buffer to ``dtype`` (e.g. float64 for gradchecks)."""
        for _, t in self._named_tensors():
            if t.dtype.kind == "f":
                t.data = t.data.astype(dtype)
                t.grad = None
        return self

    @property
    def device(self) -> str:
        tensors = [t for _, t in self._named_tensors()]
        return tensors[0].device if tensors else "cpu"

    # -- saving and loading ------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> NumPy copy of every parameter and buffer (what ``tm.save`` writes)."""
        return {name: backend.to_numpy(t.data).copy() for name, t in self._named_tensors()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters and buffers of the same names, bit for bit.

        Strict (the default): the names must match exactly. In both modes every shape must
        agree and every value must be numbers (a string or an object array is no weight).
        Otherwise a ValueError lists every missing, unexpected, mis-shaped and non-numeric
        entry. As in PyTorch, numbers are cast to the parameter's dtype.
        """
        own = dict(self._named_tensors())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        wrong_shape = [
            f"{k}: checkpoint {tuple(np.shape(state[k]))}, model {own[k].shape}"
            for k in own
            if k in state and tuple(np.shape(state[k])) != own[k].shape
        ]
        not_numbers = [
            f"{k}: dtype {_dtype(state[k])}" for k in own if k in state and _dtype(state[k]).kind not in "fiub"
        ]
        problems = []
        if not_numbers:
            problems.append("not numbers: " + "; ".join(not_numbers))
        if strict and missing:
            problems.append(f"missing keys: {missing}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {unexpected}")
        if wrong_shape:
            problems.append("shape mismatch: " + "; ".join(wrong_shape))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed: " + " | ".join(problems))
        for name, t in own.items():
            if name in state:
                xp = backend.array_module(t.data)
                t.data = xp.array(state[name], dtype=t.dtype)

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self.named_children())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self) -> str:
        return ""


def _dtype(value) -> np.dtype:
    """The dtype of an array (NumPy or CuPy) or of what NumPy makes of a list or number."""
    return value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype


class ModuleList(Module):
    """A list of modules whose parameters are named by position: ``"0.weight"``, ``"1.weight"``..."""

    def __init__(self, modules=()):
        self._length = 0
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> None:
        setattr(self, str(self._length), module)
        self._length += 1

    def __getitem__(self, i: int) -> Module:
        if not -self._length <= i < self._length:
            raise IndexError(f"index {i} out of range for ModuleList of length {self._length}")
        return getattr(self, str(i % self._length))

    def __len__(self):
        return self._length

    def __iter__(self):
        return (getattr(self, str(i)) for i in range(self._length))


class Sequential(ModuleList):
    """Apply modules one after another."""

    def __init__(self, *modules):
        super().__init__(modules)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x
