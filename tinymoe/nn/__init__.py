"""Layers: ``Module``/``Parameter`` and the building blocks of the models."""

from tinymoe.nn.attention import CausalSelfAttention
from tinymoe.nn.feedforward import FeedForward
from tinymoe.nn.layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from tinymoe.nn.lstm import LSTM, LSTMLayer
from tinymoe.nn.module import Module, ModuleList, Parameter, Sequential
from tinymoe.nn.transformer import TransformerBlock

__all__ = [
    "CausalSelfAttention", "Dropout", "Embedding", "FeedForward", "LSTM", "LSTMLayer",
    "LayerNorm", "Linear", "Module", "ModuleList", "Parameter", "RMSNorm", "Sequential",
    "TransformerBlock",
]  # fmt: skip
