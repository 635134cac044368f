"""The position-wise feed-forward network: the dense layer that an MoE layer replaces.

    relu / gelu:  FFN(x) = act(x W1 + b1) W2 + b2            (Vaswani et al. 2017)
    swiglu:       FFN(x) = (silu(x W1) * (x W3)) W2          (Shazeer 2020, used by Mixtral)

SwiGLU has a third matrix, so models usually shrink d_hidden by 2/3 to keep the
parameter count of a relu FFN with the same d_hidden.
"""

from __future__ import annotations

import numpy as np

from tinymoe import functional as F
from tinymoe.nn.layers import Linear
from tinymoe.nn.module import Module

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}
FFN_KINDS = ("relu", "gelu", "swiglu")


class FeedForward(Module):
    def __init__(self, d_model: int, d_hidden: int, activation: str = "gelu", bias: bool = True, dtype=np.float32):
        if activation not in FFN_KINDS:
            raise ValueError(f"FeedForward: activation must be one of {FFN_KINDS}, got {activation!r}")
        self.activation = activation
        gated = activation == "swiglu"
        self.w1 = Linear(d_model, d_hidden, bias=bias and not gated, dtype=dtype)
        if gated:  # the gated variant has no biases, as in PaLM and Mixtral
            self.w3 = Linear(d_model, d_hidden, bias=False, dtype=dtype)
        self.w2 = Linear(d_hidden, d_model, bias=bias and not gated, dtype=dtype)

    def forward(self, x):
        if self.activation == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(ACTIVATIONS[self.activation](self.w1(x)))

    def extra_repr(self):
        return f"activation={self.activation!r}"
