"""Our CUDA kernels for the dispatch path, and the Python that launches them (with CuPy).

    router.cu    fused softmax/sigmoid + top-k (+ renormalise, scale), and its backward
    plan.cu      make_plan as a counting sort (count per tile, scan, place; GShard capacity)
    permute.cu   token rows -> expert-grouped buffer with 16-byte copies, and the backward
    combine.cu   unpermute + weighted combine (fp32 sums, no atomics), and the backward
    common.cuh   storage types (float32/64, float16, bfloat16), 16-byte packs, warp sums

Every kernel has a NumPy spec that the tests compare it with: ``tinymoe/moe/dispatch.py``
for the plan, permute and combine, and ``tinymoe/kernels/spec.py`` for the router (plus a
NumPy walk-through of the counting sort, phase by phase, for lesson 09).

Who uses this package: ``tinymoe/moe/dispatch.py`` (and, through it, the routers) take the
kernel path when their arrays are CuPy arrays; nothing here imports from ``tinymoe.moe``.
Importing this package never imports CuPy: the sources are compiled by NVRTC (through
``cupy.RawModule``) the first time a kernel of the file is launched, then cached by CuPy.

    with tinymoe.kernels.disabled():   # run the reference array code on CuPy instead
        ...
"""

from __future__ import annotations

import contextlib

from tinymoe.kernels.launch import (
    capacity_drop,
    make_plan,
    permute,
    permute_backward,
    plan_applies,
    router_applies,
    router_topk,
    router_topk_backward,
    rows_apply,
    unpermute,
    unpermute_backward,
)
from tinymoe.kernels.registry import KERNEL_DIR, NAME_EXPRESSIONS, SOURCES, enabled, set_enabled, source

__all__ = [
    "KERNEL_DIR", "NAME_EXPRESSIONS", "SOURCES", "capacity_drop", "disabled", "enabled", "make_plan", "permute",
    "permute_backward", "plan_applies", "router_applies", "router_topk", "router_topk_backward", "rows_apply",
    "set_enabled", "source", "unpermute", "unpermute_backward",
]  # fmt: skip


@contextlib.contextmanager
def disabled():
    """Inside this block the dispatch path runs its reference array code (on CuPy too):
    what the benchmark compares the kernels with."""
    previous = enabled()
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)

