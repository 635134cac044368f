"""Causal multi-head self-attention (Vaswani et al. 2017), as in decoder-only LMs.

    Q, K, V = x W_q, x W_k, x W_v          split into h heads of size d/h
    A = softmax(Q K^T / sqrt(d/h) + M)     M = -inf above the diagonal: no peeking ahead
    y = concat_heads(A V) W_o
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import functional as F
from tinymoe.backend import xp_of
from tinymoe.nn.checks import as_input, divisor, probability
from tinymoe.nn.layers import Dropout, Linear
from tinymoe.nn.module import Module
from tinymoe.validate import integer


class CausalSelfAttention(Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0, dtype=np.float32):
        self.d_model = integer("CausalSelfAttention", "d_model", d_model, 1)
        self.n_heads = divisor("CausalSelfAttention", "n_heads", n_heads, "d_model", d_model)
        self.qkv = Linear(d_model, 3 * d_model, dtype=dtype)  # W_q, W_k, W_v side by side
        self.out = Linear(d_model, d_model, dtype=dtype)
        self.dropout = Dropout(probability("CausalSelfAttention", "dropout", dropout))

    def forward(self, x):
        """x (B, T, d) -> (B, T, d); position t attends to positions 0..t only."""
        x = as_input(self, x, "batch, time, d_model", self.d_model)
        batch, steps, d = x.shape
        head = d // self.n_heads

        def heads(t):  # (B, T, d) -> (B, h, T, d/h)
            return F.transpose(F.reshape(t, (batch, steps, self.n_heads, head)), (0, 2, 1, 3))

        q, k, v = (heads(t) for t in F.split(self.qkv(x), 3, axis=-1))
        scores = F.matmul(q, F.swapaxes(k, -1, -2)) * (1 / math.sqrt(head))
        xp = xp_of(x.device)
        causal = xp.tril(xp.ones((steps, steps), dtype=bool))
        scores = F.where(causal, scores, -np.inf)  # exp(-inf) = 0: future positions get no weight
        attention = self.dropout(F.softmax(scores, axis=-1))
        y = F.matmul(attention, v)  # (B, h, T, d/h)
        y = F.reshape(F.transpose(y, (0, 2, 1, 3)), (batch, steps, d))
        return self.out(y)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_heads={self.n_heads}"
