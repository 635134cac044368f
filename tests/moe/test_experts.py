"""Experts: E stacked feed-forward networks run on the permuted buffer, checked against a
per-expert NumPy computation written here; grouped_matmul against a loop over rows and
finite differences (empty groups included)."""

import math

import numpy as np
import pytest
from scipy.special import erf

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import backend
from tinymoe.moe import Experts, grouped_matmul, make_plan


def numpy_ffn(x, activation, w1, w2, w3=None, b1=None, b2=None):
    """One expert in plain NumPy: act(x w1 + b1) w2 + b2, or (silu(x w1) * x w3) w2."""
    h = x @ w1
    if activation == "swiglu":
        return (h / (1 + np.exp(-h)) * (x @ w3)) @ w2
    h = h + b1
    h = np.maximum(h, 0) if activation == "relu" else h * 0.5 * (1 + erf(h / math.sqrt(2)))
    return h @ w2 + b2


def randomized_experts(n_experts, d, f, activation, device="cpu"):
    """float64 experts whose biases are not zero (a misapplied bias must show)."""
    experts = Experts(n_experts, d, f, activation, bias=activation != "swiglu", dtype=np.float64)
    for i, (_, p) in enumerate(experts.named_parameters()):
        p.data = np.random.default_rng(i).standard_normal(p.shape)
    return experts.to(device)


def test_experts_hold_stacked_weights():
    def shapes(module):
        return {name: p.shape for name, p in module.named_parameters()}

    assert shapes(Experts(4, 6, 10)) == {"w1": (4, 6, 10), "w3": (4, 6, 10), "w2": (4, 10, 6)}
    relu = Experts(4, 6, 10, "relu", bias=True)
    assert shapes(relu) == {"w1": (4, 6, 10), "w2": (4, 10, 6), "b1": (4, 10), "b2": (4, 6)}


# Eight tokens, top-2 over four experts; expert 3 is never chosen (an empty group).
INDEX = np.array([[0, 1], [1, 0], [2, 0], [0, 2], [1, 2], [0, 1], [2, 1], [0, 2]])


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_experts_dropless_match_numpy_per_expert(activation, device):
    experts = randomized_experts(4, 5, 6, activation, device)
    plan = make_plan(backend.to_device(INDEX, device), 4)
    xs = randn(plan.n_rows, 5, device=device)
    out = numpy_of(experts(xs, plan))

    w = {name: numpy_of(p) for name, p in experts.named_parameters()}
    counts = np.bincount(INDEX.ravel(), minlength=4)  # the buffer holds expert 0's rows first, ...
    assert counts[3] == 0
    start = 0
    for e, count in enumerate(counts):
        rows = numpy_of(xs)[start : start + count]
        expected = numpy_ffn(rows, activation, **{name: value[e] for name, value in w.items()})
        np.testing.assert_allclose(out[start : start + count], expected, rtol=1e-12, atol=1e-12)
        start += count


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_experts_capacity_layout_match_numpy_per_expert(activation, device):
    experts = randomized_experts(4, 5, 6, activation, device)
    cap = 3
    plan = make_plan(backend.to_device(INDEX, device), 4, capacity=cap)
    xs = randn(4 * cap, 5, device=device)  # the padded (E * C, d) buffer
    out = numpy_of(experts(xs, plan))

    w = {name: numpy_of(p) for name, p in experts.named_parameters()}
    for e in range(4):  # expert e owns rows e*C .. e*C + C - 1 (padding rows included)
        rows = slice(e * cap, (e + 1) * cap)
        expected = numpy_ffn(numpy_of(xs)[rows], activation, **{name: value[e] for name, value in w.items()})
        np.testing.assert_allclose(out[rows], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
@pytest.mark.parametrize("cap", [None, 2])
def test_experts_gradcheck(activation, cap):
    experts = randomized_experts(3, 3, 4, activation)
    plan = make_plan(INDEX[:5] % 3, 3, capacity=cap)
    xs = randn(plan.n_rows, 3, seed=1)
    assert tm.gradcheck(lambda t: experts(t, plan), [xs], params=dict(experts.named_parameters()))


# --------------------------------------------------------------------------- grouped_matmul

GROUP_SIZES = [0, 3, 0, 4, 1, 0]  # empty groups first, in the middle and last


def test_grouped_matmul_matches_a_loop_over_rows(device):
    offsets = np.concatenate([[0], np.cumsum(GROUP_SIZES)])
    xs, w = randn(8, 3, device=device), randn(6, 3, 2, device=device, seed=1)
    out = numpy_of(grouped_matmul(xs, w, backend.to_device(offsets, device)))
    row_expert = [1, 1, 1, 3, 3, 3, 3, 4]  # which group each of the 8 rows belongs to
    for r, e in enumerate(row_expert):
        np.testing.assert_allclose(out[r], numpy_of(xs)[r] @ numpy_of(w)[e], rtol=1e-12)


def test_grouped_matmul_gradcheck_with_empty_groups():
    offsets = np.concatenate([[0], np.cumsum(GROUP_SIZES)])
    xs, w = randn(8, 3), randn(6, 3, 2, seed=1)
    assert tm.gradcheck(lambda a, b: grouped_matmul(a, b, offsets), [xs, w])
    grouped_matmul(xs, w, offsets).sum().backward()
    np.testing.assert_array_equal(w.grad[[0, 2, 5]], 0)  # an expert with no rows learns nothing


# --------------------------------------------------------------------------- bad input


def test_grouped_matmul_checks_its_offsets():
    from tinymoe.moe import grouped_matmul

    xs, w = tm.tensor(np.ones((5, 2))), tm.tensor(np.ones((2, 2, 3)))
    with pytest.raises(ValueError, match="offsets must run from 0 to the 5 rows in 3 steps"):
        grouped_matmul(xs, w, np.array([0, 2, 4]))  # one row uncovered
