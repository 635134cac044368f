"""The GPU dispatch path, kernel by kernel, against memory bandwidth and a vectorised CuPy
reference; then a whole MoE layer, forward + backward, with and without our kernels.

    python benchmarks/gpu_dispatch.py                  # float32 storage
    python benchmarks/gpu_dispatch.py --dtype float16  # 16-bit storage (fp32 router and sums)

One run prints one table. First a device-to-device copy of 1 GiB is timed: its bandwidth
(bytes read + bytes written, per second) is the yardstick, measured on this GPU in this run.
Then, for each shape (T tokens, d model width, E experts, k choices), each kernel's median
time over >= 50 repeats (CUDA events, after warm-up), with the L2 cache flushed before every
repeat (the row kernels' inputs are larger than L2 anyway), its achieved bandwidth as a
fraction of the copy's, and its speed-up over the same step written as a vectorised CuPy
reference (argsort + take + scatter_add). Bytes are counted as the least any implementation
must move: each input read once, each output written once.

The layer section times tinymoe's TopKMoE (SwiGLU experts, cuBLAS matmuls) forward +
backward with the kernels, and with ``tinymoe.kernels.disabled()``: the library's reference
array code (argsort, take, gather, einsum) running on CuPy. Before any timing, every kernel's
output is checked against the reference.

Needs CuPy and an NVIDIA GPU (pip install -r requirements-gpu.txt); exits with a message
otherwise.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import numpy as np

import tinymoe as tm
from tinymoe import backend, kernels

SHAPES = [(8192, 1024, 8, 2), (16384, 4096, 8, 2), (4096, 2048, 128, 8), (4096, 7168, 256, 8)]
LAYER_SHAPES = [(8192, 1024, 8, 2, 2048), (4096, 2048, 128, 8, 512)]  # + d_hidden of each expert


# --------------------------------------------------------------------------- timing


class Timer:
    """Median milliseconds of GPU work by CUDA events, L2 flushed before each repeat.

    Functions are timed in turns (a, b, a, b, ...) so that clock or thermal drift affects
    the kernel and its reference alike."""

    def __init__(self, cp, repeats: int, warmup: int = 5):
        self.cp, self.repeats, self.warmup = cp, repeats, warmup
        l2 = cp.cuda.Device().attributes["L2CacheSize"]
        self.scratch = cp.empty(max(2 * l2, 1 << 20), cp.uint8)  # writing it evicts everything else
        self.start, self.end = cp.cuda.Event(), cp.cuda.Event()

    def one(self, fn) -> float:
        self.scratch.fill(1)
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.cp.cuda.get_elapsed_time(self.start, self.end)

    def median_ms(self, *fns) -> list[float]:
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        times = [[] for _ in fns]
        for _ in range(self.repeats):
            for fn, bucket in zip(fns, times, strict=True):
                bucket.append(self.one(fn))
        return [statistics.median(t) for t in times]


def copy_bandwidth(cp, timer: Timer) -> float:
    """Bytes read + written per second by cudaMemcpyAsync of 1 GiB, device to device."""
    n = 1 << 30
    src, dst = cp.ones(n, cp.uint8), cp.empty(n, cp.uint8)
    stream = cp.cuda.get_current_stream().ptr

    def copy():
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, n, cp.cuda.runtime.memcpyDeviceToDevice, stream)

    (ms,) = timer.median_ms(copy)
    assert bool((dst[:: 1 << 20] == 1).all())
    return 2 * n / (ms * 1e-3)


# --------------------------------------------------------------------------- the CuPy reference


def reference_router(cp, logits, k, sigmoid, bias, scale):
    """Scores, top-k by a full argsort, weights renormalised and scaled."""
    if sigmoid:
        scores = 1 / (1 + cp.exp(-logits))
    else:
        e = cp.exp(logits - logits.max(axis=1, keepdims=True))
        scores = e / e.sum(axis=1, keepdims=True)
    index = cp.argsort(-(scores + bias), axis=1)[:, :k]
    chosen = cp.take_along_axis(scores, index, axis=1)
    return scores, index, chosen / chosen.sum(axis=1, keepdims=True) * scale


def reference_router_backward(cp, scores, index, grad_weight, sigmoid, scale):
    import cupyx

    chosen = cp.take_along_axis(scores, index, axis=1)
    denom = chosen.sum(axis=1, keepdims=True)
    u = scale * (grad_weight - (grad_weight * chosen).sum(axis=1, keepdims=True) / denom) / denom
    du = cp.zeros_like(scores)
    rows = cp.broadcast_to(cp.arange(len(scores))[:, None], index.shape)
    cupyx.scatter_add(du, (rows, index), u)
    if sigmoid:
        return du * scores * (1 - scores)
    return scores * (du - (u * chosen).sum(axis=1, keepdims=True))


def reference_plan(cp, index, n_experts):
    """Dropless plan by a stable argsort (of int16 keys, as dispatch.py sorts): order, counts, offsets, row."""
    flat = index.reshape(-1)
    order = cp.argsort(flat.astype(cp.int16), kind="stable")
    counts = cp.bincount(flat, minlength=n_experts)
    offsets = cp.concatenate([cp.zeros(1, counts.dtype), cp.cumsum(counts)])
    row = cp.empty(flat.size, cp.int64)
    row[order] = cp.arange(flat.size)
    return order, counts, offsets, row.reshape(index.shape)


def reference_permute(cp, x, order, k):
    return x.take(order // k, axis=0)


def scatter_rows(cp, rows, tokens, n_tokens):
    """out[tokens[i]] += rows[i] with cupyx.scatter_add (atomics), which takes float32 (and not
    float16): 16-bit rows are added into a float32 buffer and rounded back at the end."""
    import cupyx

    wide = rows.dtype.itemsize < 4
    out = cp.zeros((n_tokens, rows.shape[1]), cp.float32 if wide else rows.dtype)
    cupyx.scatter_add(out, tokens, rows.astype(cp.float32) if wide else rows)
    return out.astype(rows.dtype) if wide else out


def reference_permute_backward(cp, grad_xs, order, k, n_tokens):
    return scatter_rows(cp, grad_xs, order // k, n_tokens)


def reference_unpermute(cp, ys, order, weight, k, n_tokens):
    return scatter_rows(cp, ys * weight.reshape(-1)[order, None], order // k, n_tokens)


def reference_unpermute_backward(cp, grad_y, ys, order, weight, k):
    g_rows = grad_y.take(order // k, axis=0)  # dy of each row's token, buffer order
    grad_ys = g_rows * weight.reshape(-1)[order, None]
    grad_weight = cp.empty(weight.size, weight.dtype)
    grad_weight[order] = (g_rows * ys).sum(axis=1)
    return grad_ys, grad_weight.reshape(weight.shape)


# --------------------------------------------------------------------------- one shape


def kernel_rows(cp, timer, shape, dtype, copy_bw):
    """Check every kernel against the reference, time both, return the table rows."""
    t, d, e, k = shape
    rng = cp.random.default_rng(sum(shape))
    sigmoid = e >= 128  # fine-grained shapes route DeepSeek-V3 style, the others Mixtral style
    scale = 2.5 if sigmoid else 1.0
    logits = rng.standard_normal((t, e), dtype=cp.float32)
    bias = (0.01 * rng.standard_normal(e, dtype=cp.float32)) if sigmoid else cp.zeros(e, cp.float32)
    score = "sigmoid" if sigmoid else "softmax"
    eps = 1e-20 if sigmoid else 0.0
    itemsize = np.dtype(dtype).itemsize
    rows = []

    def row(name, bytes_moved, fn, ref):
        ms, ref_ms = timer.median_ms(fn, ref)
        gbs = bytes_moved / (ms * 1e-3)
        rows.append((shape, name, bytes_moved / 1e6, ms, gbs / 1e9, gbs / copy_bw, ref_ms, ref_ms / ms))

    # router forward and backward (router math in float32, as in the library)
    scores, index, weight = kernels.router_topk(logits, k, score, True, scale, bias, eps)
    r_scores, r_index, r_weight = reference_router(cp, logits, k, sigmoid, bias, scale)
    cp.testing.assert_allclose(scores, r_scores, rtol=1e-5, atol=1e-7)
    same = (index == r_index).all(axis=1)
    assert float(same.mean()) > 0.999, "the fused router and the reference choose differently"
    cp.testing.assert_allclose(weight[same], r_weight[same], rtol=1e-5, atol=1e-7)
    row("router (fused top-k)", t * e * 4 * 2 + e * 4 + t * k * (8 + 4),
        lambda: kernels.router_topk(logits, k, score, True, scale, bias, eps),
        lambda: reference_router(cp, logits, k, sigmoid, bias, scale))
    grad_weight = rng.standard_normal((t, k), dtype=cp.float32)
    cp.testing.assert_allclose(
        kernels.router_topk_backward(scores, index, grad_weight, score, True, scale, eps),
        reference_router_backward(cp, scores, index, grad_weight, sigmoid, scale), rtol=1e-4, atol=1e-6)
    row("router backward", t * e * 4 * 2 + t * k * (8 + 4),
        lambda: kernels.router_topk_backward(scores, index, grad_weight, score, True, scale, eps),
        lambda: reference_router_backward(cp, scores, index, grad_weight, sigmoid, scale))

    # routing metadata (dropless): the counting sort
    plan = kernels.make_plan(index, e)
    order, counts, offsets, plan_row = reference_plan(cp, index, e)
    assert int(plan.offsets[-1]) == t * k
    for got, want in [(plan.order, order), (plan.counts, counts), (plan.offsets, offsets), (plan.row, plan_row)]:
        cp.testing.assert_array_equal(got, want)
    row("routing metadata", t * k * 8 * 3 + t * k + (2 * e + 1) * 8,  # ids, mask in; row, order, counts, offsets out
        lambda: kernels.make_plan(index, e), lambda: reference_plan(cp, index, e))

    # permute and combine on the model's dtype
    x = rng.standard_normal((t, d), dtype=cp.float32).astype(dtype)
    ys = rng.standard_normal((t * k, d), dtype=cp.float32).astype(dtype)
    w = weight.astype(dtype)
    grad_y = rng.standard_normal((t, d), dtype=cp.float32).astype(dtype)
    n_rows, tol = t * k, (1e-5 if itemsize == 4 else 1e-2)
    cp.testing.assert_array_equal(kernels.permute(x, plan.row, n_rows), reference_permute(cp, x, order, k))
    row("permute", (t * d + n_rows * d) * itemsize + t * k * 8,
        lambda: kernels.permute(x, plan.row, n_rows), lambda: reference_permute(cp, x, order, k))
    cp.testing.assert_allclose(kernels.permute_backward(ys, plan.row),
                               reference_permute_backward(cp, ys, order, k, t), rtol=tol, atol=tol)
    row("permute backward", (n_rows * d + t * d) * itemsize + t * k * 8,
        lambda: kernels.permute_backward(ys, plan.row), lambda: reference_permute_backward(cp, ys, order, k, t))
    cp.testing.assert_allclose(kernels.unpermute(ys, plan.row, w),
                               reference_unpermute(cp, ys, order, w, k, t), rtol=tol, atol=tol)
    row("unpermute + combine", (n_rows * d + t * d + t * k) * itemsize + t * k * 8,
        lambda: kernels.unpermute(ys, plan.row, w), lambda: reference_unpermute(cp, ys, order, w, k, t))
    got = kernels.unpermute_backward(grad_y, ys, plan.row, w)
    for a, b in zip(got, reference_unpermute_backward(cp, grad_y, ys, order, w, k), strict=True):
        cp.testing.assert_allclose(a, b, rtol=tol, atol=tol * math.sqrt(d))
    row("unpermute backward", (t * d + 2 * n_rows * d + 2 * t * k) * itemsize + t * k * 8,
        lambda: kernels.unpermute_backward(grad_y, ys, plan.row, w),
        lambda: reference_unpermute_backward(cp, grad_y, ys, order, w, k))
    return rows


# --------------------------------------------------------------------------- the layer


def layer_row(cp, timer, shape, dtype):
    from tinymoe.moe import TopKMoE

    t, d, e, k, f = shape
    weights_bytes = 3 * e * d * f * np.dtype(dtype).itemsize
    if weights_bytes > 0.3 * cp.cuda.Device().mem_info[1]:
        return None
    tm.manual_seed(0)
    layer = TopKMoE(d, f, e, k, aux_weight=0.0).to("cuda")
    for p in layer.experts.parameters():
        p.data = p.data.astype(dtype)
    x = tm.tensor(cp.random.default_rng(1).standard_normal((t, d), dtype=cp.float32).astype(dtype),
                  requires_grad=True, device="cuda")
    g = cp.random.default_rng(2).standard_normal((t, d), dtype=cp.float32).astype(dtype)

    def step():
        layer.zero_grad()
        x.grad = None
        y, _ = layer(x)
        y.backward(g)
        return y

    def reference_step():
        with kernels.disabled():
            return step()

    y_kernels, grad_kernels = step().data.copy(), x.grad.copy()
    y_reference, grad_reference = reference_step().data.copy(), x.grad.copy()
    tol = 1e-4 if np.dtype(dtype).itemsize == 4 else 2e-2
    cp.testing.assert_allclose(y_kernels, y_reference, rtol=tol, atol=tol)
    cp.testing.assert_allclose(grad_kernels, grad_reference, rtol=tol, atol=tol)
    ms, ref_ms = timer.median_ms(step, reference_step)
    return shape, ms, ref_ms


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="storage of token rows and expert weights (the router stays float32)")
    parser.add_argument("--repeats", type=int, default=100, help="timed repeats per kernel (at least 50)")
    parser.add_argument("--no-layer", action="store_true", help="skip the whole-layer section")
    args = parser.parse_args()
    if not tm.cuda_available():
        reason = "CuPy is not installed" if backend.cupy is None else "CuPy sees no GPU"
        sys.exit(f"benchmarks/gpu_dispatch.py needs CuPy and an NVIDIA GPU, but {reason}. Run it on a GPU "
                 "machine after `pip install -r requirements-gpu.txt`; nothing was measured.")
    cp = backend.cupy
    repeats = max(50, args.repeats)
    dtype = np.dtype(args.dtype)
    timer = Timer(cp, repeats)

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    l2 = cp.cuda.Device().attributes["L2CacheSize"]
    bandwidth = copy_bandwidth(cp, timer)
    print(f"device: {name}, L2 {l2 / 2**20:.0f} MiB, CUDA runtime {cp.cuda.runtime.runtimeGetVersion()}, "
          f"CuPy {cp.__version__}")
    print(f"device-to-device copy (cudaMemcpyAsync, 1 GiB): {bandwidth / 1e9:.0f} GB/s (read + write)")
    print(f"storage {dtype.name}; median of {repeats} repeats (CUDA events, L2 flushed before each); "
          "bytes: each input read once, each output written once")
    print()
    header = (f"{'T, d, E, k':<22}{'kernel':<22}{'MB':>9}{'ms':>9}{'GB/s':>8}{'of copy':>9}"
              f"{'ref ms':>9}{'speed-up':>9}")
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        for s, kernel, mb, ms, gbs, fraction, ref_ms, speedup in kernel_rows(cp, timer, shape, dtype, bandwidth):
            print(f"{str(s):<22}{kernel:<22}{mb:>9.1f}{ms:>9.3f}{gbs:>8.0f}{fraction:>9.0%}{ref_ms:>9.3f}"
                  f"{speedup:>8.1f}x")
        cp.get_default_memory_pool().free_all_blocks()
    if args.no_layer:
        return
    print()
    print(f"TopKMoE (SwiGLU), forward + backward, {dtype.name}: kernels vs tinymoe.kernels.disabled() "
          f"(the reference array code on CuPy)")
    print(f"{'T, d, E, k, d_hidden':<30}{'kernels ms':>12}{'reference ms':>14}{'speed-up':>10}")
    for shape in LAYER_SHAPES:
        result = layer_row(cp, timer, shape, dtype)
        if result is None:
            print(f"{str(shape):<30}  skipped: the expert weights would not fit comfortably in GPU memory")
            continue
        _, ms, ref_ms = result
        print(f"{str(shape):<30}{ms:>12.2f}{ref_ms:>14.2f}{ref_ms / ms:>9.2f}x")
        cp.get_default_memory_pool().free_all_blocks()


if __name__ == "__main__":
    main()
