"""A decoder-only transformer language model with MoE layers in every n-th block.

    ids -> token + position embeddings -> blocks (pre-norm, causal attention, FFN) -> norm -> logits

``moe`` is a function that builds one MoE layer (e.g. ``lambda: TopKMoE(64, 128, 8, 2)``);
blocks whose 1-based number is a multiple of ``moe_every`` get one, the others a dense
``FeedForward`` (GLaM, Du et al. 2021, puts MoE in every other layer: moe_every=2). With
``moe=None`` the model is dense. The auxiliary losses of the MoE layers are averaged over
layers (DESIGN section 4) and returned beside the logits.
"""

from __future__ import annotations

from tinymoe import backend, nn
from tinymoe import functional as F
from tinymoe.moe.layers import mean_aux_over_layers
from tinymoe.tensor import Tensor


def token_ids(ids, device: str):
    """Integer ids as an array on the model's device (a Tensor, list or array is accepted)."""
    ids = ids.data if isinstance(ids, Tensor) else ids
    ids = backend.to_device(backend.array_module(ids).asarray(ids), device)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"token ids must be integers, got dtype {ids.dtype}")
    return ids


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, context: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 4,
                 d_hidden: int | None = None, moe=None, moe_every: int = 2, activation: str = "gelu",
                 dropout: float = 0.0, norm: str = "layernorm"):
        if moe_every < 1:
            raise ValueError(f"moe_every must be >= 1, got {moe_every}")
        self.vocab_size, self.context = vocab_size, context
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(context, d_model)
        d_hidden = d_hidden or 4 * d_model
        blocks = []
        for i in range(1, n_layers + 1):
            use_moe = moe is not None and i % moe_every == 0
            ffn = moe() if use_moe else nn.FeedForward(d_model, d_hidden, activation)
            blocks.append(nn.TransformerBlock(d_model, n_heads, ffn, norm, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(d_model) if norm == "layernorm" else nn.RMSNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def moe_layers(self) -> list:
        """The blocks' MoE layers (those with a ``last_routing``), in depth order."""
        return [b.ffn for b in self.blocks if hasattr(b.ffn, "last_routing")]

    def forward(self, ids):
        """ids (B, T) int -> (logits (B, T, V), aux: each loss averaged over MoE layers)."""
        ids = token_ids(ids, self.device)
        if ids.ndim != 2:
            raise ValueError(f"TransformerLM: ids must be (batch, time), got shape {ids.shape}")
        if ids.shape[1] > self.context:
            raise ValueError(
                f"TransformerLM: sequence length {ids.shape[1]} is longer than the model's context {self.context}"
            )
        xp = backend.array_module(ids)
        x = self.tokens(ids) + self.positions(xp.arange(ids.shape[1]))
        aux_per_layer = []
        for block in self.blocks:
            x, aux = block(x)
            if aux:
                aux_per_layer.append(aux)
        return self.head(self.norm(x)), mean_aux_over_layers(aux_per_layer)

    def loss(self, ids, targets):
        """(cross-entropy, aux dict): the task loss and the weighted auxiliary losses."""
        logits, aux = self(ids)
        return F.cross_entropy(logits, targets), aux
