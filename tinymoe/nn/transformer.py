"""A pre-norm transformer block that takes any feed-forward module (Xiong et al. 2020):

    x = x + Attention(Norm(x))
    x = x + FFN(Norm(x))

The FFN may be a dense ``FeedForward`` or any MoE layer. MoE layers return ``(y, aux)``
(``aux``: their weighted auxiliary losses), dense ones just ``y``; the block always
returns ``(x, aux)`` so a model can collect the losses of every layer the same way.
The residual connection lives here, not in the MoE layer: a token an MoE drops passes
through unchanged.
"""

from __future__ import annotations

import numpy as np

from tinymoe.nn.attention import CausalSelfAttention
from tinymoe.nn.checks import as_input, probability
from tinymoe.nn.layers import Dropout, LayerNorm, RMSNorm
from tinymoe.nn.module import Module
from tinymoe.validate import ArgumentTypeError, choice, integer

NORMS = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


class TransformerBlock(Module):
    def __init__(
        self, d_model: int, n_heads: int, ffn: Module, norm: str = "layernorm", dropout: float = 0.0, dtype=np.float32
    ):
        # checked here, by these names: the norms would call d_model d, and Dropout dropout p
        d_model = integer("TransformerBlock", "d_model", d_model, 1)
        dropout = probability("TransformerBlock", "dropout", dropout)
        if not isinstance(ffn, Module):
            raise ArgumentTypeError(f"TransformerBlock: ffn must be a layer (a Module), got {type(ffn).__name__}")
        choice("TransformerBlock", "norm", norm, NORMS)
        self.norm1 = NORMS[norm](d_model, dtype=dtype)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout, dtype)
        self.norm2 = NORMS[norm](d_model, dtype=dtype)
        self.ffn = ffn
        self.dropout = Dropout(dropout)

    def forward(self, x):
        """x (B, T, d) -> (x, aux): the block's output and the FFN's auxiliary losses."""
        x = as_input(self, x, "batch, time, d_model", self.attn.d_model)
        x = x + self.dropout(self.attn(self.norm1(x)))
        out = self.ffn(self.norm2(x))
        y, aux = out if isinstance(out, tuple) else (out, {})
        return x + self.dropout(y), aux
