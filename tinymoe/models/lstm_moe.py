"""The LSTM-MoE language model of Shazeer et al. (2017), section 5.1:

    embedding -> LSTM -> MoE -> LSTM -> softmax

The MoE sits between two LSTM layers and is applied to every time step's output
independently (each (batch, time) position is one token for the router).
"""

from __future__ import annotations

from tinymoe import functional as F
from tinymoe import nn
from tinymoe.models.transformer import check_builder
from tinymoe.nn.checks import probability, token_ids
from tinymoe.validate import integer


class LSTMMoELM(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, moe, dropout: float = 0.0):
        """``moe``: a function building the MoE layer for width d_model (e.g. a NoisyTopKMoE)."""
        owner = "LSTMMoELM"
        # checked here, by these names: Embedding and Dropout would call them n, d and p
        vocab_size, d_model = integer(owner, "vocab_size", vocab_size, 1), integer(owner, "d_model", d_model, 1)
        dropout = probability(owner, "dropout", dropout)
        check_builder(owner, moe)
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, d_model)
        self.lstm1 = nn.LSTM(d_model, d_model)
        self.moe = moe()
        self.lstm2 = nn.LSTM(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, vocab_size)

    def moe_layers(self) -> list:
        return [self.moe]

    def forward(self, ids):
        """ids (B, T) -> (logits (B, T, V), aux of the MoE layer)."""
        ids = token_ids("LSTMMoELM", ids, self.device)
        if ids.ndim != 2:
            raise ValueError(f"LSTMMoELM: ids must be (batch, time), got shape {ids.shape}")
        h, _ = self.lstm1(self.dropout(self.embed(ids)))
        y, aux = self.moe(h)
        # tinymoe's layers return only the experts' part; the residual (which carries any
        # dropped token) is added here, as every block of this library does
        h, _ = self.lstm2(self.dropout(h + y))
        return self.head(self.dropout(h)), aux

    def loss(self, ids, targets):
        logits, aux = self(ids)
        return F.cross_entropy(logits, targets), aux
