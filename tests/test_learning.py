"""End to end: layers, autograd and Adam together really learn small problems."""

import numpy as np

import tinymoe as tm
from tinymoe import functional as F
from tinymoe.nn import Linear, Module
from tinymoe.optim import Adam


class MLP(Module):
    def __init__(self, d_in, d_hidden, d_out):
        self.hidden = Linear(d_in, d_hidden)
        self.out = Linear(d_hidden, d_out)

    def forward(self, x):
        return self.out(F.tanh(self.hidden(x)))


def fit(model, loss_fn, steps, lr):
    optimizer = Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    return loss_fn().item()


def test_mlp_learns_xor():
    tm.manual_seed(0)
    x = tm.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    labels = np.array([0, 1, 1, 0])  # not linearly separable: needs the hidden layer
    model = MLP(2, 8, 2)

    loss = fit(model, lambda: F.cross_entropy(model(x), labels), steps=300, lr=0.05)

    assert loss < 0.05
    np.testing.assert_array_equal(model(x).numpy().argmax(axis=-1), labels)


def test_mlp_fits_a_sine_wave():
    tm.manual_seed(0)
    grid = np.linspace(-np.pi, np.pi, 64, dtype=np.float32)[:, None]
    x, y = tm.tensor(grid), tm.tensor(np.sin(grid))
    model = MLP(1, 32, 1)

    mse = fit(model, lambda: F.mse_loss(model(x), y), steps=1000, lr=0.02)

    assert mse < 0.01
