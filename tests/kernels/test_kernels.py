"""Each kernel against its NumPy spec, on fresh random inputs over many shapes.

Every test runs on two devices:
- "cuda": the real kernels through CuPy (marked ``gpu``; skipped without CuPy and a GPU);
- "emulated": the same CUDA C run by CPU threads (tests/kernels/emulated.py; skipped
  without g++), smaller shapes: it checks index arithmetic, barriers and shuffles in CI.

Outputs are poisoned: every new device array is filled with 0xFF bytes (NaN for floats, -1
for ints, True for bools), then again with 0x00 bytes (0, 0, False), and each kernel runs
under both, so an element that no kernel wrote fails one of the two runs.

    pytest tests/kernels -m gpu          # on a GPU machine: the real kernels only
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from tests.kernels import emulated
from tinymoe import backend
from tinymoe.kernels import launch, spec
from tinymoe.moe import dispatch

POISONS = (0xFF, 0x00)


class Device:
    """How a test makes arrays, reads them back and poisons new allocations on a device."""

    def __init__(self, name: str, monkeypatch):
        self.name, self.big = name, name == "cuda"
        self._monkeypatch = monkeypatch
        if name == "emulated":
            monkeypatch.setattr(launch, "function", emulated.function)
            monkeypatch.setattr(backend, "cupy", emulated.NumpyAsCupy())

    def asarray(self, a):
        return backend.cupy.asarray(a)

    def numpy(self, a):
        return a.get() if self.name == "cuda" else np.asarray(a)

    @contextlib.contextmanager
    def poisoned(self, byte: int):
        if self.name == "emulated":
            self._monkeypatch.setattr(backend, "cupy", emulated.NumpyAsCupy(byte))
            yield
            return
        cupy = backend.cupy
        pool = cupy.cuda.MemoryPool()

        def allocate(size):
            memory = pool.malloc(size)
            cupy.cuda.runtime.memset(memory.ptr, byte, size)
            return memory

        cupy.cuda.set_allocator(allocate)
        try:
            yield
        finally:
            cupy.cuda.runtime.deviceSynchronize()
            cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)


DEVICES = [
    pytest.param("cuda", marks=[pytest.mark.gpu,
                                pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")]),
    pytest.param("emulated", marks=pytest.mark.skipif(not emulated.available(), reason="needs g++")),
]


@pytest.fixture(params=DEVICES)
def dev(request, monkeypatch):
    return Device(request.param, monkeypatch)


def poisoned_runs(dev, fn):
    """fn() under each poison; the results of every run must be identical (deterministic)."""
    results = []
    for byte in POISONS:
        with dev.poisoned(byte):
            out = fn()
        results.append([dev.numpy(a) for a in (out if isinstance(out, tuple) else (out,))])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b, err_msg="the two poisoned runs differ: an output element was not written")
    return results[0] if len(results[0]) > 1 else results[0][0]


# --------------------------------------------------------------------------- 16-bit storage


def bf16_bits(x):
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest even, as common.cuh does."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def from_bf16_bits(b):
    return (np.asarray(b).astype(np.uint32) << 16).view(np.float32)


STORAGE = {  # name -> (make from float64, back to float64, kernel storage arg, unit roundoff, subnormal step)
    "float32": (lambda a: a.astype(np.float32), lambda a: a.astype(np.float64), None, 2.0**-24, 2.0**-149),
    "float64": (lambda a: a.astype(np.float64), lambda a: a.astype(np.float64), None, 2.0**-53, 0.0),
    "float16": (lambda a: a.astype(np.float16), lambda a: a.astype(np.float64), None, 2.0**-11, 2.0**-24),
    "bfloat16": (lambda a: bf16_bits(a), lambda a: from_bf16_bits(a).astype(np.float64), "bf16", 2.0**-8, 2.0**-133),
}


def assert_sums_close(got, exact, terms, n_terms, dtype, err_msg=""):
    """|got - exact| <= store rounding of |exact| + accumulation error bound n_terms eps |terms|.

    The kernels add in float32 (float64 for float64) and round once when they store."""
    store, subnormal = STORAGE[dtype][3:]
    accumulate = 2.0**-53 if dtype == "float64" else 2.0**-24
    bound = 2 * store * np.abs(exact) + 2 * n_terms * accumulate * terms + subnormal + 1e-300
    error = np.abs(got - exact)
    worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else None
    assert np.all(error <= bound), f"{err_msg}: error {error[worst]} > bound {bound[worst]} at {worst}"


# --------------------------------------------------------------------------- router


def assert_same_choice(index, expected, choose, tol):
    """Equal choices, except where the expected values are within tol of each other (a near
    tie that float rounding may order either way); returns the rows that agree."""
    same = (index == expected).all(axis=1)
    for n in np.flatnonzero(~same):
        got_values = np.take_along_axis(choose[n], index[n], axis=-1)
        want_values = np.take_along_axis(choose[n], expected[n], axis=-1)
        assert len(set(index[n].tolist())) == len(index[n]), f"token {n} chose an expert twice: {index[n]}"
        np.testing.assert_allclose(got_values, want_values, atol=tol, err_msg=f"token {n}: not a near tie")
    return same


ROUTER_CASES = [  # n_tokens (cuda, emulated), n_experts, k
    ((4099, 37), 8, 2),
    ((1000, 30), 2, 1),
    ((1000, 30), 33, 3),   # E not a multiple of 32: the last lane group is partial
    ((2000, 21), 64, 6),
    ((512, 13), 128, 8),
    ((1024, 9), 256, 8),   # the largest E: 8 experts per lane
    ((257, 5), 256, 1),
    ((100, 6), 7, 7),      # k = E
    ((64, 5), 40, 32),     # the largest k
]
ROUTER_MODES = [  # score, normalize, scale, with bias, eps
    ("softmax", True, 1.0, False, 0.0),    # Mixtral
    ("softmax", False, 1.0, False, 0.0),   # Switch / GShard / DeepSeek-V1 before renormalising
    ("sigmoid", True, 2.5, True, 1e-20),   # DeepSeek-V3
    ("sigmoid", False, 1.0, True, 1e-20),
    ("softmax", True, 16.0, True, 1e-20),  # DeepSeek-V2 style, biased choice
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes, n_experts, k", ROUTER_CASES)
@pytest.mark.parametrize("mode", ROUTER_MODES, ids=lambda m: f"{m[0]}-norm{m[1]}-bias{m[3]}")
def test_router_forward_and_backward_match_the_spec(dev, sizes, n_experts, k, mode, dtype):
    score, normalize, scale, with_bias, eps = mode
    n = sizes[0] if dev.big else sizes[1]
    rng = np.random.default_rng([n, n_experts, k])
    logits = (2 * rng.standard_normal((n, n_experts))).astype(dtype)
    bias = (0.1 * rng.standard_normal(n_experts)).astype(dtype) if with_bias else None
    grad_weight = rng.standard_normal((n, k)).astype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12

    scores, index, weight = poisoned_runs(dev, lambda: launch.router_topk(
        dev.asarray(logits), k, score, normalize, scale, None if bias is None else dev.asarray(bias), eps))
    s_ref, i_ref, w_ref = spec.router_topk(logits, k, score, normalize, scale, bias, eps)
    assert index.dtype == np.int64 and scores.dtype == weight.dtype == np.dtype(dtype)
    np.testing.assert_allclose(scores, s_ref, rtol=tol, atol=tol * 1e-2)
    choose = s_ref + (0 if bias is None else bias)
    same = assert_same_choice(index, i_ref, choose, 10 * tol)
    np.testing.assert_allclose(weight[same], w_ref[same], rtol=tol, atol=tol * 1e-2)

    # the backward, on the kernel's own choice (the spec's differs only at near ties)
    grad = poisoned_runs(dev, lambda: launch.router_topk_backward(
        dev.asarray(scores), dev.asarray(index), dev.asarray(grad_weight), score, normalize, scale, eps))
    grad_ref = spec.router_topk_backward(scores, index, grad_weight, score, normalize, scale, eps)
    np.testing.assert_allclose(grad, grad_ref, rtol=10 * tol, atol=10 * tol * np.abs(grad_ref).max())


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_router_ties_go_to_the_lowest_expert(dev, score):
    """Logits on a coarse grid: many exact ties, which both sides must break the same way."""
    n = 500 if dev.big else 24
    rng = np.random.default_rng(7)
    logits = (rng.integers(-3, 3, (n, 48)) / 2).astype(np.float32)  # 6 distinct values over 48 experts
    logits[0] = 1.0  # a row of one value: the choice is experts 0, 1, ..., k - 1
    scores, index, weight = poisoned_runs(dev, lambda: launch.router_topk(dev.asarray(logits), 8, score))
    _, i_ref, w_ref = spec.router_topk(logits, 8, score)
    np.testing.assert_array_equal(index, i_ref)
    np.testing.assert_array_equal(index[0], np.arange(8))
    np.testing.assert_allclose(weight, w_ref, rtol=1e-6)


def test_router_nan_never_wins_and_choices_stay_distinct(dev):
    logits = np.random.default_rng(1).standard_normal((8, 20)).astype(np.float32)
    logits[:, 3] = np.nan
    bias = np.zeros(20, np.float32)
    _, index, _ = poisoned_runs(dev, lambda: launch.router_topk(
        dev.asarray(logits), 4, "sigmoid", bias=dev.asarray(bias)))
    assert not (index == 3).any()
    assert all(len(set(row)) == 4 for row in index.tolist())


# --------------------------------------------------------------------------- routing metadata


def routing_case(n, e, k, unused=(), drop_fraction=0.0, seed=0):
    """k distinct experts per token (none from ``unused``) and, if asked, pre-dropped slots."""
    rng = np.random.default_rng(seed)
    allowed = np.array([i for i in range(e) if i not in unused])
    index = np.argsort(rng.random((n, len(allowed))), axis=1)[:, :k]
    index = allowed[index]
    dropped = rng.random((n, k)) < drop_fraction if drop_fraction else None
    return index, dropped


def capacity_of(factor, n, e, k):
    """Rows per expert for a capacity factor (None: dropless); below 1 it drops."""
    return None if factor is None else max(1, int(factor * n * k / e))


PLAN_CASES = [  # n_tokens (cuda, emulated), n_experts, k, capacity factor, unused experts, pre-drop fraction
    pytest.param((1000, 300), 8, 2, None, (), 0.0, id="dropless"),
    pytest.param((999, 301), 7, 2, None, (), 0.0, id="E-does-not-divide-N"),
    pytest.param((1000, 300), 6, 3, None, (2, 4), 0.0, id="empty-experts"),
    pytest.param((1000, 300), 8, 2, None, (), 0.3, id="pre-dropped"),
    pytest.param((1000, 300), 8, 2, 0.8, (), 0.0, id="capacity-drops"),
    pytest.param((1000, 300), 8, 2, 0.0, (), 0.0, id="capacity-1"),
    pytest.param((1000, 300), 9, 3, 0.9, (0,), 0.2, id="capacity-pre-dropped-idle-expert"),
    pytest.param((777, 250), 5, 5, 0.9, (), 0.0, id="k-equals-E"),
    pytest.param((513, 200), 16, 1, None, (), 0.0, id="k-1"),
    pytest.param((4096, 500), 128, 8, 0.9, (), 0.0, id="E128-k8-capacity"),
    pytest.param((4096, 500), 256, 8, None, (), 0.0, id="E256-k8"),
    pytest.param((3000, 500), 256, 8, 0.7, (7, 200), 0.1, id="E256-capacity-pre-dropped"),
    pytest.param((2000, 300), 1024, 4, None, (), 0.0, id="E1024-most-experts-empty"),
    pytest.param((300, 33), 8, 8, None, (), 0.0, id="N-k-crosses-a-tile"),  # 33 * 8 = 264 > 256
    pytest.param((1, 1), 4, 2, None, (), 0.0, id="one-token"),
]


@pytest.mark.parametrize("sizes, e, k, factor, unused, drop_fraction", PLAN_CASES)
def test_make_plan_kernels_reproduce_make_plan(dev, sizes, e, k, factor, unused, drop_fraction):
    n = sizes[0] if dev.big else sizes[1]
    cap = capacity_of(factor, n, e, k)
    index, dropped = routing_case(n, e, k, unused, drop_fraction, seed=n * e + k)
    want = dispatch.make_plan(index, e, cap, dropped)  # the NumPy spec
    if cap is not None:
        assert (want.dropped & ~(dropped if dropped is not None else False)).any(), "the case must drop by capacity"

    def run():
        a = launch.make_plan(dev.asarray(index), e, cap, None if dropped is None else dev.asarray(dropped))
        return a.order, a.counts, a.offsets, a.row, a.dropped, a.invalid

    order, counts, offsets, row, got_dropped, invalid = poisoned_plan_runs(dev, run)
    n_kept = int(offsets[-1])
    np.testing.assert_array_equal(order[:n_kept], want.order, err_msg="order")
    for name, got in [("counts", counts), ("offsets", offsets), ("row", row), ("dropped", got_dropped)]:
        np.testing.assert_array_equal(got, getattr(want, name), err_msg=name)
    assert invalid[0] == 0


def poisoned_plan_runs(dev, run):
    """Like poisoned_runs, but ``order`` is compared only where it is defined (its first
    offsets[-1] entries: the rest is spare room)."""
    results = []
    for byte in POISONS:
        with dev.poisoned(byte):
            results.append([dev.numpy(a) for a in run()])
    first, second = results
    n_kept = int(first[2][-1])
    np.testing.assert_array_equal(first[0][:n_kept], second[0][:n_kept], err_msg="order")
    for a, b in zip(first[1:], second[1:], strict=True):
        np.testing.assert_array_equal(a, b, err_msg="the two poisoned runs differ: an output element was not written")
    return first


@pytest.mark.parametrize("sizes, e, k, factor, dropped_fraction", [
    ((2000, 400), 8, 2, 0.8, 0.0), ((2000, 400), 64, 6, 0.5, 0.25), ((500, 100), 3, 3, 0.0, 0.0)])
def test_capacity_drop_kernel_follows_gshard_priority(dev, sizes, e, k, factor, dropped_fraction):
    n = sizes[0] if dev.big else sizes[1]
    index, dropped = routing_case(n, e, k, drop_fraction=dropped_fraction, seed=5)
    cap = capacity_of(factor, n, e, k)
    want = dispatch.capacity_drop(index, e, cap, dropped)
    got = poisoned_runs(dev, lambda: launch.capacity_drop(
        dev.asarray(index), e, cap, None if dropped is None else dev.asarray(dropped)))
    np.testing.assert_array_equal(got, want)


def test_out_of_range_ids_are_flagged_and_dropped(dev):
    index = np.array([[0, 1], [5, 2], [-1, 3], [1, 0]])
    a = launch.make_plan(dev.asarray(index), 4)
    assert dev.numpy(a.invalid)[0] == 1
    row = dev.numpy(a.row)
    assert row[1, 0] == -1 and row[2, 0] == -1 and (row[[0, 3]] >= 0).all()
    a = launch.make_plan(dev.asarray(index), 4, capacity=2)
    assert dev.numpy(a.invalid)[0] == 1 and dev.numpy(a.dropped)[[1, 2], 0].all()


# --------------------------------------------------------------------------- permute and combine

ROW_CASES = [  # n_tokens (cuda, emulated), n_experts, k, capacity, pre-drop fraction, d (cuda, emulated)
    pytest.param((2048, 40), 8, 2, None, 0.0, (1024, 64), id="dropless-wide"),
    pytest.param((999, 33), 7, 3, None, 0.2, (130, 18), id="pre-dropped-odd-width"),
    pytest.param((1000, 30), 8, 2, 150, 0.0, (256, 24), id="capacity-padding"),
    pytest.param((500, 25), 16, 4, 40, 0.3, (3, 3), id="capacity-tiny-width"),
    pytest.param((700, 20), 256, 8, None, 0.0, (64, 16), id="E256-k8"),
    pytest.param((300, 17), 5, 1, 20, 0.0, (7168, 40), id="k1-capacity-very-wide"),
    pytest.param((64, 9), 4, 2, None, 1.0, (32, 8), id="every-slot-dropped"),
    pytest.param((300, 40), 16, 12, None, 0.1, (512, 512), id="k12-two-rounds-of-choices"),  # several warps
]


@pytest.mark.parametrize("dtype", list(STORAGE))
@pytest.mark.parametrize("sizes, e, k, cap, drop_fraction, widths", ROW_CASES)
def test_permute_and_combine_match_dispatch(dev, sizes, e, k, cap, drop_fraction, widths, dtype):
    n, d = (sizes[0], widths[0]) if dev.big else (sizes[1], widths[1])
    make, back, storage = STORAGE[dtype][:3]
    index, dropped = routing_case(n, e, k, drop_fraction=drop_fraction, seed=n + d)
    plan = dispatch.make_plan(index, e, cap, dropped)  # NumPy plan; its row and counts go to the device
    row, counts = dev.asarray(plan.row), dev.asarray(plan.counts)
    rng = np.random.default_rng(d)
    x = make(rng.standard_normal((n, d)))
    weight = make(rng.standard_normal((n, k)))
    grad_y = make(rng.standard_normal((n, d)))
    x64, w64, gy64 = back(x), back(weight), back(grad_y)
    kept = ~plan.dropped

    # permute: a copy, so bit for bit what dispatch.Permute gives (padding rows zero)
    xs = poisoned_runs(dev, lambda: launch.permute(dev.asarray(x), row, plan.n_rows, counts, plan.capacity))
    np.testing.assert_array_equal(back(xs), dispatch.Permute(plan).forward(x64), err_msg="permute")

    # the expert outputs: any values (a fresh array, so the combine cannot lean on permute's)
    ys = make(rng.standard_normal((plan.n_rows, d)))
    ys64 = back(ys)
    grad_xs = make(rng.standard_normal((plan.n_rows, d)))

    # permute backward: each token sums its copies' gradients
    grad_x = poisoned_runs(dev, lambda: launch.permute_backward(dev.asarray(grad_xs), row, storage=storage))
    want = dispatch.Permute(plan).backward(back(grad_xs))[0]
    terms = dispatch.Permute(plan).backward(np.abs(back(grad_xs)))[0]
    assert_sums_close(back(grad_x), want, terms, k, dtype, "permute backward")

    # unpermute forward: y[n] = sum_j w[n, j] ys[row[n, j]]
    y = poisoned_runs(dev, lambda: launch.unpermute(dev.asarray(ys), row, dev.asarray(weight), storage=storage))
    unpermute = dispatch.Unpermute(plan)
    want = unpermute.forward(ys64, w64)
    terms = dispatch.Unpermute(plan).forward(np.abs(ys64), np.abs(w64))
    assert_sums_close(back(y), want, terms, k, dtype, "unpermute")

    # unpermute backward: d ys rows = w * dy (padding rows zero), d w = <dy, ys[row]> (0 if dropped)
    grad_ys, grad_w = poisoned_runs(dev, lambda: launch.unpermute_backward(
        dev.asarray(grad_y), dev.asarray(ys), row, dev.asarray(weight), counts, plan.capacity, storage=storage))
    want_ys, want_w = unpermute.backward(gy64)
    assert_sums_close(back(grad_ys), want_ys, np.abs(want_ys), 1, dtype, "unpermute backward, d ys")
    terms = np.einsum("nkd,nd->nk", np.abs(dispatch._rows_of_slots(ys64, plan)), np.abs(gy64))
    assert_sums_close(back(grad_w), want_w, terms, d, dtype, "unpermute backward, d weight")
    assert np.all(back(grad_w)[~kept] == 0)


def test_misaligned_views_take_one_element_packs(dev, monkeypatch):
    """A contiguous view that starts 4 bytes into its buffer: a 16-byte access would fault on a
    GPU, so the launcher must pick the one-element instance (and still get the answer)."""
    n, d, e, k = 24, 64, 4, 2
    index, _ = routing_case(n, e, k, seed=2)
    plan = dispatch.make_plan(index, e)
    flat = np.random.default_rng(0).standard_normal(n * d + 1).astype(np.float32)
    x = dev.asarray(flat)[1:].reshape(n, d)  # contiguous, but not on a 16-byte boundary
    launched = []
    real_function = launch.function

    def spy(file, kernel):
        launched.append(kernel)
        return real_function(file, kernel)

    monkeypatch.setattr(launch, "function", spy)
    xs = dev.numpy(launch.permute(x, dev.asarray(plan.row), plan.n_rows))
    np.testing.assert_array_equal(xs, dispatch.Permute(plan).forward(flat[1:].reshape(n, d)))
    assert launched == ["permute_rows<unsigned int, 1>"]


# --------------------------------------------------------------------------- through the library (GPU only)

gpu_only = [pytest.mark.gpu, pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")]


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")
@pytest.mark.parametrize("cap", [None, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dispatch_functions_take_the_kernel_path_on_cupy(cap, dtype, monkeypatch):
    import tinymoe as tm
    from tinymoe import kernels

    calls = []

    def spy(name):
        original = getattr(kernels, name)

        def wrapper(*args, **kwargs):
            calls.append(name)
            return original(*args, **kwargs)

        return wrapper

    names = ["make_plan", "permute", "permute_backward", "unpermute", "unpermute_backward"]
    for name in names:
        monkeypatch.setattr(kernels, name, spy(name))
    index, dropped = routing_case(40, 6, 2, drop_fraction=0.2, seed=1)
    rng = np.random.default_rng(0)
    x_np, w_np, g_np = (rng.standard_normal(s).astype(dtype) for s in ((40, 16), (40, 2), (40, 16)))
    results = []
    for device in ("cpu", "cuda"):
        plan = dispatch.make_plan(backend.to_device(index, device), 6, cap, backend.to_device(dropped, device))
        x, w = tm.tensor(x_np, requires_grad=True, device=device), tm.tensor(w_np, requires_grad=True, device=device)
        y = dispatch.unpermute(dispatch.permute(x, plan) * 2.0, plan, w)
        y.backward(backend.to_device(g_np, device))
        results.append([backend.to_numpy(a) for a in (plan.order, plan.row, plan.dropped, y.data, x.grad, w.grad)])
    assert sorted(set(calls)) == sorted(names)  # every step took its kernel
    for name, cpu, gpu in zip(["order", "row", "dropped", "y", "d x", "d w"], *results, strict=True):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")
def test_gpu_make_plan_raises_on_bad_ids_when_dropless():
    with pytest.raises(ValueError, match="expert ids must lie in"):
        dispatch.make_plan(backend.cupy.asarray(np.array([[0, 4]])), 4)


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")
@pytest.mark.parametrize("router", ["topk", "topk-unnormalised", "deepseek-v3", "deepseek-softmax"])
def test_fused_routers_match_the_cpu_routers(router):
    import tinymoe as tm
    from tinymoe.moe import DeepSeekRouter, TopKRouter, losses

    def make():
        tm.manual_seed(0)
        if router.startswith("topk"):
            return TopKRouter(32, 16, 4, normalize=router == "topk")
        score = "sigmoid" if router == "deepseek-v3" else "softmax"
        r = DeepSeekRouter(32, 64, 6, score=score, routed_scale=2.5)
        r.bias.data = (0.02 * np.random.default_rng(1).standard_normal(64)).astype(np.float32)
        return r

    x_np = np.random.default_rng(2).standard_normal((300, 32)).astype(np.float32)
    g_np = np.random.default_rng(3).standard_normal((300, 6 if router.startswith("deep") else 4)).astype(np.float32)
    results = []
    for device in ("cpu", "cuda"):
        r = make().to(device)
        x = tm.tensor(x_np, requires_grad=True, device=device)
        routing = r(x)
        e = routing.probs.shape[1]
        loss = (routing.weight * tm.tensor(g_np, device=device)).sum()
        loss = loss + losses.load_balancing_loss(routing.probs, routing.expert_index, e)  # the probs' path
        loss.backward()
        results.append([backend.to_numpy(a) for a in (routing.probs.data, routing.expert_index, routing.weight.data,
                                                      x.grad, r.w_gate.grad)])
    if router.startswith("topk"):
        assert type(results[1][0]) is np.ndarray
    for name, cpu, gpu in zip(["probs", "index", "weight", "d x", "d w_gate"], *results, strict=True):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-6, err_msg=name)
