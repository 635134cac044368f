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
from tinymoe.nn.checks import probability, token_ids
from tinymoe.validate import ArgumentTypeError, integer


def check_builder(owner: str, moe) -> None:
    """``moe`` must be a function that builds a layer (each block needs its own), not a layer."""
    if isinstance(moe, nn.Module) or not callable(moe):
        raise ArgumentTypeError(
            f"{owner}: moe must be a function that builds an MoE layer, e.g. lambda: TopKMoE(64, 128, 8, 2), "
            f"got {type(moe).__name__}"
        )


class TransformerLM(nn.Module):
    def __init__(self, vocab_size: int, context: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 4,
                 d_hidden: int | None = None, moe=None, moe_every: int = 2, activation: str = "gelu",
                 dropout: float = 0.0, norm: str = "layernorm"):
        owner = "TransformerLM"
        # checked here, by these names: the layers below would call them n, d or p (Embedding,
        # Dropout); n_heads, activation and norm are checked by the blocks under their own names
        vocab_size, context = integer(owner, "vocab_size", vocab_size, 1), integer(owner, "context", context, 1)
        d_model, n_layers = integer(owner, "d_model", d_model, 1), integer(owner, "n_layers", n_layers, 1)
        d_hidden = 4 * d_model if d_hidden is None else integer(owner, "d_hidden", d_hidden, 1)
        moe_every, dropout = integer(owner, "moe_every", moe_every, 1), probability(owner, "dropout", dropout)
        if moe is not None:
            check_builder(owner, moe)
        self.vocab_size, self.context = vocab_size, context
        self.tokens = nn.Embedding(vocab_size, d_model)
        self.positions = nn.Embedding(context, d_model)
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
        ids = token_ids("TransformerLM", ids, self.device)
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
