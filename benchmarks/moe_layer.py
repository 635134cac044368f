"""What does the dispatch path cost? A Mixtral-style top-k MoE layer (``tm.moe.TopKMoE``,
SwiGLU experts), forward + backward, against the naive per-expert loop and the floor.

    python benchmarks/moe_layer.py    # N=4096 tokens, d=256, f=512, E=8, k=2, float32, 2 threads

Implementations, all timed in turns in one run:
- floor:   the expert matmuls alone in plain NumPy, forward and backward written by hand,
           with perfect routing (each expert owns exactly N*k/E contiguous rows): no router,
           no permutation, no combine, no autograd. Nothing that computes the layer can be
           faster than its expert products.
- tinymoe Experts only: ``layer.experts`` on that same perfectly routed buffer (the
           autograd engine's share of the gap).
- tinymoe TopKMoE: the layer as a model uses it: router, make_plan, permute, grouped
           matmuls, unpermute.
- naive loop: the same router and experts, combined by ``layer.experts.dense`` (the
           ``dense_moe`` oracle: mask the tokens of each expert, run it, index_add).
- PyTorch eager (only if ``import torch`` works): the same layer written the usual way
           (argsort by expert, index, one matmul chain per expert, index_add).
"""

from __future__ import annotations

import argparse
import os
import platform

# isort: off
from timing import median_ms  # first: it sets two BLAS threads before NumPy loads

import numpy as np

import tinymoe as tm
from tinymoe.moe import TopKMoE, make_plan
# isort: on

try:  # optional: torch is not a dependency of tinymoe
    import torch
except ImportError:
    torch = None


# --------------------------------------------------------------------------- the floor


def floor_step(xs, w1, w3, w2, g):
    """SwiGLU experts on contiguous equal blocks of rows, forward and backward by hand.

        h1 = x w1, h3 = x w3, a = silu(h1) * h3, y = a w2        (silu(h) = h s, s = sigmoid(h))
        d w2 = a^T g;  d a = g w2^T;  d h3 = d a * silu(h1);  d h1 = d a * h3 * s (1 + h1 (1 - s))
        d w1 = x^T d h1;  d w3 = x^T d h3;  d x = d h1 w1^T + d h3 w3^T
    """
    n_experts = len(w1)
    m = xs.shape[0] // n_experts
    ys, dxs = np.empty_like(xs), np.empty_like(xs)
    dw1, dw3, dw2 = np.empty_like(w1), np.empty_like(w3), np.empty_like(w2)
    for e in range(n_experts):
        rows = slice(e * m, (e + 1) * m)
        x, ge = xs[rows], g[rows]
        h1, h3 = x @ w1[e], x @ w3[e]
        s = 1 / (1 + np.exp(-h1))
        silu = h1 * s
        a = silu * h3
        ys[rows] = a @ w2[e]
        dw2[e] = a.T @ ge
        da = ge @ w2[e].T
        dh3 = da * silu
        dh1 = da * h3 * s * (1 + h1 * (1 - s))
        dw1[e], dw3[e] = x.T @ dh1, x.T @ dh3
        dxs[rows] = dh1 @ w1[e].T + dh3 @ w3[e].T
    return ys, dxs, (dw1, dw3, dw2)


# --------------------------------------------------------------------------- tinymoe


def tinymoe_step(layer, x, g):
    """The layer, forward + backward of its output (upstream gradient g)."""
    layer.zero_grad()
    x.grad = None
    y, _ = layer(x)
    y.backward(g)
    return y


def naive_step(layer, x, g):
    """The same router and experts, combined by the per-expert loop (dense_moe)."""
    layer.zero_grad()
    x.grad = None
    routing = layer.router(x)
    y = layer.experts.dense(x, routing.expert_index, routing.weight)
    y.backward(g)
    return y


def experts_step(experts, xs, plan, g):
    """layer.experts alone on the perfectly routed buffer of the floor."""
    experts.zero_grad()
    xs.grad = None
    ys = experts(xs, plan)
    ys.backward(g)
    return ys


# --------------------------------------------------------------------------- PyTorch eager


class TorchTopKMoE:
    """The same layer in PyTorch eager, weights copied from a tinymoe TopKMoE."""

    def __init__(self, layer):
        def param(t):
            return torch.tensor(t.numpy(), requires_grad=True)

        self.k, self.n_experts = layer.router.k, layer.n_experts
        self.w_gate = param(layer.router.w_gate)
        self.w1, self.w3, self.w2 = param(layer.experts.w1), param(layer.experts.w3), param(layer.experts.w2)
        self.params = [self.w_gate, self.w1, self.w3, self.w2]

    def __call__(self, x):
        probs = torch.softmax(x @ self.w_gate, dim=-1)
        weight, index = probs.topk(self.k, dim=-1)
        weight = weight / weight.sum(dim=-1, keepdim=True)
        flat = index.reshape(-1)
        order = torch.argsort(flat, stable=True)  # slots grouped by expert
        tokens = order // self.k
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        outs = []
        for e, xs in enumerate(torch.split(x[tokens], counts)):
            outs.append((torch.nn.functional.silu(xs @ self.w1[e]) * (xs @ self.w3[e])) @ self.w2[e])
        ys = torch.cat(outs) * weight.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add(0, tokens, ys)

    def step(self, x, g):
        for p in self.params:
            p.grad = None
        x.grad = None
        y = self(x)
        y.backward(g)
        return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--d-hidden", type=int, default=512)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even if it is installed")
    args = parser.parse_args()
    n, d, f, e, k = args.tokens, args.d_model, args.d_hidden, args.experts, args.k
    if (n * k) % e:
        raise SystemExit(f"perfect routing needs E={e} to divide N*k={n * k}")

    tm.manual_seed(0)
    layer = TopKMoE(d, f, e, k, aux_weight=0.0)  # no auxiliary loss: the floor has none
    rng = np.random.default_rng(1)
    x_np = rng.standard_normal((n, d)).astype(np.float32)
    g_np = rng.standard_normal((n, d)).astype(np.float32)  # upstream gradient dL/dy
    x = tm.tensor(x_np, requires_grad=True)

    # the floor's input: N*k rows, expert e owning rows e*M .. (e+1)*M - 1
    xs_np = rng.standard_normal((n * k, d)).astype(np.float32)
    gs_np = rng.standard_normal((n * k, d)).astype(np.float32)
    w1, w3, w2 = (p.numpy() for p in (layer.experts.w1, layer.experts.w3, layer.experts.w2))
    perfect = make_plan((np.arange(n * k) // (n * k // e)).reshape(n, k), e)  # offsets 0, M, 2M, ...
    xs = tm.tensor(xs_np, requires_grad=True)

    # the same numbers every way, or the timing compares different work
    ys_floor, dxs_floor, dw_floor = floor_step(xs_np, w1, w3, w2, gs_np)
    ys_tm = experts_step(layer.experts, xs, perfect, gs_np)
    np.testing.assert_allclose(ys_tm.numpy(), ys_floor, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xs.grad, dxs_floor, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.experts.w1.grad, dw_floor[0], rtol=1e-3, atol=1e-3)

    y_naive = naive_step(layer, x, g_np).numpy()
    grads_naive = [x.grad.copy(), layer.router.w_gate.grad.copy(), layer.experts.w1.grad.copy()]
    y_tm = tinymoe_step(layer, x, g_np).numpy()
    np.testing.assert_allclose(y_tm, y_naive, rtol=1e-4, atol=1e-5)
    for got, want in zip([x.grad, layer.router.w_gate.grad, layer.experts.w1.grad], grads_naive, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    load = np.bincount(layer.last_routing.expert_index.ravel(), minlength=e)

    names = ["NumPy experts by hand (floor)", "tinymoe Experts only", "tinymoe TopKMoE", "naive per-expert loop"]
    fns = [
        lambda: floor_step(xs_np, w1, w3, w2, gs_np),
        lambda: experts_step(layer.experts, xs, perfect, gs_np),
        lambda: tinymoe_step(layer, x, g_np),
        lambda: naive_step(layer, x, g_np),
    ]
    if torch is not None and not args.no_torch:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        torch_layer = TorchTopKMoE(layer)
        x_t, g_t = torch.tensor(x_np, requires_grad=True), torch.tensor(g_np)
        y_t = torch_layer.step(x_t, g_t).detach().numpy()
        np.testing.assert_allclose(y_t, y_tm, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(torch_layer.w1.grad.numpy(), layer.experts.w1.grad, rtol=1e-3, atol=1e-4)
        names.append(f"PyTorch {torch.__version__} eager")
        fns.append(lambda: torch_layer.step(x_t, g_t))

    times = median_ms(fns, args.repeats, warmup=2)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, numpy {np.__version__}, "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    )
    print(
        f"TopKMoE (SwiGLU), N={n} tokens, d={d}, f={f}, E={e}, k={k}, float32, forward + backward, "
        f"median of {args.repeats} (interleaved)"
    )
    print(f"router load per expert (floor: {n * k // e} each): {load.tolist()}")
    print(f"{'implementation':<34}{'median ms':>10}{'ratio':>8}")
    for name, ms in zip(names, times, strict=True):
        print(f"{name:<34}{ms:>10.2f}{ms / times[0]:>8.2f}")


if __name__ == "__main__":
    main()
