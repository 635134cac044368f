"""The launchers: CuPy arrays in, CuPy arrays out, one function per kernel.

Each launcher allocates its outputs with ``cupy.empty`` (never zeros: the kernels write
every element, which the GPU tests check by filling outputs with NaN first), picks the
template instance (storage type, 16-byte pack or not) and the launch shape, and queues the
kernel. None of them reads anything back to the host.

The ``*_applies`` predicates say when the dispatch path may use a kernel; otherwise it runs
its reference array code (which also works on CuPy).

16-bit storage: float16 arrays, ml_dtypes ``bfloat16`` arrays (CuPy 14 and later), or uint16
arrays holding bfloat16 bit patterns with ``storage="bf16"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymoe import backend
from tinymoe.kernels.registry import ITEMSIZE, STORAGE, WORD, enabled, function, name

# the layouts of the .cu files, repeated here because the launch shape depends on them
ROUTER_WARPS_PER_BLOCK, ROUTER_MAX_EXPERTS, ROUTER_MAX_K = 4, 256, 32
PLAN_TILE, PLAN_WARPS_PER_BLOCK, PLAN_MAX_EXPERTS, PLAN_SCAN_THREADS = 256, 4, 1024, 1024
ROW_MAX_THREADS = 256  # PERMUTE_MAX_THREADS and COMBINE_MAX_THREADS
INT32_MAX = 2**31 - 1


def _i32(value) -> np.int32:
    """Kernel arguments are passed by their NumPy type: int parameters need np.int32."""
    return np.int32(value)


def _on_gpu(*arrays) -> bool:
    return all(backend.array_module(a) is not np for a in arrays)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------- router


def router_applies(logits, k: int) -> bool:
    """The fused router handles float32/float64 logits with E <= 256 and k <= 32."""
    return (enabled() and _on_gpu(logits) and logits.ndim == 2 and logits.dtype.name in ("float32", "float64")
            and 1 <= logits.shape[1] <= ROUTER_MAX_EXPERTS and 1 <= k <= min(ROUTER_MAX_K, logits.shape[1]))


def _router_args(score: str, normalize: bool, scale: float, eps: float, dtype):
    if score not in ("softmax", "sigmoid"):
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    real = dtype.type
    return _i32(score == "sigmoid"), _i32(bool(normalize)), real(scale), real(eps)


def router_topk(logits, k: int, score: str = "softmax", normalize: bool = True, scale: float = 1.0,
                bias=None, eps: float = 0.0):
    """scores (N, E), index (N, k) int64, weight (N, k) from logits (N, E): router.cu.

    bias (E,) changes the choice only (DeepSeek-V3); None means zeros."""
    cp = backend.cupy
    logits = cp.ascontiguousarray(logits)
    n, e = logits.shape
    bias = cp.zeros(e, logits.dtype) if bias is None else cp.ascontiguousarray(cp.asarray(bias, logits.dtype))
    scores = cp.empty_like(logits)
    index = cp.empty((n, k), cp.int64)
    weight = cp.empty((n, k), logits.dtype)
    if n:
        kernel = function("router.cu", name("router_topk", STORAGE[logits.dtype.name]))
        kernel((_cdiv(n, ROUTER_WARPS_PER_BLOCK),), (32 * ROUTER_WARPS_PER_BLOCK,),
               (logits, bias, scores, index, weight, _i32(n), _i32(e), _i32(k),
                *_router_args(score, normalize, scale, eps, logits.dtype)))
    return scores, index, weight


def router_topk_backward(scores, index, grad_weight, score: str = "softmax", normalize: bool = True,
                         scale: float = 1.0, eps: float = 0.0):
    """d logits (N, E) from d weight (N, k), given the forward's scores and index."""
    cp = backend.cupy
    scores = cp.ascontiguousarray(scores)
    index = cp.ascontiguousarray(index, dtype=cp.int64)
    grad_weight = cp.ascontiguousarray(grad_weight, dtype=scores.dtype)
    n, e = scores.shape
    k = index.shape[1]
    grad_logits = cp.empty_like(scores)
    if n:
        kernel = function("router.cu", name("router_topk_backward", STORAGE[scores.dtype.name]))
        kernel((_cdiv(n, ROUTER_WARPS_PER_BLOCK),), (32 * ROUTER_WARPS_PER_BLOCK,),
               (scores, index, grad_weight, grad_logits, _i32(n), _i32(e), _i32(k),
                *_router_args(score, normalize, scale, eps, scores.dtype)))
    return grad_logits


# ----------------------------------------------------------------------------- routing metadata


def plan_applies(expert_index, n_experts: int) -> bool:
    """plan.cu counts in shared memory: E <= 1024; and slot ids must fit in int32."""
    if not (enabled() and _on_gpu(expert_index) and expert_index.ndim == 2):
        return False
    n_slots = expert_index.shape[0] * expert_index.shape[1]
    n_tiles = _cdiv(n_slots, PLAN_TILE)
    return 1 <= n_experts <= PLAN_MAX_EXPERTS and n_slots + PLAN_TILE <= INT32_MAX and n_experts * n_tiles <= INT32_MAX


def _ids_and_mask(expert_index, dropped):
    cp = backend.cupy
    ids = cp.ascontiguousarray(expert_index, dtype=cp.int64)
    mask = cp.zeros(ids.shape, bool) if dropped is None else cp.ascontiguousarray(dropped, dtype=bool)
    return ids, mask


def _count_and_scan(ids, mask, n_experts: int, choice_major: bool, invalid):
    """Phases 1 and 2 of plan.cu: the scanned (E x T) table, offsets (E + 1,) and counts (E,)."""
    cp = backend.cupy
    n, k = ids.shape
    n_tiles = _cdiv(n * k, PLAN_TILE)
    table = cp.empty(n_experts * n_tiles, cp.int32)  # plan_count writes every entry
    offsets = cp.empty(n_experts + 1, cp.int64)
    counts = cp.empty(n_experts, cp.int64)
    blocks = _cdiv(n_tiles, PLAN_WARPS_PER_BLOCK)
    function("plan.cu", "plan_count")(
        (blocks,), (32 * PLAN_WARPS_PER_BLOCK,),
        (ids, mask, _i32(n), _i32(k), _i32(n_experts), _i32(choice_major), table, invalid))
    function("plan.cu", "plan_scan")(
        (1,), (PLAN_SCAN_THREADS,), (table, _i32(n_experts), _i32(n_tiles), offsets, counts))
    return table, offsets, counts, blocks


def capacity_drop(expert_index, n_experts: int, capacity: int, dropped=None, invalid=None):
    """(N, k) drop mask with at most ``capacity`` slots per expert, GShard priority.

    An id outside [0, E) counts as dropped and sets ``invalid[0] = 1`` (if given)."""
    cp = backend.cupy
    ids, before = _ids_and_mask(expert_index, dropped)
    n, k = ids.shape
    if n * k == 0:
        return before.copy()
    invalid = cp.zeros(1, cp.int64) if invalid is None else invalid
    table, offsets, _, blocks = _count_and_scan(ids, before, n_experts, True, invalid)
    out = cp.empty((n, k), bool)
    function("plan.cu", "plan_capacity_drop")(
        (blocks,), (32 * PLAN_WARPS_PER_BLOCK,),
        (ids, before, _i32(n), _i32(k), _i32(n_experts), _i32(capacity), table, offsets, out, invalid))
    return out


@dataclass
class PlanArrays:
    """make_plan's arrays, still on the GPU. ``order`` has room for all N*k slots; its first
    ``offsets[-1]`` entries are the plan's order (that number stays on the GPU). ``invalid``
    (1,) is 1 if some expert id was outside [0, E)."""

    order: object
    counts: object
    offsets: object
    row: object
    dropped: object
    invalid: object


def make_plan(expert_index, n_experts: int, capacity: int | None = None, dropped=None) -> PlanArrays:
    """plan.cu: the arrays of ``tinymoe.moe.dispatch.make_plan``, computed on the GPU."""
    cp = backend.cupy
    ids, mask = _ids_and_mask(expert_index, dropped)
    n, k = ids.shape
    invalid = cp.zeros(1, cp.int64)
    if n * k == 0:  # nothing to sort (a launch needs at least one block)
        zeros = cp.zeros(n_experts + 1, cp.int64)
        return PlanArrays(cp.empty(0, cp.int64), zeros[:-1], zeros, cp.empty((n, k), cp.int64), mask, invalid)
    if capacity is not None:
        mask = capacity_drop(ids, n_experts, capacity, mask, invalid)
    table, offsets, counts, blocks = _count_and_scan(ids, mask, n_experts, False, invalid)
    row = cp.empty((n, k), cp.int64)
    order = cp.empty(n * k, cp.int64)
    function("plan.cu", "plan_place")(
        (blocks,), (32 * PLAN_WARPS_PER_BLOCK,),
        (ids, mask, _i32(n), _i32(k), _i32(n_experts), _i32(capacity or 0), table, offsets, row, order, invalid))
    return PlanArrays(order, counts, offsets, row, mask, invalid)


# ----------------------------------------------------------------------------- permute and combine


def _storage(array, storage: str | None) -> str:
    """The common.cuh type of an array: by dtype, or uint16 bit patterns with storage="bf16"."""
    if storage == "bf16":
        if array.dtype.itemsize != 2:
            raise TypeError(f"storage='bf16' needs 16-bit arrays (uint16 bit patterns), got {array.dtype}")
        return "bf16_t"
    if storage is not None:
        raise ValueError(f"storage must be None or 'bf16', got {storage!r}")
    if array.dtype.name not in STORAGE:
        raise TypeError(f"the row kernels store {sorted(STORAGE)}, got {array.dtype}")
    return STORAGE[array.dtype.name]


def rows_apply(*arrays) -> bool:
    """permute/combine kernels: CuPy 2-D arrays of one supported float dtype, rows of width >= 1."""
    return (enabled() and _on_gpu(*arrays) and all(a.ndim == 2 for a in arrays)
            and len({a.dtype for a in arrays}) == 1 and arrays[0].dtype.name in STORAGE and arrays[0].shape[1] >= 1)


def _address(array) -> int:
    data = array.data
    return data.ptr if hasattr(data, "ptr") else array.ctypes.data  # CuPy, or NumPy in the CPU emulator


def _row_launch(d: int, itemsize: int, *arrays) -> tuple[int, int]:
    """(pack, threads): 16-byte packs when the row width allows and every array starts on a
    16-byte boundary (a view may not), else one element; a warp-multiple of threads <= 256."""
    wide = 16 // itemsize
    pack = wide if d % wide == 0 and all(_address(a) % 16 == 0 for a in arrays) else 1
    threads = min(ROW_MAX_THREADS, 32 * _cdiv(d // pack, 32))
    return pack, threads


def _zero_padding(buffer, counts, capacity: int) -> None:
    """Capacity mode: zero the rows past each expert's count (permute.cu, zero_padding_rows)."""
    rows, d = buffer.shape
    if rows == 0:
        return
    pack, threads = _row_launch(d, buffer.dtype.itemsize, buffer)
    kernel = function("permute.cu", name("zero_padding_rows", WORD[buffer.dtype.itemsize], pack))
    kernel((rows,), (threads,), (buffer, counts, _i32(capacity), _i32(d)))


def permute(x, row, n_rows: int, counts=None, capacity: int | None = None):
    """xs (n_rows, d): x[n] copied to xs[row[n, j]] for each kept slot (permute.cu).

    With a capacity, the padding rows are zeroed (needs ``counts``)."""
    cp = backend.cupy
    x = cp.ascontiguousarray(x)
    row = cp.ascontiguousarray(row, dtype=cp.int64)
    n, d = x.shape
    xs = cp.empty((n_rows, d), x.dtype)
    if n and n_rows:
        pack, threads = _row_launch(d, x.dtype.itemsize, x, xs)
        kernel = function("permute.cu", name("permute_rows", WORD[x.dtype.itemsize], pack))
        kernel((n,), (threads,), (x, row, xs, _i32(row.shape[1]), _i32(d)))
    if capacity is not None:
        _zero_padding(xs, cp.ascontiguousarray(counts, dtype=cp.int64), capacity)
    return xs


def permute_backward(grad_xs, row, storage: str | None = None):
    """dx (N, d): each token's sum of the gradients of its copies (permute.cu)."""
    cp = backend.cupy
    grad_xs = cp.ascontiguousarray(grad_xs)
    row = cp.ascontiguousarray(row, dtype=cp.int64)
    (n, k), d = row.shape, grad_xs.shape[1]
    grad_x = cp.empty((n, d), grad_xs.dtype)
    if n:
        t = _storage(grad_xs, storage)
        pack, threads = _row_launch(d, ITEMSIZE[t], grad_xs, grad_x)
        kernel = function("permute.cu", name("permute_backward", t, pack))
        kernel((n,), (threads,), (grad_xs, row, grad_x, _i32(k), _i32(d)))
    return grad_x


def unpermute(ys, row, weight, storage: str | None = None):
    """y (N, d) = sum over kept j of weight[n, j] * ys[row[n, j]] (combine.cu)."""
    cp = backend.cupy
    ys = cp.ascontiguousarray(ys)
    row = cp.ascontiguousarray(row, dtype=cp.int64)
    weight = cp.ascontiguousarray(weight)
    (n, k), d = row.shape, ys.shape[1]
    y = cp.empty((n, d), ys.dtype)
    if n:
        t = _storage(ys, storage)
        pack, threads = _row_launch(d, ITEMSIZE[t], ys, y)
        kernel = function("combine.cu", name("unpermute_combine", t, pack))
        kernel((n,), (threads,), (ys, row, weight, y, _i32(k), _i32(d)))
    return y


def unpermute_backward(grad_y, ys, row, weight, counts=None, capacity: int | None = None,
                       storage: str | None = None):
    """(d ys (rows, d), d weight (N, k)) of the weighted combine (combine.cu).

    With a capacity, the padding rows of d ys are zeroed (needs ``counts``)."""
    cp = backend.cupy
    grad_y = cp.ascontiguousarray(grad_y)
    ys = cp.ascontiguousarray(ys)
    row = cp.ascontiguousarray(row, dtype=cp.int64)
    weight = cp.ascontiguousarray(weight)
    (n, k), d = row.shape, ys.shape[1]
    grad_ys = cp.empty_like(ys)
    grad_weight = cp.empty((n, k), weight.dtype)
    if n:
        t = _storage(ys, storage)
        pack, threads = _row_launch(d, ITEMSIZE[t], grad_y, ys, grad_ys)
        kernel = function("combine.cu", name("unpermute_backward", t, pack))
        kernel((n,), (threads,), (grad_y, ys, row, weight, grad_ys, grad_weight, _i32(k), _i32(d)))
    if capacity is not None:
        _zero_padding(grad_ys, cp.ascontiguousarray(counts, dtype=cp.int64), capacity)
    return grad_ys, grad_weight
