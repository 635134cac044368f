"""The dispatch path: ``make_plan`` (a counting sort), ``permute`` and ``unpermute``.

Checked against plans traced by hand, Python's ``sorted``, a loop that fills the expert
buffers in GShard's priority order, the naive per-expert loop ``dense_moe`` (values and
gradients) and finite differences."""


import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import backend
from tinymoe import functional as F
from tinymoe.moe import Experts, capacity, dense_moe, make_plan, permute, unpermute

# --------------------------------------------------------------------------- helpers

# Five tokens, three experts, top-2. A slot is one (token, choice); its id is token * k + choice.
INDEX = np.array([
    [1, 0],  # token 0: slots 0, 1
    [0, 1],  # token 1: slots 2, 3
    [2, 1],  # token 2: slots 4, 5
    [1, 0],  # token 3: slots 6, 7
    [1, 0],  # token 4: slots 8, 9
])  # fmt: skip
#  expert 0 is chosen by slots 1, 2, 7, 9;  expert 1 by slots 0, 3, 5, 6, 8;  expert 2 by slot 4.

K, D = False, True  # kept, dropped: masks read as pictures


def on(device, array):
    return None if array is None else backend.to_device(array, device)


def routing_case(n, e, k, unused=(), drop_fraction=0.0, seed=0):
    """Random top-k choices (k distinct experts a token, none from ``unused``) and, if asked,
    a random mask of slots the router already dropped."""
    rng = np.random.default_rng(seed)
    allowed = np.array([i for i in range(e) if i not in unused])
    index = np.stack([rng.permutation(allowed)[:k] for _ in range(n)])
    dropped = rng.random((n, k)) < drop_fraction if drop_fraction else None
    return index, dropped


def gshard_drops(index, n_experts, cap, dropped=None):
    """GShard's priority written as the loop it describes: all first choices in token
    order, then all second choices, ...; a slot gets in while its expert has room."""
    n, k = index.shape
    dropped = np.zeros((n, k), bool) if dropped is None else dropped.copy()
    used = [0] * n_experts
    for j in range(k):
        for t in range(n):
            if dropped[t, j]:
                continue
            e = index[t, j]
            if used[e] < cap:
                used[e] += 1
            else:
                dropped[t, j] = True
    return dropped


def run_experts(xs, plan, expert_fn):
    """Every expert on its own rows of the buffer, the slice a grouped matmul would take."""
    if plan.capacity is None:
        offsets = [int(o) for o in plan.offsets]
        bounds = zip(offsets[:-1], offsets[1:], strict=True)
    else:
        bounds = [(e * plan.capacity, (e + 1) * plan.capacity) for e in range(plan.n_experts)]
    return F.concat([expert_fn(e, xs[start:end]) for e, (start, end) in enumerate(bounds)], axis=0)


def grads_of(tensors):
    out = [numpy_of(t.grad) for t in tensors]
    for t in tensors:
        t.grad = None
    return out


# --------------------------------------------------------------------------- make_plan, traced on paper


def test_dropless_plan_traced_by_hand():
    plan = make_plan(INDEX, n_experts=3)
    np.testing.assert_array_equal(plan.counts, [4, 5, 1])
    np.testing.assert_array_equal(plan.offsets, [0, 4, 9, 10])
    # expert 0's slots, then expert 1's, then expert 2's; slot ids ascending inside each
    np.testing.assert_array_equal(plan.order, [1, 2, 7, 9, 0, 3, 5, 6, 8, 4])
    # row[t, j] = position of slot t * 2 + j in ``order``
    np.testing.assert_array_equal(plan.row, [[4, 0], [1, 5], [9, 6], [7, 2], [8, 3]])
    np.testing.assert_array_equal(plan.dropped, np.zeros((5, 2), bool))
    assert plan.capacity is None and plan.n_rows == 10 and (plan.n_tokens, plan.k) == (5, 2)


def test_capacity_plan_fills_buffers_with_first_choices_first():
    plan = make_plan(INDEX, n_experts=3, capacity=2)
    # Expert 1 is wanted by token 0 (1st choice), 1 (2nd), 2 (2nd), 3 (1st), 4 (1st).
    # First choices in token order take its two places: tokens 0 and 3. Token 1's second
    # choice loses although token 1 comes before token 3; token 4's first choice is too late.
    # Expert 0: token 1's first choice, then token 0's second; tokens 3 and 4 (2nd) drop.
    # Expert 2 gets only token 2 and keeps one empty (padding) row.
    np.testing.assert_array_equal(plan.dropped, [[K, K], [K, D], [K, D], [K, D], [D, D]])
    np.testing.assert_array_equal(plan.counts, [2, 2, 1])
    np.testing.assert_array_equal(plan.offsets, [0, 2, 4, 5])
    # priority decides who is kept; inside an expert the rows are still in (token, choice) order
    np.testing.assert_array_equal(plan.order, [1, 2, 0, 6, 4])
    # expert e's rows start at e * C in the padded (E * C, d) buffer; -1 marks a dropped slot
    np.testing.assert_array_equal(plan.row, [[2, 0], [1, -1], [4, -1], [3, -1], [-1, -1]])
    assert plan.capacity == 2 and plan.n_rows == 6


def test_pre_dropped_slot_takes_no_capacity():
    router_dropped = np.zeros((5, 2), bool)
    router_dropped[3, 0] = True  # the router already dropped token 3's first choice (expert 1)
    plan = make_plan(INDEX, n_experts=3, capacity=2, dropped=router_dropped)
    # so token 4's first choice gets the place in expert 1 that token 3 would have taken
    np.testing.assert_array_equal(plan.dropped, [[K, K], [K, D], [K, D], [D, D], [K, D]])
    np.testing.assert_array_equal(plan.order, [1, 2, 0, 8, 4])
    np.testing.assert_array_equal(plan.row, [[2, 0], [1, -1], [4, -1], [-1, -1], [3, -1]])
    assert router_dropped.sum() == 1  # the caller's mask is not modified

    dropless = make_plan(INDEX, n_experts=3, dropped=router_dropped)
    np.testing.assert_array_equal(dropless.counts, [4, 4, 1])
    np.testing.assert_array_equal(dropless.order, [1, 2, 7, 9, 0, 3, 5, 8, 4])
    np.testing.assert_array_equal(dropless.row, [[4, 0], [1, 5], [8, 6], [-1, 2], [7, 3]])
    np.testing.assert_array_equal(dropless.dropped, router_dropped)


def test_permute_and_unpermute_traced_by_hand():
    x = tm.tensor(np.arange(10.0).reshape(5, 2))
    plan = make_plan(INDEX, n_experts=3, capacity=2)  # the plan traced above
    xs = numpy_of(permute(x, plan))
    np.testing.assert_array_equal(xs[:5], numpy_of(x)[[0, 1, 0, 3, 2]])  # rows in buffer order
    np.testing.assert_array_equal(xs[5], [0, 0])  # expert 2's padding row

    ys = tm.tensor(np.arange(12.0).reshape(6, 2))
    w = tm.tensor(np.array([[0.5, 0.25], [2.0, 9.0], [3.0, 9.0], [4.0, 9.0], [9.0, 9.0]]))
    y = numpy_of(unpermute(ys, plan, w))
    ysn = numpy_of(ys)
    np.testing.assert_array_equal(y[0], 0.5 * ysn[2] + 0.25 * ysn[0])
    np.testing.assert_array_equal(y[1:4], [2.0 * ysn[1], 3.0 * ysn[4], 4.0 * ysn[3]])
    np.testing.assert_array_equal(y[4], [0, 0])  # every slot of token 4 was dropped


# --------------------------------------------------------------------------- layout, against independent sorts


@pytest.mark.parametrize("n, e, k, drop_fraction", [(9, 4, 2, 0.0), (11, 5, 3, 0.0), (8, 3, 2, 0.4), (6, 6, 6, 0.0)])
def test_dropless_rows_sorted_by_expert_then_token_then_choice(n, e, k, drop_fraction):
    index, dropped = routing_case(n, e, k, drop_fraction=drop_fraction, seed=n)
    plan = make_plan(index, e, dropped=dropped)
    kept = [(t, j) for t in range(n) for j in range(k) if dropped is None or not dropped[t, j]]
    expected = [t * k + j for _, t, j in sorted((index[t, j], t, j) for t, j in kept)]
    np.testing.assert_array_equal(plan.order, expected)
    for r, slot in enumerate(expected):
        assert plan.row[slot // k, slot % k] == r
    assert (plan.row == -1).sum() == n * k - len(kept)
    np.testing.assert_array_equal(plan.counts, [sum(index[t, j] == x for t, j in kept) for x in range(e)])


@pytest.mark.parametrize("n, e, k, cap, drop_fraction", [(12, 4, 2, 3, 0.0), (10, 3, 2, 1, 0.0), (9, 4, 3, 4, 0.3)])
def test_capacity_drops_follow_gshard_priority_loop(n, e, k, cap, drop_fraction):
    index, dropped = routing_case(n, e, k, drop_fraction=drop_fraction, seed=n)
    plan = make_plan(index, e, capacity=cap, dropped=dropped)
    expected_dropped = gshard_drops(index, e, cap, dropped)
    np.testing.assert_array_equal(plan.dropped, expected_dropped)
    # kept slots sit at e * C + (their place among expert e's kept slots, in slot order)
    for expert in range(e):
        slots = [t * k + j for t in range(n) for j in range(k) if index[t, j] == expert and not expected_dropped[t, j]]
        assert len(slots) <= cap
        for place, slot in enumerate(slots):
            assert plan.row[slot // k, slot % k] == expert * cap + place


# --------------------------------------------------------------------------- capacity and bad expert ids


@pytest.mark.parametrize("cf, n, e, k, expected", [
    (1.0, 8, 4, 2, 4),      # exactly k N / E
    (1.25, 10, 4, 1, 4),    # 3.125 rounds up
    (2.0, 6, 4, 1, 3),
    (0.5, 16, 8, 2, 2),
    (0.01, 10, 4, 1, 1),    # never below one row
    (1.1, 25, 5, 2, 11),    # 11 exactly on paper (a float product would give 11.000000000000002)
])  # fmt: skip
def test_capacity_is_ceil_of_factor_times_k_n_over_e(cf, n, e, k, expected):
    assert capacity(cf, n, e, k) == expected


@pytest.mark.parametrize("index, cap, message", [
    (np.array([[0, 3]]), None, r"expert ids must lie in \[0, 3\), got 3"),
    (np.array([[-1, 2]]), None, r"expert ids must lie in \[0, 3\), got -1"),
    (np.array([0, 1]), None, r"expert_index must be \(N, k\)"),
    (np.zeros((2, 2, 1), int), None, r"expert_index must be \(N, k\)"),
])  # fmt: skip
def test_make_plan_rejects_bad_input(index, cap, message):
    with pytest.raises(ValueError, match=message):
        make_plan(index, 3, capacity=cap)


# --------------------------------------------------------------------------- against the dense per-expert loop

CASES = [  # n_tokens, n_experts, k, capacity, unused experts, fraction of slots pre-dropped
    pytest.param(6, 4, 2, None, (2,), 0.0, id="an-expert-gets-no-tokens"),
    pytest.param(7, 3, 2, None, (), 0.0, id="E-does-not-divide-N"),
    pytest.param(5, 3, 3, None, (), 0.0, id="k-equals-E"),
    pytest.param(8, 4, 2, 3, (), 0.0, id="capacity"),
    pytest.param(10, 3, 2, 1, (), 0.0, id="capacity-1-most-slots-drop"),
    pytest.param(7, 3, 3, 2, (), 0.0, id="k-equals-E-with-capacity"),
    pytest.param(8, 4, 2, None, (), 0.3, id="pre-dropped"),
    pytest.param(9, 4, 2, 3, (1,), 0.3, id="pre-dropped-capacity-idle-expert"),
]


@pytest.mark.parametrize("n, e, k, cap, unused, drop_fraction", CASES)
def test_dispatch_matches_dense_loop(n, e, k, cap, unused, drop_fraction, device):
    index, dropped = routing_case(n, e, k, unused, drop_fraction, seed=n + k)
    index, dropped = on(device, index), on(device, dropped)
    d = 3
    x, weight = randn(n, d, device=device, seed=1), randn(n, k, device=device, seed=2)
    a, b = randn(e, d, device=device, seed=3), randn(e, d, device=device, seed=4)

    def expert_fn(i, rows):  # a different nonlinear function per expert
        return a[i] * F.tanh(rows + b[i])

    upstream = numpy_of(randn(n, d, seed=5))
    plan = make_plan(index, e, capacity=cap, dropped=dropped)
    y = unpermute(run_experts(permute(x, plan), plan, expert_fn), plan, weight)
    y.backward(on(device, upstream))
    fast = [numpy_of(y)] + grads_of([x, weight, a, b])

    # the oracle is told which slots were dropped (the drops are checked against gshard_drops above)
    y = dense_moe(x, index, weight, expert_fn, e, dropped=plan.dropped)
    y.backward(on(device, upstream))
    dense = [numpy_of(y)] + grads_of([x, weight, a, b])

    if cap is not None or drop_fraction:
        assert numpy_of(plan.dropped).any()  # the case really drops slots
    for name, got, want in zip(["y", "d x", "d weight", "d a", "d b"], fast, dense, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
@pytest.mark.parametrize("n, e, k, cap, unused, drop_fraction", CASES)
def test_experts_dispatch_matches_dense_loop(n, e, k, cap, unused, drop_fraction, activation, device):
    index, dropped = routing_case(n, e, k, unused, drop_fraction, seed=n + k)
    index, dropped = on(device, index), on(device, dropped)
    d, f = 4, 5
    experts = Experts(e, d, f, activation, bias=activation != "swiglu", dtype=np.float64)
    for i, (_, p) in enumerate(experts.named_parameters()):  # biases start at 0: make them count
        p.data = np.random.default_rng(10 + i).standard_normal(p.shape)
    experts.to(device)
    params = [p for _, p in experts.named_parameters()]
    x, weight = randn(n, d, device=device, seed=1), randn(n, k, device=device, seed=2)
    upstream = on(device, numpy_of(randn(n, d, seed=5)))

    plan = make_plan(index, e, capacity=cap, dropped=dropped)
    y = unpermute(experts(permute(x, plan), plan), plan, weight)
    y.backward(upstream)
    fast = [numpy_of(y)] + grads_of([x, weight, *params])

    y = experts.dense(x, index, weight, dropped=plan.dropped)
    y.backward(upstream)
    dense = [numpy_of(y)] + grads_of([x, weight, *params])

    names = ["y", "d x", "d weight"] + [f"d {name}" for name, _ in experts.named_parameters()]
    for name, got, want in zip(names, fast, dense, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


# --------------------------------------------------------------------------- gradients and dropped slots


@pytest.mark.parametrize("cap", [None, 2])
def test_permute_gradcheck(cap):
    index, dropped = routing_case(6, 3, 2, drop_fraction=0.2, seed=7)
    plan = make_plan(index, 3, capacity=cap, dropped=dropped)
    assert tm.gradcheck(lambda x: permute(x, plan), [randn(6, 3)])


@pytest.mark.parametrize("cap", [None, 2])
def test_unpermute_gradcheck(cap):
    index, dropped = routing_case(6, 3, 2, drop_fraction=0.2, seed=7)
    plan = make_plan(index, 3, capacity=cap, dropped=dropped)
    ys, weight = randn(plan.n_rows, 3, seed=1), randn(6, 2, seed=2)
    assert tm.gradcheck(lambda ys, w: unpermute(ys, plan, w), [ys, weight])


def test_dropped_slots_add_exactly_zero_and_get_no_gradient():
    index, router_dropped = routing_case(10, 4, 2, unused=(3,), drop_fraction=0.2, seed=3)
    plan = make_plan(index, 4, capacity=3, dropped=router_dropped)  # capacity drops, router drops, padding
    dropped = numpy_of(plan.dropped)
    assert dropped.sum() > router_dropped.sum() > 0
    ys, weight = randn(plan.n_rows, 4, seed=1), randn(10, 2, seed=2)
    y = numpy_of(unpermute(ys, plan, weight))

    huge = numpy_of(weight).copy()
    huge[dropped] = 1e30  # a dropped slot's weight must not matter at all
    padding = np.setdiff1d(np.arange(plan.n_rows), numpy_of(plan.row)[~dropped])
    assert len(padding) > 0
    ys_huge = numpy_of(ys).copy()
    ys_huge[padding] = 1e30  # nor may the padding rows of the buffer
    ys2, weight2 = tm.tensor(ys_huge, requires_grad=True), tm.tensor(huge, requires_grad=True)
    y2 = unpermute(ys2, plan, weight2)
    np.testing.assert_array_equal(numpy_of(y2), y)

    y2.backward(np.ones_like(y))
    assert np.all(weight2.grad[dropped] == 0) and np.all(weight2.grad[~dropped] != 0)
    assert np.all(ys2.grad[padding] == 0)


def test_every_slot_dropped_gives_an_empty_buffer_and_zero_output():
    index, _ = routing_case(4, 3, 2)
    plan = make_plan(index, 3, dropped=np.ones((4, 2), bool))
    x, weight = randn(4, 3), randn(4, 2, seed=1)
    xs = permute(x, plan)
    assert xs.shape == (0, 3)
    y = unpermute(xs * 2.0, plan, weight)
    np.testing.assert_array_equal(numpy_of(y), np.zeros((4, 3)))
    y.backward(np.ones((4, 3)))
    np.testing.assert_array_equal(x.grad, np.zeros((4, 3)))
    np.testing.assert_array_equal(weight.grad, np.zeros((4, 2)))
