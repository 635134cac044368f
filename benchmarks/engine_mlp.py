"""How much does autograd cost? A 4-layer MLP, forward + backward, through tinymoe against
the same computation written out by hand in NumPy (the floor: no graph, no Function
objects, no gradient bookkeeping).

    python benchmarks/engine_mlp.py            # batch 1024, width 512, float32, 2 threads

Both sides do the same matrix products, so the ratio measures the engine's overhead:
Python per op, extra temporaries, and summing broadcast gradients.
"""

from __future__ import annotations

import argparse
import os
import platform

# isort: off
from timing import median_ms  # first: it sets two BLAS threads before NumPy loads

import numpy as np

import tinymoe as tm
from tinymoe import functional as F
# isort: on


def make_weights(width: int, layers: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    bound = 1 / np.sqrt(width)
    return [
        (rng.uniform(-bound, bound, (width, width)).astype(np.float32), np.zeros(width, np.float32))
        for _ in range(layers)
    ]


def numpy_step(x, target, weights):
    """Forward and backward by hand: relu between layers, mean squared error at the end."""
    activations, pre = [x], []
    h = x
    for i, (w, b) in enumerate(weights):
        z = h @ w + b
        pre.append(z)
        h = np.maximum(z, 0) if i < len(weights) - 1 else z
        activations.append(h)
    diff = h - target
    loss = (diff * diff).mean()
    grad = diff * np.float32(2 / diff.size)
    grads = []
    for i in reversed(range(len(weights))):
        if i < len(weights) - 1:
            grad = grad * (pre[i] > 0)
        grads.append((activations[i].T @ grad, grad.sum(axis=0)))
        if i > 0:
            grad = grad @ weights[i][0].T
    return loss, grads


def tinymoe_step(x, target, params):
    h = x
    for i, (w, b) in enumerate(params):
        w.grad = b.grad = None
        h = F.linear(h, w, b)
        if i < len(params) - 1:
            h = F.relu(h)
    loss = F.mse_loss(h, target)
    loss.backward()
    return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    rng = np.random.default_rng(1)
    x = rng.standard_normal((args.batch, args.width)).astype(np.float32)
    target = rng.standard_normal((args.batch, args.width)).astype(np.float32)
    weights = make_weights(args.width, args.layers)
    params = [(tm.tensor(w, requires_grad=True), tm.tensor(b, requires_grad=True)) for w, b in weights]

    # the same numbers both ways, or the timing compares different work
    loss_np, grads_np = numpy_step(x, target, weights)
    loss_tm = tinymoe_step(tm.tensor(x), tm.tensor(target), params)
    assert np.isclose(loss_np, loss_tm.item(), rtol=1e-5)
    np.testing.assert_allclose(grads_np[-1][0], params[0][0].grad, rtol=1e-3, atol=1e-6)

    floor, ours = median_ms(
        [lambda: numpy_step(x, target, weights), lambda: tinymoe_step(tm.tensor(x), tm.tensor(target), params)],
        args.repeats,
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(
        f"{args.layers}-layer MLP, batch {args.batch}, width {args.width}, float32, forward + backward, "
        f"median of {args.repeats} (interleaved)"
    )
    print(f"{'implementation':<28}{'median ms':>10}{'ratio':>8}")
    print(f"{'NumPy by hand (floor)':<28}{floor:>10.2f}{1.0:>8.2f}")
    print(f"{'tinymoe autograd':<28}{ours:>10.2f}{ours / floor:>8.2f}")


if __name__ == "__main__":
    main()
