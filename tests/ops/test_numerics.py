"""Numerics at the edges, each against a float64 reference computed here with NumPy/SciPy:
logits far from zero, infinities, float16 statistics, and the 0 * inf corners of pow."""

import numpy as np
import pytest
from scipy import special

import tinymoe as tm
from tinymoe.moe.losses import z_loss

F = tm.F


def far_logits(dtype, centre, shape=(6, 5), seed=0):
    """Logits centre + small offsets, exactly representable in ``dtype`` (integers)."""
    offsets = np.random.default_rng(seed).integers(-4, 5, size=shape)
    return (centre + offsets).astype(dtype)


def reference_log_softmax(logits):
    x = logits.astype(np.float64)
    return x - special.logsumexp(x, axis=-1, keepdims=True)


# float32 logits near 1e7 (where 1e7 + 0.7 rounds to 1e7) and float16 near 1000 (spacing 0.5)
FAR = [(np.float32, 1e7, 1e-3), (np.float32, -1e7, 1e-3), (np.float16, 1000.0, 1e-2), (np.float16, -1000.0, 1e-2)]


@pytest.mark.parametrize("dtype, centre, rtol", FAR)
def test_log_softmax_and_cross_entropy_far_from_zero(dtype, centre, rtol):
    logits = far_logits(dtype, centre)
    targets = np.arange(6) % 5
    expected = reference_log_softmax(logits)
    got = F.log_softmax(tm.tensor(logits), axis=-1)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.data.astype(np.float64), expected, rtol=rtol, atol=rtol)

    x = tm.tensor(logits, requires_grad=True)
    loss = F.cross_entropy(x, targets)
    reference = -expected[np.arange(6), targets].mean()
    assert abs(loss.item() - reference) <= rtol * abs(reference)
    loss.backward()
    p = np.exp(expected)
    p[np.arange(6), targets] -= 1
    np.testing.assert_allclose(x.grad.astype(np.float64), p / 6, atol=rtol / 6)
    np.testing.assert_allclose(x.grad.astype(np.float64).sum(axis=-1), 0, atol=rtol / 6)  # rows sum to 0


@pytest.mark.parametrize("dtype, centre, rtol", FAR)
def test_logsumexp_and_z_loss_far_from_zero(dtype, centre, rtol):
    logits = far_logits(dtype, centre)
    lse = special.logsumexp(logits.astype(np.float64), axis=-1)
    x = tm.tensor(logits, requires_grad=True)
    got = F.logsumexp(x, axis=-1)
    np.testing.assert_allclose(got.data.astype(np.float64), lse, rtol=rtol)
    got.sum().backward()  # d lse / dx = softmax(x): each row sums to 1
    np.testing.assert_allclose(x.grad.astype(np.float64).sum(axis=-1), 1, atol=rtol)
    if dtype == np.float32:  # lse^2 near 1e14 would overflow float16 by design
        z = z_loss(tm.tensor(logits))
        assert abs(z.item() - np.mean(lse**2)) <= rtol * np.mean(lse**2)


def test_logsumexp_of_infinities():
    inf = np.inf
    x = tm.tensor(np.array([[inf, 1.0], [-inf, -inf], [-inf, 2.0]]))
    np.testing.assert_array_equal(F.logsumexp(x, axis=-1).data, [inf, -inf, 2.0])
    np.testing.assert_array_equal(F.log_softmax(x[2:], axis=-1).data, [[-inf, 0.0]])


def test_softmax_of_a_row_with_minus_inf_gives_it_zero_weight():
    x = tm.tensor(np.array([[-np.inf, 0.0, 0.0]]), requires_grad=True)
    p = F.softmax(x, axis=-1)
    np.testing.assert_array_equal(p.data, [[0.0, 0.5, 0.5]])
    (p * np.array([[1.0, 2.0, 3.0]])).sum().backward()
    assert np.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "op, reference",
    [
        (lambda t: F.rms_norm(t), lambda x: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-6)),
        (
            lambda t: F.layer_norm(t),
            lambda x: (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5),
        ),
        (lambda t: F.var(t, axis=-1), lambda x: x.var(axis=-1)),
    ],
)
def test_float16_statistics_are_accumulated_in_float32(op, reference):
    values = np.array([[1000.0, 999.0, 998.0], [300.0, -250.0, 20.0]], np.float16)  # squares overflow float16
    got = op(tm.tensor(values))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.data.astype(np.float64), reference(values.astype(np.float64)), rtol=2e-3, atol=2e-3)


def test_float16_variance_of_many_values_does_not_overflow():
    values = (np.random.default_rng(0).standard_normal(100_000) + 10).astype(np.float16)  # their sum > 65504
    got = F.var(tm.tensor(values))
    assert got.dtype == np.float16
    assert abs(float(got.item()) - values.astype(np.float64).var()) < 2e-3


def test_float16_norm_gradients_are_finite():
    x = tm.tensor(np.array([[1000.0, 999.0, 998.0]], np.float16), requires_grad=True)
    (F.rms_norm(x) * np.array([[1.0, -2.0, 0.5]], np.float16)).sum().backward()
    assert x.grad.dtype == np.float16 and np.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "op, reference",
    [
        (F.erf, special.erf),
        (F.normal_cdf, special.ndtr),
        (F.gelu, lambda x: x * special.ndtr(x)),
    ],
)
def test_erf_family_keeps_float16(op, reference):
    x = np.array([-3.0, -0.5, 0.0, 0.25, 2.0], np.float16)
    got = op(tm.tensor(x))
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.data.astype(np.float64), reference(x.astype(np.float64)), atol=2e-3)


def test_pow_gradients_at_zero_are_the_limits_not_nan():
    a = tm.tensor(np.array([0.0, 0.0, 0.0, 2.0]), requires_grad=True)
    b = tm.tensor(np.array([2.0, 0.5, 0.0, 0.0]), requires_grad=True)
    (a**b).sum().backward()
    # d/db a^b = a^b log a -> 0 at a = 0 (b >= 0); d/da a^b = b a^(b-1): 0 for b = 2 and for b = 0,
    # +inf for b = 0.5 at a = 0 (a true infinity, not a NaN); log 2 at (2, 0).
    np.testing.assert_array_equal(b.grad, [0.0, 0.0, 0.0, np.log(2.0)])
    np.testing.assert_array_equal(a.grad, [0.0, np.inf, 0.0, 0.0])


def test_pow_with_a_scalar_exponent_has_the_right_base_gradient_at_zero():
    x = tm.tensor(np.array([0.0, 1.5, -2.0]), requires_grad=True)
    (x**3).sum().backward()
    np.testing.assert_allclose(x.grad, 3 * np.array([0.0, 1.5, -2.0]) ** 2)
    assert tm.gradcheck(lambda t: t**3, [x])


def test_softmax_family_over_an_empty_axis():
    x = tm.tensor(np.zeros((2, 0)), requires_grad=True)
    assert F.softmax(x, axis=-1).shape == (2, 0) and F.log_softmax(x, axis=-1).shape == (2, 0)
    lse = F.logsumexp(x, axis=-1)
    np.testing.assert_array_equal(lse.data, [-np.inf, -np.inf])  # the log of an empty sum, as SciPy gives
    F.softmax(x, axis=-1).sum().backward()
    assert x.grad.shape == (2, 0)
