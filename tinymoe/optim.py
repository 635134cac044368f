"""Optimisers, gradient clipping and the learning-rate schedule.

Each optimiser updates ``p.data`` in place from ``p.grad`` (no graph is recorded), and
keeps its per-parameter state (momentum, Adam's moments) in lists parallel to the
parameters, so ``state_dict()`` can save it for an exact resume.
"""

from __future__ import annotations

import math

from tinymoe import backend


class Optimizer:
    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if lr <= 0:
            raise ValueError(f"{type(self).__name__}: lr must be > 0, got {lr}")
        self.lr = lr
        self.step_count = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.step_count += 1
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.update(i, p)

    def update(self, i: int, p) -> None:
        raise NotImplementedError

    def _zeros_like_params(self):
        return [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    # state for exact resume: the step, the lr and every per-parameter buffer
    _buffers: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        state = {"step_count": self.step_count, "lr": self.lr}
        for name in self._buffers:
            for i, array in enumerate(getattr(self, name)):
                state[f"{name}.{i}"] = backend.to_numpy(array).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step_count, self.lr = int(state["step_count"]), float(state["lr"])
        for name in self._buffers:
            arrays = getattr(self, name)
            for i, p in enumerate(self.params):
                key = f"{name}.{i}"
                if key not in state or state[key].shape != p.shape:
                    raise ValueError(f"optimizer state has no {key} of shape {p.shape}: saved for another model?")
                arrays[i] = backend.array_module(p.data).array(state[key], dtype=arrays[i].dtype)


class SGD(Optimizer):
    """v <- momentum v + g (+ weight_decay p);  p <- p - lr v."""

    _buffers = ("velocity",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.velocity = self._zeros_like_params()

    def update(self, i, p):
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            self.velocity[i] = self.momentum * self.velocity[i] + g
            g = self.velocity[i]
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction:

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    ``weight_decay`` here is L2 regularisation (added to g); AdamW decouples it.
    """

    _buffers = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"{type(self).__name__}: betas must lie in [0, 1), got {betas}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m, self.v = self._zeros_like_params(), self._zeros_like_params()

    def update(self, i, p):
        b1, b2 = self.betas
        g = p.grad
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p.data
        self.m[i] = b1 * self.m[i] + (1 - b1) * g
        self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
        m_hat = self.m[i] / (1 - b1**self.step_count)
        v_hat = self.v[i] / (1 - b2**self.step_count)
        if self.weight_decay and self.decoupled:
            p.data -= self.lr * self.weight_decay * p.data
        p.data -= self.lr * m_hat / (backend.array_module(v_hat).sqrt(v_hat) + self.eps)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): p <- p - lr wd p, apart
    from the adaptive step, so decay does not get divided by sqrt(v)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping (``inf``/``nan`` tells the caller training diverged).
    """
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    params = list(params)  # iterated twice below: a generator would be empty the second time
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(scale)  # a new array: grads may be shared
    return total


def warmup_cosine(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``max_lr`` over ``warmup_steps``, then a cosine decay to
    ``min_lr`` at ``total_steps`` (and ``min_lr`` after it)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
