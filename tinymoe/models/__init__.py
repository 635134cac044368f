"""Models built from tinymoe's layers."""

from tinymoe.models.lstm_moe import LSTMMoELM
from tinymoe.models.transformer import TransformerLM
from tinymoe.models.vowel import BackpropNet, VowelMixture

__all__ = ["BackpropNet", "LSTMMoELM", "TransformerLM", "VowelMixture"]
