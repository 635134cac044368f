"""The position-wise feed-forward network: the dense layer that an MoE layer replaces.

    relu / gelu:  FFN(x) = act(x W1 + b1) W2 + b2            (Vaswani et al. 2017)
    swiglu:       FFN(x) = (silu(x W1) * (x W3)) W2          (Shazeer 2020, used by Mixtral)

SwiGLU has a third matrix, so models usually shrink d_hidden by 2/3 to keep the
parameter count of a relu FFN with the same d_hidden.
"""

from __future__ import annotations

import numpy as np

from tinymoe import functional as F
from tinymoe.nn.checks import as_input
from tinymoe.nn.layers import Linear
from tinymoe.nn.module import Module
from tinymoe.validate import choice, integer

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}
FFN_KINDS = ("relu", "gelu", "swiglu")


class FeedForward(Module):
    def __init__(self, d_model: int, d_hidden: int, activation: str = "gelu", bias: bool = True, dtype=np.float32):
        # checked here, by these names: the Linear layers would call them d_in and d_out
        d_model = integer("FeedForward", "d_model", d_model, 1)
        d_hidden = integer("FeedForward", "d_hidden", d_hidden, 1)
        self.activation = choice("FeedForward", "activation", activation, FFN_KINDS)
        gated = activation == "swiglu"
        self.w1 = Linear(d_model, d_hidden, bias=bias and not gated, dtype=dtype)
        if gated:  # the gated variant has no biases, as in PaLM and Mixtral
            self.w3 = Linear(d_model, d_hidden, bias=False, dtype=dtype)
        self.w2 = Linear(d_hidden, d_model, bias=bias and not gated, dtype=dtype)

    def forward(self, x):
        x = as_input(self, x, "..., d_model", self.w1.d_in)
        if self.activation == "swiglu":
            return self.w2(F.silu(self.w1(x)) * self.w3(x))
        return self.w2(ACTIVATIONS[self.activation](self.w1(x)))

    def extra_repr(self):
        return f"activation={self.activation!r}"
