"""NumPy specs of the kernels, written to mirror their math (the GPU tests compare with them).

- ``router_topk`` / ``router_topk_backward``: router.cu, operation for operation. The CPU
  routers (``TopKRouter``, ``DeepSeekRouter``) compute the same thing with autograd ops; a
  CPU test checks that they agree.
- ``counting_sort_plan``: plan.cu's three phases (count per tile, scan, place), with their
  intermediate tables, so lesson 09 can show each step. A CPU test checks that it gives
  exactly ``make_plan``'s plan. (The spec of the plan itself is ``make_plan`` in
  ``tinymoe/moe/dispatch.py``; permute and combine have theirs there too.)
"""

from __future__ import annotations

import numpy as np


def router_topk(logits, k: int, score: str = "softmax", normalize: bool = True, scale: float = 1.0,
                bias=None, eps: float = 0.0):
    """scores (N, E), index (N, k), weight (N, k), as router.cu computes them.

        scores = softmax(logits) = exp(x - max) / sum,  or sigmoid(logits) = 1 / (1 + exp(-x))
        index  = the k largest of scores + bias, best first; ties to the lowest expert id
        weight = scores[index] / (sum of them + eps) if normalize else scores[index], times scale
    """
    x = np.asarray(logits)
    real = x.dtype.type
    if score == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        scores = e / e.sum(axis=-1, keepdims=True)
    elif score == "sigmoid":
        scores = real(1) / (real(1) + np.exp(-x))
    else:
        raise ValueError(f"score must be 'softmax' or 'sigmoid', got {score!r}")
    choose = scores if bias is None else scores + np.asarray(bias, x.dtype)
    choose = np.where(np.isnan(choose), -np.inf, choose)  # a NaN never wins
    index = np.argsort(-choose, axis=-1, kind="stable")[:, :k]  # stable: ties keep index order
    chosen = np.take_along_axis(scores, index, axis=-1)
    weight = chosen / (chosen.sum(axis=-1, keepdims=True) + real(eps)) if normalize else chosen
    return scores, index, weight * real(scale)


def router_topk_backward(scores, index, grad_weight, score: str = "softmax", normalize: bool = True,
                         scale: float = 1.0, eps: float = 0.0):
    """d logits (N, E) from d weight (N, k), as router.cu's backward computes it.

        u_r = scale * g_r                                                    (not normalised)
        u_r = scale * (g_r - sum_j g_j s_j / D) / D,   D = sum_j s_j + eps   (normalised)
        softmax: d logit_e = s_e (u(e) - sum_r u_r s_r);  sigmoid: d logit_e = u(e) s_e (1 - s_e)
    with s_r the chosen scores and u(e) = u_r at e = index_r, 0 elsewhere.
    """
    scores, g = np.asarray(scores), np.asarray(grad_weight)
    real = scores.dtype.type
    chosen = np.take_along_axis(scores, index, axis=-1)
    if normalize:
        denom = chosen.sum(axis=-1, keepdims=True) + real(eps)
        c = (g * chosen).sum(axis=-1, keepdims=True) / denom
        u = real(scale) * (g - c) / denom
    else:
        u = real(scale) * g
    du = np.zeros_like(scores)
    np.put_along_axis(du, index, u, axis=-1)
    if score == "sigmoid":
        return du * scores * (real(1) - scores)
    return scores * (du - (u * chosen).sum(axis=-1, keepdims=True))


# ----------------------------------------------------------------------------- the counting sort


def _count_and_scan(keys, n_experts: int, tile: int):
    """Phases 1 and 2 over a walk of keys (n_experts = no place): the per-tile histogram
    table (E, T), its exclusive scan in expert-major order, offsets (E + 1,) and counts (E,)."""
    n_tiles = -(-len(keys) // tile)
    padded = np.full(n_tiles * tile, n_experts)
    padded[: len(keys)] = keys
    tiles = padded.reshape(n_tiles, tile)
    table = np.stack([(tiles == e).sum(axis=1) for e in range(n_experts)])  # (E, T)
    flat = table.reshape(-1)  # expert-major: e0's tiles, then e1's, ...
    scanned = (np.cumsum(flat) - flat).reshape(n_experts, n_tiles)
    offsets = np.append(scanned[:, 0], flat.sum()) if n_tiles else np.zeros(n_experts + 1, np.int64)
    return table, scanned, offsets, np.diff(offsets)


def _ranks_in_tile(keys, n_experts: int, tile: int):
    """For each position, how many earlier positions of its tile hold the same key (the
    chunk-by-chunk ``rank_in_tile`` of plan.cu gives exactly this)."""
    ranks = np.empty(len(keys), np.int64)
    for start in range(0, len(keys), tile):
        seen = np.zeros(n_experts + 1, np.int64)
        for i in range(start, min(start + tile, len(keys))):
            ranks[i] = seen[keys[i]]
            seen[keys[i]] += 1
    return ranks


def counting_sort_plan(expert_index, n_experts: int, capacity: int | None = None, dropped=None, tile: int = 256):
    """make_plan's arrays the way plan.cu computes them, keeping every intermediate step.

    Returns a dict: ``order``, ``counts``, ``offsets``, ``row``, ``dropped`` (as make_plan),
    and the steps: ``keys`` (the expert of each slot, E where it takes no place), ``table``
    (per-tile counts, (E, T)), ``scanned`` (its expert-major exclusive scan), ``rank_in_tile``
    and ``position``; with a capacity also ``priority_*`` (the same for the choice-major walk).
    """
    index = np.asarray(expert_index)
    n, k = index.shape
    mask = np.zeros((n, k), bool) if dropped is None else np.asarray(dropped, bool).copy()
    steps = {}
    slots = np.arange(n * k)
    tiles_of = slots // tile  # the tile of each walk position
    if capacity is not None:  # GShard: walk all first choices, then all second choices, ...
        walk = (slots % n) * k + slots // n  # the slot at each position of the choice-major walk
        keys = np.where(mask.reshape(-1)[walk], n_experts, index.reshape(-1)[walk])
        table, scanned, offsets, _ = _count_and_scan(keys, n_experts, tile)
        rank = _ranks_in_tile(keys, n_experts, tile)
        kept = keys < n_experts
        in_expert = np.full(n * k, -1)
        in_expert[kept] = scanned[keys[kept], tiles_of[kept]] - offsets[keys[kept]] + rank[kept]
        mask.reshape(-1)[walk] = ~kept | (in_expert >= capacity)
        steps.update(priority_keys=keys, priority_table=table, priority_scanned=scanned,
                     priority_rank_in_expert=in_expert)
    keys = np.where(mask.reshape(-1), n_experts, index.reshape(-1))  # slot order
    table, scanned, offsets, counts = _count_and_scan(keys, n_experts, tile)
    rank = _ranks_in_tile(keys, n_experts, tile)
    kept = keys < n_experts
    position = np.full(n * k, -1)
    position[kept] = scanned[keys[kept], tiles_of[kept]] + rank[kept]
    order = np.empty(kept.sum(), np.int64)
    order[position[kept]] = slots[kept]
    row = position.copy()
    if capacity is not None:
        row[kept] = keys[kept] * capacity + position[kept] - offsets[keys[kept]]
    steps.update(keys=keys, table=table, scanned=scanned, rank_in_tile=rank, position=position)
    return {"order": order, "counts": counts, "offsets": offsets, "row": row.reshape(n, k), "dropped": mask,
            **steps}
