"""The experts: E feed-forward networks with their weights stacked into single tensors.

    w1 (E, d, f), w2 (E, f, d), and w3 (E, d, f) for SwiGLU; optional b1 (E, f), b2 (E, d)

    relu / gelu:  expert_e(x) = act(x w1[e] + b1[e]) w2[e] + b2[e]
    swiglu:       expert_e(x) = (silu(x w1[e]) * (x w3[e])) w2[e]

They run on the permuted buffer from ``dispatch.permute``:
- dropless: expert e's rows are the contiguous slice ``offsets[e]:offsets[e+1]``, and
  ``grouped_matmul`` does one matrix product per expert on its slice (a "grouped GEMM");
- capacity mode: the buffer is (E * C, d), viewed as (E, C, d), and every expert runs in
  one batched matmul (E, C, d) @ (E, d, f).

Fine-grained experts (DeepSeekMoE's segmentation into m smaller experts) are simply more
experts with a smaller d_hidden, made by the layer; shared experts are one more
``Experts`` (or a dense FeedForward) applied to every token.
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import functional as F
from tinymoe.backend import array_module, to_numpy
from tinymoe.moe.dispatch import Plan, dense_moe
from tinymoe.nn.layers import uniform
from tinymoe.nn.module import Module, Parameter
from tinymoe.tensor import Function
from tinymoe.validate import choice, integer

ACTIVATIONS = ("relu", "gelu", "swiglu")


class GroupedMatmul(Function):
    """out[rows of e] = xs[rows of e] @ w[e] for every expert e, rows given by ``offsets``.

    Backward, per expert: d xs[rows] = g[rows] w[e]^T and d w[e] = xs[rows]^T g[rows]
    (zero for an expert that got no rows). The loop is over experts, never tokens.
    """

    def __init__(self, offsets):
        self.offsets = to_numpy(offsets).tolist()  # slice bounds are host integers

    def forward(self, xs, w):
        xp = array_module(xs)
        if len(self.offsets) != w.shape[0] + 1 or self.offsets[0] != 0 or self.offsets[-1] != xs.shape[0]:
            raise ValueError(f"grouped_matmul: offsets must run from 0 to the {xs.shape[0]} rows in "
                             f"{w.shape[0] + 1} steps (one group per expert), got {self.offsets}")
        self.xs, self.w = xs, w
        out = xp.empty((xs.shape[0], w.shape[-1]), dtype=xp.result_type(xs, w))
        for e, (start, end) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            xp.matmul(xs[start:end], w[e], out=out[start:end])
        return out

    def backward(self, g):
        xp = array_module(g)
        g_xs = xp.empty(self.xs.shape, g.dtype) if self.inputs[0].requires_grad else None
        g_w = xp.zeros(self.w.shape, g.dtype)
        for e, (start, end) in enumerate(zip(self.offsets[:-1], self.offsets[1:], strict=True)):
            if g_xs is not None:
                xp.matmul(g[start:end], self.w[e].T, out=g_xs[start:end])
            xp.matmul(self.xs[start:end].T, g[start:end], out=g_w[e])
        return g_xs, g_w


def grouped_matmul(xs, w, offsets):
    """Per-expert matmul on contiguous row groups: (R, d_in) x (E, d_in, d_out) -> (R, d_out)."""
    return GroupedMatmul(offsets)(xs, w)


class Experts(Module):
    """E stacked feed-forward experts. Init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as nn.Linear."""

    def __init__(self, n_experts: int, d_model: int, d_hidden: int, activation: str = "swiglu",
                 bias: bool = False, dtype=np.float32):
        owner = "Experts"
        n_experts, d_model = integer(owner, "n_experts", n_experts, 1), integer(owner, "d_model", d_model, 1)
        d_hidden = integer(owner, "d_hidden", d_hidden, 1)
        activation = choice(owner, "activation", activation, ACTIVATIONS)
        if bias and activation == "swiglu":
            raise ValueError("Experts: bias must be False for SwiGLU experts (bias=True needs relu or gelu), got True")
        self.n_experts, self.d_model, self.d_hidden, self.activation = n_experts, d_model, d_hidden, activation
        self.w1 = uniform((n_experts, d_model, d_hidden), 1 / math.sqrt(d_model), dtype)
        if activation == "swiglu":
            self.w3 = uniform((n_experts, d_model, d_hidden), 1 / math.sqrt(d_model), dtype)
        self.w2 = uniform((n_experts, d_hidden, d_model), 1 / math.sqrt(d_hidden), dtype)
        if bias:
            self.b1 = Parameter(np.zeros((n_experts, d_hidden), dtype))
            self.b2 = Parameter(np.zeros((n_experts, d_model), dtype))

    def _ffn(self, x, matmul, w1, w2, w3, b1, b2):
        """The FFN on whatever layout ``matmul`` understands; biases broadcast per expert."""
        if self.activation == "swiglu":
            return matmul(F.silu(matmul(x, w1)) * matmul(x, w3), w2)
        act = F.relu if self.activation == "relu" else F.gelu
        h = matmul(x, w1)
        h = act(h + b1 if b1 is not None else h)
        out = matmul(h, w2)
        return out + b2 if b2 is not None else out

    def forward(self, xs, plan: Plan):
        """Run every expert on its rows of the permuted buffer ``xs`` (rows, d) -> (rows, d)."""
        w3 = getattr(self, "w3", None)
        b1, b2 = getattr(self, "b1", None), getattr(self, "b2", None)
        if plan.capacity is None:  # contiguous slices: one matmul per expert
            if b1 is not None:  # every row adds its own expert's biases
                xp = array_module(plan.counts)
                row_expert = xp.repeat(xp.arange(plan.n_experts), plan.counts)
                b1, b2 = F.take(b1, row_expert, axis=0), F.take(b2, row_expert, axis=0)
            return self._ffn(xs, lambda x, w: grouped_matmul(x, w, plan.offsets), self.w1, self.w2, w3, b1, b2)
        # padded (E*C, d) buffer viewed as (E, C, d): all experts in one batched matmul
        e, c = plan.n_experts, plan.capacity
        b1e = F.unsqueeze(b1, 1) if b1 is not None else None
        b2e = F.unsqueeze(b2, 1) if b2 is not None else None
        out = self._ffn(F.reshape(xs, (e, c, -1)), F.matmul, self.w1, self.w2, w3, b1e, b2e)
        return F.reshape(out, (e * c, -1))

    def expert(self, e: int, x):
        """Expert e alone on rows x (n, d): the per-expert function of the dense oracle."""
        w3 = self.w3[e] if self.activation == "swiglu" else None
        b1 = self.b1[e] if hasattr(self, "b1") else None
        b2 = self.b2[e] if hasattr(self, "b2") else None
        return self._ffn(x, F.matmul, self.w1[e], self.w2[e], w3, b1, b2)

    def dense(self, x, expert_index, weight, dropped=None):
        """The naive per-expert loop over all tokens (the oracle; see dispatch.dense_moe)."""
        return dense_moe(x, expert_index, weight, self.expert, self.n_experts, dropped)

    def extra_repr(self):
        return f"{self.n_experts} x ({self.d_model} -> {self.d_hidden} -> {self.d_model}), {self.activation!r}"
