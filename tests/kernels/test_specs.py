"""The kernels' NumPy specs agree with the library's CPU code (no GPU, no compiler needed).

- ``spec.router_topk`` (what router.cu computes) gives the CPU routers' scores, choices and
  weights, and ``spec.router_topk_backward`` their gradient wrt the logits through the
  weights: TopKRouter with and without renormalisation, DeepSeekRouter with sigmoid or
  softmax scores, bias and scale.
- ``spec.counting_sort_plan`` (plan.cu's phases in NumPy) gives exactly ``make_plan``'s plan,
  whatever the tile size."""

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.kernels import spec
from tinymoe.moe import DeepSeekRouter, TopKRouter, make_plan


def routed(router, x, g):
    """The router's routing on x, and d logits when the loss is <g, weight>."""
    routing = router(x)
    routing.logits.retain_grad()
    routing.weight.backward(g)
    return routing, routing.logits.grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_experts, k", [(8, 1), (8, 2), (16, 4), (64, 8), (5, 5)])
@pytest.mark.parametrize("normalize", [True, False])
def test_spec_is_the_top_k_router(n_experts, k, normalize, dtype):
    tm.manual_seed(n_experts + k)
    router = TopKRouter(12, n_experts, k, normalize=normalize)
    for p in router.parameters():
        p.data = p.data.astype(dtype)
    rng = np.random.default_rng(k)
    x = tm.tensor(rng.standard_normal((40, 12)).astype(dtype))
    g = rng.standard_normal((40, k)).astype(dtype)
    routing, grad = routed(router, x, g)

    scores, index, weight = spec.router_topk(routing.logits.data, k, "softmax", normalize)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(scores, routing.probs.data, rtol=rtol, atol=1e-7)
    np.testing.assert_array_equal(index, routing.expert_index)
    np.testing.assert_allclose(weight, routing.weight.data, rtol=rtol, atol=1e-7)
    spec_grad = spec.router_topk_backward(scores, index, g, "softmax", normalize)
    np.testing.assert_allclose(spec_grad, grad, rtol=10 * rtol, atol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("score", ["sigmoid", "softmax"])
@pytest.mark.parametrize("normalize, scale", [(True, 2.5), (False, 1.0), (False, 0.5)])
def test_spec_is_the_deepseek_router(score, normalize, scale):
    tm.manual_seed(3)
    router = DeepSeekRouter(10, 32, 6, score=score, routed_scale=scale, normalize=normalize)
    rng = np.random.default_rng(4)
    router.bias.data = (0.05 * rng.standard_normal(32)).astype(np.float32)  # changes choices, not weights
    x = tm.tensor(rng.standard_normal((50, 10)).astype(np.float32))
    g = rng.standard_normal((50, 6)).astype(np.float32)
    routing, grad = routed(router, x, g)

    scores, index, weight = spec.router_topk(routing.logits.data, 6, score, normalize, scale, router.bias.data, 1e-20)
    unbiased = spec.router_topk(routing.logits.data, 6, score, normalize, scale)[1]
    assert (unbiased != index).any()  # the bias really changed some choices
    np.testing.assert_allclose(scores, routing.probs.data, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(index, routing.expert_index)
    np.testing.assert_allclose(weight, routing.weight.data, rtol=1e-5, atol=1e-7)
    spec_grad = spec.router_topk_backward(scores, index, g, score, normalize, scale, 1e-20)
    np.testing.assert_allclose(spec_grad, grad, rtol=1e-4, atol=1e-6)


def test_spec_breaks_ties_towards_the_lowest_expert():
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    _, index, weight = spec.router_topk(logits, 3, "softmax", normalize=True)
    np.testing.assert_array_equal(index, [[1, 2, 4], [0, 1, 2]])
    np.testing.assert_allclose(weight, np.full((2, 3), 1 / 3))
    bias = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    _, index, _ = spec.router_topk(logits, 2, "sigmoid", bias=bias)
    np.testing.assert_array_equal(index, [[4, 1], [4, 0]])


def test_renormalised_top_1_gives_the_router_no_gradient():
    logits = np.random.default_rng(0).standard_normal((6, 4))
    scores, index, weight = spec.router_topk(logits, 1, "softmax", normalize=True)
    np.testing.assert_array_equal(weight, 1.0)
    grad = spec.router_topk_backward(scores, index, np.ones((6, 1)), "softmax", normalize=True)
    np.testing.assert_allclose(grad, 0.0, atol=1e-15)


PLAN_CASES = [  # n_tokens, n_experts, k, capacity, fraction of slots pre-dropped, tile
    (5, 3, 2, None, 0.0, 4),
    (5, 3, 2, 2, 0.0, 4),
    (37, 5, 2, None, 0.0, 8),
    (37, 5, 3, 11, 0.2, 8),
    (100, 7, 2, 20, 0.0, 32),
    (100, 16, 4, None, 0.3, 32),
    (300, 64, 8, 30, 0.1, 256),
    (1, 4, 1, None, 0.0, 256),
    (0, 4, 2, None, 0.0, 256),
]


@pytest.mark.parametrize("n, e, k, cap, drop_fraction, tile", PLAN_CASES)
def test_counting_sort_walkthrough_is_make_plan(n, e, k, cap, drop_fraction, tile):
    rng = np.random.default_rng(n + e)
    index = np.stack([rng.permutation(e)[:k] for _ in range(n)]) if n else np.zeros((0, k), np.int64)
    dropped = rng.random((n, k)) < drop_fraction if drop_fraction else None
    plan = make_plan(index, e, cap, dropped)
    walk = spec.counting_sort_plan(index, e, cap, dropped, tile=tile)
    for name in ("order", "counts", "offsets", "row", "dropped"):
        np.testing.assert_array_equal(walk[name], getattr(plan, name), err_msg=name)
    table = walk["table"]
    assert table.shape == (e, -(-n * k // tile))
    np.testing.assert_array_equal(table.sum(axis=1), plan.counts)  # the histogram, tile by tile


def test_counting_sort_steps_on_the_hand_traced_example():
    index = np.array([[1, 0], [0, 1], [2, 1], [1, 0], [1, 0]])  # tests/moe/test_dispatch.py's INDEX
    walk = spec.counting_sort_plan(index, 3, tile=4)
    np.testing.assert_array_equal(walk["keys"], [1, 0, 0, 1, 2, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(walk["table"], [[2, 1, 1], [2, 2, 1], [0, 1, 0]])  # (expert, tile)
    np.testing.assert_array_equal(walk["scanned"], [[0, 2, 3], [4, 6, 8], [9, 9, 10]])
    np.testing.assert_array_equal(walk["rank_in_tile"], [0, 0, 1, 1, 0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(walk["order"], [1, 2, 7, 9, 0, 3, 5, 6, 8, 4])
