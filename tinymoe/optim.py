"""Optimisers, gradient clipping and the learning-rate schedule.

Each optimiser updates ``p.data`` in place from ``p.grad`` (no graph is recorded), and
keeps its per-parameter state (momentum, Adam's moments, the number of updates) in lists
parallel to the parameters, so ``state_dict()`` can save it for an exact resume.

As in ``torch.optim``, a parameter whose ``.grad`` is None is skipped on that step: its
value and its state stay as they are, and its step count does not advance. Adam's bias
correction uses that per-parameter count, so a parameter that gets a gradient only now
and then (an expert no token chose) still has its first update corrected as a first one.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import backend, validate


class Optimizer:
    def __init__(self, params, lr: float):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        self.lr = validate.real(type(self).__name__, "lr", lr, 0, None, low_open=True)
        self.steps = [0] * len(self.params)  # per parameter: how many updates it has had

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is not None:
                self.steps[i] += 1
                self.update(i, p)

    def update(self, i: int, p) -> None:
        raise NotImplementedError

    def _zeros_like_params(self):
        return [backend.array_module(p.data).zeros_like(p.data) for p in self.params]

    # state for exact resume: the lr, the step counts and every per-parameter buffer
    _buffers: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        state = {"lr": self.lr, "steps": np.array(self.steps, np.int64)}
        for name in self._buffers:
            for i, array in enumerate(getattr(self, name)):
                state[f"{name}.{i}"] = backend.to_numpy(array).copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (or ``tm.load`` read back), bit for bit.

        Everything is checked before anything changes: the keys, and each buffer's shape
        and dtype, must be those of these parameters ("saved for another model?"), the lr
        a finite number >= 0 and the step counts integers >= 0. Nothing is cast.
        """
        owner = f"{type(self).__name__}.load_state_dict"
        expected = {"lr", "steps"} | {f"{name}.{i}" for name in self._buffers for i in range(len(self.params))}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"{owner}: missing keys {missing}, unexpected keys {unexpected}: saved for another model?")
        lr = state["lr"]
        lr = validate.real(owner, "lr", lr.item() if isinstance(lr, np.ndarray) and lr.ndim == 0 else lr, 0, None)
        steps = state["steps"]
        if not (isinstance(steps, np.ndarray) and steps.dtype.kind in "iu" and steps.shape == (len(self.params),)
                and (steps >= 0).all()):
            raise ValueError(f"{owner}: steps must be an integer array of shape ({len(self.params)},) with every "
                             f"count >= 0, got {steps!r}")
        for name in self._buffers:
            for i, p in enumerate(self.params):
                saved = state[f"{name}.{i}"]
                if not isinstance(saved, np.ndarray) or saved.shape != p.shape or saved.dtype != p.dtype:
                    found = f"{saved.dtype} {saved.shape}" if isinstance(saved, np.ndarray) else type(saved).__name__
                    raise ValueError(f"{owner}: {name}.{i} must be a {p.dtype} array of shape {p.shape}, got "
                                     f"{found}: saved for another model?")
        self.lr, self.steps = lr, [int(s) for s in steps]
        for name in self._buffers:
            arrays = getattr(self, name)
            for i, p in enumerate(self.params):
                arrays[i] = backend.array_module(p.data).array(state[f"{name}.{i}"])


class SGD(Optimizer):
    """v <- momentum v + g (+ weight_decay p);  p <- p - lr v."""

    _buffers = ("velocity",)

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, lr)
        # momentum 1 would never forget a gradient: v grows as the sum of all of them
        self.momentum = validate.real("SGD", "momentum", momentum, 0, 1, high_open=True)
        self.weight_decay = validate.real("SGD", "weight_decay", weight_decay, 0)
        self.velocity = self._zeros_like_params()

    def update(self, i, p):
        g = p.grad + self.weight_decay * p.data if self.weight_decay else p.grad
        if self.momentum:
            self.velocity[i] = self.momentum * self.velocity[i] + g
            g = self.velocity[i]
        p.data -= self.lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) with bias correction, t counted per parameter:

        m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

    ``weight_decay`` here is L2 regularisation (added to g); AdamW decouples it.
    """

    _buffers = ("m", "v")
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        owner = type(self).__name__
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise validate.ArgumentTypeError(f"{owner}: betas must be a pair (beta1, beta2), each in [0, 1), "
                                             f"got {betas!r}")
        # a beta of 1 would make the bias correction 1 - beta^t zero: a division by zero
        self.betas = tuple(validate.real(owner, f"betas[{j}]", b, 0, 1, high_open=True) for j, b in enumerate(betas))
        self.eps = validate.real(owner, "eps", eps, 0, None, low_open=True)  # 0 would give 0 / 0 for a zero gradient
        self.weight_decay = validate.real(owner, "weight_decay", weight_decay, 0)
        self.m, self.v = self._zeros_like_params(), self._zeros_like_params()

    def update(self, i, p):
        b1, b2 = self.betas
        t = self.steps[i]
        g = p.grad
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * p.data
        self.m[i] = b1 * self.m[i] + (1 - b1) * g
        self.v[i] = b2 * self.v[i] + (1 - b2) * (g * g)
        m_hat = self.m[i] / (1 - b1**t)
        v_hat = self.v[i] / (1 - b2**t)
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

    Returns the norm before clipping. A NaN or infinite norm means a gradient is not
    finite: the gradients are then left as they are (scaling by max_norm / inf would turn
    every finite gradient into 0 and every infinite one into NaN, hiding where it came
    from), and the caller must act on the returned norm; the training loop stops.
    """
    max_norm = validate.real("clip_grad_norm", "max_norm", max_norm, 0, None, low_open=True)
    params = list(params)  # iterated twice below: a generator would be empty the second time
    grads = [p.grad for p in params if p.grad is not None]
    total = math.sqrt(sum(float((g.astype("float64") ** 2).sum()) for g in grads))
    if math.isfinite(total) and total > max_norm:
        scale = max_norm / (total + 1e-6)
        for p in params:
            if p.grad is not None:
                p.grad = p.grad * p.grad.dtype.type(scale)  # a new array: grads may be shared
    return total


def warmup_cosine(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``max_lr`` over ``warmup_steps``, then a cosine decay to
    ``min_lr`` at ``total_steps`` (and ``min_lr`` after it). Steps count from 0."""
    owner = "warmup_cosine"
    validate.integer(owner, "step", step, 0)
    max_lr = validate.real(owner, "max_lr", max_lr, 0, None, low_open=True)
    validate.integer(owner, "warmup_steps", warmup_steps, 0)
    validate.integer(owner, "total_steps", total_steps, 0)
    min_lr = validate.real(owner, "min_lr", min_lr, 0, max_lr)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))
