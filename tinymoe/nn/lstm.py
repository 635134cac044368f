"""LSTM (Hochreiter & Schmidhuber 1997), the recurrent layer around Shazeer et al.'s 2017 MoE.

For each time step t, with [i, f, g, o] the four slices of one matrix product:

    i, f, o = sigmoid(.), g = tanh(.)       of  x_t W_ih + h_{t-1} W_hh + b
    c_t = f * c_{t-1} + i * g               (the cell keeps or overwrites its memory)
    h_t = o * tanh(c_t)

The input part x_t W_ih is computed for all steps in one matrix product before the loop;
only the recurrent part must wait for the previous step (a loop over time, never tokens).
"""

from __future__ import annotations

import math

import numpy as np

from tinymoe import functional as F
from tinymoe.backend import xp_of
from tinymoe.nn.checks import as_input
from tinymoe.nn.layers import uniform
from tinymoe.nn.module import Module, ModuleList, Parameter
from tinymoe.tensor import Tensor
from tinymoe.validate import integer


class LSTMLayer(Module):
    """One LSTM layer. Weights U(-1/sqrt(h), 1/sqrt(h)); the forget-gate bias starts at 1 so
    that early in training the cell remembers (Jozefowicz et al. 2015)."""

    def __init__(self, d_in: int, d_hidden: int, dtype=np.float32):
        self.d_in, self.d_hidden = integer("LSTMLayer", "d_in", d_in, 1), integer("LSTMLayer", "d_hidden", d_hidden, 1)
        bound = 1 / math.sqrt(d_hidden)
        self.w_ih = uniform((d_in, 4 * d_hidden), bound, dtype)
        self.w_hh = uniform((d_hidden, 4 * d_hidden), bound, dtype)
        bias = np.zeros(4 * d_hidden, dtype)
        bias[d_hidden : 2 * d_hidden] = 1.0  # [i, f, g, o]: f is the second slice
        self.bias = Parameter(bias)

    def forward(self, x, state=None):
        """x (B, T, d_in) -> outputs (B, T, h) and the final state (h_T, c_T), each (B, h)."""
        x = as_input(self, x, "batch, time, d_in", self.d_in)
        batch, steps, _ = x.shape
        if state is None:  # start from zeros on x's device
            h = c = Tensor(xp_of(x.device).zeros((batch, self.d_hidden), x.dtype))
        else:
            h, c = state
        x_part = F.linear(x, self.w_ih, self.bias)  # all time steps at once
        outputs = []
        for t in range(steps):
            gates = x_part[:, t] + F.matmul(h, self.w_hh)
            i, f, g, o = F.split(gates, 4, axis=-1)
            c = F.sigmoid(f) * c + F.sigmoid(i) * F.tanh(g)
            h = F.sigmoid(o) * F.tanh(c)
            outputs.append(h)
        if not outputs:  # no time steps: an empty (B, 0, h), still on x's graph (its gradient: none)
            return x_part[..., : self.d_hidden], (h, c)
        return F.stack(outputs, axis=1), (h, c)


class LSTM(Module):
    """A stack of ``n_layers`` LSTM layers, batch first: (B, T, d_in) -> (B, T, d_hidden)."""

    def __init__(self, d_in: int, d_hidden: int, n_layers: int = 1, dtype=np.float32):
        n_layers = integer("LSTM", "n_layers", n_layers, 1)
        self.layers = ModuleList(LSTMLayer(d_in if i == 0 else d_hidden, d_hidden, dtype) for i in range(n_layers))

    def forward(self, x, state=None):
        """Returns outputs and a list of per-layer final states ``[(h, c), ...]``."""
        states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i])
            states.append(s)
        return x, states
