"""Elementwise ops: values against NumPy/math formulas written here, gradients against
finite differences, over shapes that broadcast (hypothesis draws them)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import functional as F

math_erf = np.vectorize(math.erf)  # an independent erf (the library uses scipy's)


def positive(x):
    return np.abs(x) + 0.5


def away_from_zero(x):
    return np.where(x >= 0, x + 0.1, x - 0.1)


# name: (op, NumPy reference, how to make a valid input from standard-normal values)
UNARY = {
    "neg": (F.neg, lambda x: -x, None),
    "exp": (F.exp, np.exp, None),
    "log": (F.log, np.log, positive),
    "sqrt": (F.sqrt, np.sqrt, positive),
    "tanh": (F.tanh, np.tanh, None),
    "sigmoid": (F.sigmoid, lambda x: 1 / (1 + np.exp(-x)), None),
    "relu": (F.relu, lambda x: np.maximum(x, 0), away_from_zero),
    "gelu": (F.gelu, lambda x: 0.5 * x * (1 + math_erf(x / math.sqrt(2))), None),
    "silu": (F.silu, lambda x: x / (1 + np.exp(-x)), None),
    "softplus": (F.softplus, lambda x: np.log1p(np.exp(x)), None),
    "erf": (F.erf, math_erf, None),
    "normal_cdf": (F.normal_cdf, lambda x: 0.5 * (1 + math_erf(x / math.sqrt(2))), None),
    "abs": (F.abs, np.abs, away_from_zero),
}

BINARY = {
    "add": (F.add, np.add, None),
    "sub": (F.sub, np.subtract, None),
    "mul": (F.mul, np.multiply, None),
    "div": (F.div, np.divide, away_from_zero),
    "pow": (F.pow, np.power, positive),  # positive base; the exponent is differentiated too
    "maximum": (F.maximum, np.maximum, None),  # random normals never tie
}


def make(shape, transform, device, seed=0):
    data = np.random.default_rng(seed).standard_normal(shape)
    if transform is not None:
        data = transform(data)
    return tm.tensor(data, requires_grad=True, device=device)


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_values_and_gradients(name, device):
    op, reference, transform = UNARY[name]
    for shape in [(5,), (2, 3), (2, 1, 3)]:
        x = make(shape, transform, device)
        np.testing.assert_allclose(numpy_of(op(x)), reference(numpy_of(x)), rtol=1e-10, atol=1e-12)
        assert tm.gradcheck(op, [x])


@pytest.mark.parametrize("name", sorted(BINARY))
@settings(max_examples=12, deadline=None)
@given(shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3))
def test_binary_values_and_gradients_with_broadcasting(name, shapes):
    op, reference, transform = BINARY[name]
    a = make(shapes.input_shapes[0], transform if name == "pow" else None, "cpu", seed=1)
    b = make(shapes.input_shapes[1], transform if name != "pow" else None, "cpu", seed=2)
    out = op(a, b)
    assert out.shape == shapes.result_shape
    np.testing.assert_allclose(out.data, reference(a.data, b.data), rtol=1e-10)
    assert tm.gradcheck(op, [a, b])


@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_ops_on_device(name, device):
    op, reference, transform = BINARY[name]
    a = make((2, 3), transform if name == "pow" else None, device, seed=1)
    b = make((3,), transform if name != "pow" else None, device, seed=2)
    np.testing.assert_allclose(numpy_of(op(a, b)), reference(numpy_of(a), numpy_of(b)), rtol=1e-10)
    assert tm.gradcheck(op, [a, b])


def test_broadcast_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\) cannot be broadcast"):
        randn(2, 3) + randn(4)


def test_python_numbers_take_the_tensor_dtype():
    x = tm.tensor(np.ones(3, np.float32))
    for y in (x * 2.5, 1.5 + x, x / 3, x**2, 2.0**x, F.maximum(x, 0.5)):
        assert y.dtype == np.float32


def test_activations_stay_finite_at_extreme_inputs():
    x = tm.tensor(np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0]), requires_grad=True)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow, no NaN
        ys = [F.sigmoid(x), F.softplus(x), F.silu(x)]
        sum(y.sum() for y in ys).backward()
    assert all(np.isfinite(y.data).all() for y in ys) and np.isfinite(x.grad).all()
    np.testing.assert_allclose(F.softplus(x).data[[0, 4]], [0.0, 1000.0])


def test_clip_values_and_gradient_inside_only(device):
    x = tm.tensor(np.array([-2.0, -0.5, 0.3, 1.7]), requires_grad=True, device=device)
    y = F.clip(x, -1.0, 1.0)
    np.testing.assert_array_equal(numpy_of(y), [-1.0, -0.5, 0.3, 1.0])
    y.sum().backward()
    np.testing.assert_array_equal(numpy_of(x.grad), [0.0, 1.0, 1.0, 0.0])
    assert tm.gradcheck(lambda t: F.clip(t, -1.0, 1.0), [x])


def test_where_routes_gradients(device):
    a, b = randn(2, 3, device=device), randn(3, device=device, seed=1)
    condition = np.array([[True, False, True], [False, False, True]])
    if device == "cuda":
        condition = tm.backend.to_device(condition, "cuda")
    out = F.where(condition, a, b)
    np.testing.assert_allclose(numpy_of(out), np.where(numpy_of(condition), numpy_of(a), numpy_of(b)))
    assert tm.gradcheck(lambda x, y: F.where(condition, x, y), [a, b])


def test_maximum_tie_gives_the_gradient_to_the_first_argument():
    a, b = tm.tensor([1.0, 2.0], requires_grad=True), tm.tensor([1.0, 3.0], requires_grad=True)
    F.maximum(a, b).sum().backward()
    np.testing.assert_array_equal(a.grad, [1.0, 0.0])
    np.testing.assert_array_equal(b.grad, [0.0, 1.0])


@settings(max_examples=20, deadline=None)
@given(st.floats(-5, 5), st.floats(0.1, 3))
def test_pow_gradients_match_calculus(base_offset, exponent):
    # d/dx x^p = p x^(p-1), d/dp x^p = x^p ln x, at a positive x
    x = tm.tensor(np.array(abs(base_offset) + 0.5), requires_grad=True)
    p = tm.tensor(np.array(exponent), requires_grad=True)
    (x**p).backward()
    xv, pv = x.data.item(), p.data.item()
    assert x.grad.item() == pytest.approx(pv * xv ** (pv - 1), rel=1e-12)
    assert p.grad.item() == pytest.approx(xv**pv * math.log(xv), rel=1e-12, abs=1e-15)
