"""The dispatch path: send each token to its experts and bring the answers back.

Three steps, named for what they do:

    plan = make_plan(expert_index, n_experts, capacity)   # who goes where (no gradient)
    xs   = permute(x, plan)                                # token rows, grouped by expert
    y    = unpermute(ys, plan, weight)                     # y_n = sum_j w_nj * ys[row(n, j)]

``make_plan`` is a counting sort of the N*k (token, choice) slots by expert id: count the
slots per expert (a histogram), take the running sum (offsets: where each expert's rows
start), and give every slot its rank inside its expert. It is *stable*, so inside an
expert the rows keep (token, choice) order: every backend produces the same layout.

Two buffer layouts:
- dropless (``capacity=None``): the kept rows back to back, expert e's rows at
  ``offsets[e]:offsets[e+1]``; each expert runs one matmul on its contiguous slice.
- capacity mode: a padded (E * C, d) buffer, expert e's rows at ``e*C : e*C + counts[e]``,
  the rest zeros; all experts run as one batched matmul on (E, C, d).

Capacity priority (GShard): first choices fill the buffers before second choices, each in
token order; slots past an expert's capacity are dropped and contribute exactly zero (the
residual connection around the layer carries those tokens).

This file is the NumPy reference ("spec"); the CuPy kernels of the GPU path must
reproduce it exactly. ``dense_moe`` is the naive per-expert loop, the oracle the tests
compare every dispatcher with.

The GPU path. When the arrays are CuPy arrays, each step runs our CUDA kernels
(``tinymoe/kernels``, lesson 09) instead of the array code below: ``make_plan`` a counting
sort (plan.cu), ``permute`` one read of each token row and k 16-byte-wide writes
(permute.cu), ``unpermute`` one block per token summing in fp32 without atomics (combine.cu),
and the routers' softmax/sigmoid + top-k one fused kernel (router.cu, via ``fused_topk``).
The array code stays as the readable reference, and runs on CuPy too where no kernel applies
or inside ``tinymoe.kernels.disabled()``.

Host synchronisation on the GPU path (the CPU waiting for the GPU to read a number back):
none in capacity mode; one in dropless mode, where the buffer has as many rows as kept
slots and ``make_plan`` reads that count back (with a flag for out-of-range expert ids, so
that they raise as on the CPU). The experts' grouped matmul reads the offsets back too,
since each expert's ``cupy.matmul`` needs its slice bounds on the host.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from tinymoe import functional as F
from tinymoe import kernels
from tinymoe.backend import array_module
from tinymoe.ops.elementwise import sigmoid_backward
from tinymoe.ops.nn import softmax_backward
from tinymoe.tensor import Function, Tensor
from tinymoe.validate import integer, real


def capacity(capacity_factor: float, n_tokens: int, n_experts: int, k: int = 1) -> int:
    """Expert capacity C = ceil(capacity_factor * k * N / E) (tokens per expert per group)."""
    real("capacity", "capacity_factor", capacity_factor, 0, low_open=True)
    n_tokens, n_experts = integer("capacity", "n_tokens", n_tokens, 0), integer("capacity", "n_experts", n_experts, 1)
    k = integer("capacity", "k", k, 1)
    # exact arithmetic on the factor as written: 1.1 * 2 * 25 / 5 is 11 (floats say 11.000000000000002)
    return max(1, math.ceil(Fraction(str(capacity_factor)) * k * n_tokens / n_experts))


class Plan:
    """Where every (token, choice) slot goes. Arrays are NumPy or CuPy, like the input.

    order:    (R,) the slot id (token * k + choice) of each kept row, in buffer order
    counts:   (E,) kept rows per expert
    offsets:  (E + 1,) start of each expert's rows in the buffer (dropless layout)
    row:      (N, k) the buffer row of each slot, -1 where dropped
    dropped:  (N, k) bool
    capacity: rows per expert in capacity mode, None when dropless

    On the GPU in capacity mode, ``order`` is cut to its length R only when first asked
    for (reading R back from the GPU): the kernels never need it, they use ``row``.
    """

    def __init__(self, order, counts, offsets, row, dropped, n_experts: int, capacity: int | None):
        self._order = order  # an array, or a function that makes it (GPU capacity mode)
        self.counts, self.offsets, self.row, self.dropped = counts, offsets, row, dropped
        self.n_experts, self.capacity = n_experts, capacity

    @property
    def order(self):
        if callable(self._order):
            self._order = self._order()
        return self._order

    def __repr__(self):
        return (f"Plan(n_tokens={self.n_tokens}, k={self.k}, n_experts={self.n_experts}, "
                f"capacity={self.capacity}, n_rows={self.n_rows})")

    @property
    def n_tokens(self) -> int:
        return self.row.shape[0]

    @property
    def k(self) -> int:
        return self.row.shape[1]

    @property
    def n_rows(self) -> int:
        """Rows of the permuted buffer: kept slots (dropless) or E * C (capacity mode)."""
        return len(self.order) if self.capacity is None else self.n_experts * self.capacity


def _stable_sort_by_expert(expert_ids, n_experts: int):
    """Indices that sort ``expert_ids`` (1-D) by value, equal values keeping their order.

    NumPy's stable sort of 16-bit integers is a radix sort: a counting sort, O(n)."""
    xp = array_module(expert_ids)
    narrow = xp.int16 if n_experts < 2**15 else xp.int32
    return xp.argsort(expert_ids.astype(narrow), kind="stable")


def _rank_within_expert(expert_ids, n_experts: int):
    """For each slot, how many earlier slots (in the given order) chose the same expert.

    Ids equal to ``n_experts`` mark slots that take no place (already dropped)."""
    xp = array_module(expert_ids)
    sort = _stable_sort_by_expert(expert_ids, n_experts)
    counts = xp.bincount(expert_ids, minlength=n_experts + 1)
    starts = xp.cumsum(counts) - counts  # first sorted position of each expert
    rank = xp.empty_like(sort)
    rank[sort] = xp.arange(len(sort)) - starts[expert_ids[sort]]
    return rank


def capacity_drop(expert_index, n_experts: int, capacity: int, dropped=None):
    """The (N, k) drop mask when each expert takes at most ``capacity`` slots (GShard).

    Priority: all first choices in token order, then all second choices, and so on; slots
    in ``dropped`` (already dropped by the router) take no place.
    """
    n_experts = integer("capacity_drop", "n_experts", n_experts, 1)
    capacity = integer("capacity_drop", "capacity", capacity, 1)
    xp = array_module(expert_index)
    if xp is not np and kernels.plan_applies(expert_index, n_experts):  # GPU: plan.cu, phases 1, 2, drop
        return kernels.capacity_drop(expert_index, n_experts, capacity, dropped)
    n, k = expert_index.shape
    dropped = xp.zeros((n, k), bool) if dropped is None else dropped
    ids = xp.where(dropped, n_experts, expert_index).T.reshape(-1)  # choice-major order
    rank = _rank_within_expert(ids, n_experts).reshape(k, n).T
    return dropped | (rank >= capacity)


def make_plan(expert_index, n_experts: int, capacity: int | None = None, dropped=None) -> Plan:
    """Build the dispatch plan (see the module docstring). Not differentiable: indices only.

    expert_index: (N, k) int, each token's chosen experts, best first.
    capacity:     rows per expert; slots beyond it are dropped, first choices first.
    dropped:      (N, k) bool, slots the router already dropped (e.g. GShard's random
                  second expert); they take no capacity.
    """
    xp = array_module(expert_index)
    if expert_index.ndim != 2:
        raise ValueError(f"make_plan: expert_index must be (N, k), got shape {tuple(expert_index.shape)}")
    n_experts = integer("make_plan", "n_experts", n_experts, 1)
    if capacity is not None:
        capacity = integer("make_plan", "capacity", capacity, 1)
    if xp is not np and kernels.plan_applies(expert_index, n_experts):
        return _make_plan_on_gpu(expert_index, n_experts, capacity, dropped)
    if expert_index.size:
        low, high = int(expert_index.min()), int(expert_index.max())
        if low < 0 or high >= n_experts:
            raise ValueError(f"make_plan: expert ids must lie in [0, {n_experts}), got {low if low < 0 else high}")
    n, k = expert_index.shape
    if capacity is not None:
        dropped = capacity_drop(expert_index, n_experts, capacity, dropped)
    elif dropped is None:
        dropped = xp.zeros((n, k), bool)
    # the buffer layout: kept slots sorted by expert, (token, choice) order inside
    flat = xp.where(dropped, n_experts, expert_index).reshape(-1)
    counts = xp.bincount(flat, minlength=n_experts + 1)[:n_experts]
    offsets = xp.concatenate([xp.zeros(1, counts.dtype), xp.cumsum(counts)])
    n_kept = int(offsets[-1])
    order = _stable_sort_by_expert(flat, n_experts)[:n_kept]
    rows = xp.arange(n_kept)
    if capacity is not None:  # expert e's rows start at e * C in the padded buffer
        rows = rows - offsets[flat[order]] + flat[order] * capacity
    row = xp.full(n * k, -1, dtype=rows.dtype)
    row[order] = rows
    return Plan(order, counts, offsets, row.reshape(n, k), dropped, n_experts, capacity)


def _make_plan_on_gpu(expert_index, n_experts: int, capacity, dropped) -> Plan:
    """The same plan from plan.cu's counting sort (tinymoe/kernels/plan.cu).

    Dropless: one host sync, reading back the number of kept slots (the buffer's rows) and
    the out-of-range-id flag. Capacity mode: none; out-of-range ids are not reported there
    (a check would be a sync) but are safe: such a slot is dropped and no kernel addresses
    memory with it."""
    a = kernels.make_plan(expert_index, n_experts, capacity, dropped)
    if capacity is None:
        cupy = array_module(a.offsets)
        n_kept, invalid = (int(v) for v in cupy.concatenate([a.offsets[-1:], a.invalid]).get())  # the sync
        if invalid:
            raise ValueError(f"make_plan: expert ids must lie in [0, {n_experts}), got ids outside it")
        return Plan(a.order[:n_kept], a.counts, a.offsets, a.row, a.dropped, n_experts, None)
    order, offsets = a.order, a.offsets
    return Plan(lambda: order[: int(offsets[-1])], a.counts, a.offsets, a.row, a.dropped, n_experts, capacity)


def _rows_of_slots(rows, plan: Plan):
    """(N, k, d): the buffer row of every (token, choice) slot, zeros where it was dropped.

    One gather (no zero-filled buffer and scatter): a dropped slot reads row 0, then is zeroed."""
    xp = array_module(rows)
    if rows.shape[0] == 0:  # every slot dropped (dropless plan): nothing to read
        return xp.zeros((*plan.row.shape, rows.shape[-1]), rows.dtype)
    out = xp.take(rows, xp.where(plan.dropped, 0, plan.row), axis=0)
    out[plan.dropped] = 0
    return out


class Permute(Function):
    """xs[r] = x[token of row r]: each token row copied once per kept choice.

    Backward: each token sums the gradients of its copies. A token has at most k copies,
    so gather each slot's row of the gradient, (N, k, d), and sum over k: no scatter-add.
    """

    def __init__(self, plan: Plan):
        self.plan = plan

    def forward(self, x):
        plan, xp = self.plan, array_module(x)
        if xp is not np and kernels.rows_apply(x):  # GPU: permute.cu, each token row read once
            return kernels.permute(x, plan.row, plan.n_rows, plan.counts, plan.capacity)
        copies = xp.take(x, plan.order // plan.k, axis=0)  # the token of every kept slot, buffer order
        if plan.capacity is None:
            return copies
        xs = xp.zeros((plan.n_rows, x.shape[-1]), x.dtype)  # padding rows stay zero
        xs[plan.row.reshape(-1)[plan.order]] = copies
        return xs

    def backward(self, g):
        if array_module(g) is not np and kernels.rows_apply(g):  # GPU: permute.cu, gather and sum
            return (kernels.permute_backward(g, self.plan.row),)
        return (_rows_of_slots(g, self.plan).sum(axis=1),)


class Unpermute(Function):
    """The weighted combine: y_n = sum_j w_nj ys[row(n, j)], dropped slots adding nothing.

    Backward: d ys[row(n, j)] = w_nj g_n (each row belongs to one slot, so a plain write)
    and d w_nj = <g_n, ys[row(n, j)]> (the gradient the router learns from).
    """

    def __init__(self, plan: Plan):
        self.plan = plan

    def forward(self, ys, weight):
        xp = array_module(ys)
        self.ys, self.weight, self.gathered = ys, weight, None
        if xp is not np and kernels.rows_apply(ys, weight):  # GPU: combine.cu, one block per token
            return kernels.unpermute(ys, self.plan.row, weight)
        self.gathered = _rows_of_slots(ys, self.plan)  # the expert outputs back in (token, choice) slots
        return xp.einsum("nk,nkd->nd", weight, self.gathered)  # no (N, k, d) temporary

    def backward(self, g):
        plan, xp = self.plan, array_module(g)
        if self.gathered is None:  # the forward ran combine.cu: so does the backward
            return kernels.unpermute_backward(g, self.ys, plan.row, self.weight, plan.counts, plan.capacity)
        g_weight = xp.einsum("nkd,nd->nk", self.gathered, g)  # <ys[row(n, j)], g_n>, 0 where dropped
        kept = plan.order
        per_row = self.weight.reshape(-1)[kept, None] * xp.take(g, kept // plan.k, axis=0)  # buffer order
        if plan.capacity is None:  # dropless: the kept slots are the buffer's rows, in order
            return per_row, g_weight
        g_ys = xp.zeros((plan.n_rows, g.shape[-1]), per_row.dtype)  # padding rows get no gradient
        g_ys[plan.row.reshape(-1)[kept]] = per_row
        return g_ys, g_weight


class RouterScores(Function):
    """The router's scores, already computed by the fused kernel: softmax or sigmoid of the
    logits. Backward: softmax p (g - sum g p), sigmoid g p (1 - p) (the balance losses' path)."""

    def __init__(self, scores, score: str):
        self.scores, self.score = scores, score

    def forward(self, logits):
        return self.scores

    def backward(self, g):
        if self.score == "sigmoid":
            return (sigmoid_backward(self.scores, g),)
        return (softmax_backward(self.scores, g),)


class RouterWeights(Function):
    """The combine weights from the fused kernel; backward: router.cu's d logits from d weight
    (through the chosen scores, the renormalisation and the scale; never through the choice)."""

    def __init__(self, scores, index, weight, score: str, normalize: bool, scale: float, eps: float):
        self.scores, self.index, self.weight = scores, index, weight
        self.options = dict(score=score, normalize=normalize, scale=scale, eps=eps)

    def forward(self, logits):
        return self.weight

    def backward(self, g):
        return (kernels.router_topk_backward(self.scores, self.index, g, **self.options),)


def fused_topk(logits: Tensor, k: int, score: str = "softmax", normalize: bool = True, scale: float = 1.0,
               bias=None, eps: float = 0.0):
    """Scores, top-k and weights of a router in one GPU kernel (router.cu), or None where it
    does not apply (NumPy arrays, E > 256, k > 32, kernels disabled): the router then runs its
    reference ops. Returns (probs Tensor (N, E), index (N, k) int64 array, weight Tensor (N, k)).

    Mirrors the routers: scores = softmax or sigmoid; the k largest of scores + bias (ties to
    the lowest index); weight = chosen scores, / (their sum + eps) if normalize, * scale."""
    if not kernels.router_applies(logits.data, k):
        return None
    scores, index, weight = kernels.router_topk(logits.data, k, score, normalize, scale, bias, eps)
    probs = RouterScores(scores, score)(logits)
    weight = RouterWeights(scores, index, weight, score, normalize, scale, eps)(logits)
    return probs, index, weight


def permute(x: Tensor, plan: Plan) -> Tensor:
    """(N, d) tokens -> (rows, d) buffer grouped by expert (see ``make_plan``)."""
    if x.ndim != 2 or x.shape[0] != plan.n_tokens:
        raise ValueError(f"permute: x must be (N, d) with N = {plan.n_tokens}, got shape {x.shape}")
    return Permute(plan)(x)


def unpermute(ys: Tensor, plan: Plan, weight) -> Tensor:
    """(rows, d) expert outputs and (N, k) combine weights -> (N, d) weighted sums."""
    if ys.shape[0] != plan.n_rows:
        raise ValueError(f"unpermute: ys must have {plan.n_rows} rows (the plan's buffer), got {ys.shape[0]}")
    if tuple(weight.shape) != plan.row.shape:
        raise ValueError(f"unpermute: weight must be (N, k) = {plan.row.shape}, got {tuple(weight.shape)}")
    return Unpermute(plan)(ys, weight)


def dense_moe(x: Tensor, expert_index, weight, expert_fn, n_experts: int, dropped=None) -> Tensor:
    """The naive oracle: loop over experts, pick each one's tokens with a mask, run it, add.

    y_n = sum over kept slots (n, j) of weight[n, j] * expert_fn(expert_index[n, j], x_n).
    Slow but obviously right; every dispatcher is tested against it (and lesson 08 starts
    here). ``expert_fn(e, rows)`` must map (n, d) to (n, d), as the experts of an MoE layer do.
    """
    n_experts = integer("dense_moe", "n_experts", n_experts, 1)
    xp = array_module(expert_index)
    kept = ~dropped if dropped is not None else xp.ones(expert_index.shape, bool)
    y = Tensor(xp.zeros(x.shape, x.dtype))
    for e in range(n_experts):
        token, choice = xp.nonzero((expert_index == e) & kept)
        if len(token) == 0:
            continue
        out = expert_fn(e, x[token]) * F.unsqueeze(weight[token, choice], -1)
        y = F.index_add(y, token, out, axis=0)
    return y
