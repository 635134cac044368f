"""softmax, log_softmax, logsumexp, cross_entropy, topk, layer/rms norm and dropout:
values against formulas written here, gradients against finite differences, stability at
extreme inputs, and clear errors."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import backend
from tinymoe import functional as F


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_family_values_and_gradients(axis, device):
    x = randn(3, 4, 2, device=device)
    xn = numpy_of(x)
    p = np_softmax(xn, axis)
    np.testing.assert_allclose(numpy_of(F.softmax(x, axis)), p, rtol=1e-12)
    np.testing.assert_allclose(numpy_of(F.log_softmax(x, axis)), np.log(p), rtol=1e-12)
    np.testing.assert_allclose(numpy_of(F.logsumexp(x, axis)), np.log(np.exp(xn).sum(axis)), rtol=1e-12)
    assert tm.gradcheck(lambda t: F.softmax(t, axis), [x])
    assert tm.gradcheck(lambda t: F.log_softmax(t, axis), [x])
    assert tm.gradcheck(lambda t: F.logsumexp(t, axis, keepdims=True), [x])


def test_softmax_family_is_stable_for_huge_logits():
    x = tm.tensor(np.array([[1000.0, 0.0, -1000.0]]), requires_grad=True)
    np.testing.assert_allclose(F.softmax(x).data, [[1.0, 0.0, 0.0]])
    # log_softmax is x - logsumexp(x), never log(softmax(x)) = log(0) = -inf
    np.testing.assert_allclose(F.log_softmax(x).data, [[0.0, -1000.0, -2000.0]])
    np.testing.assert_allclose(F.logsumexp(x).data, [1000.0])
    F.log_softmax(x).sum().backward()
    assert np.isfinite(x.grad).all()


def test_cross_entropy_value_and_gradient(device):
    logits = randn(2, 3, 5, device=device)
    targets = np.array([[0, 4, 2], [1, 1, 3]])
    log_p = np.log(np_softmax(numpy_of(logits)))
    expected = -np.mean([log_p[i, j, targets[i, j]] for i in range(2) for j in range(3)])
    t = backend.to_device(targets, device)
    assert F.cross_entropy(logits, t).item() == pytest.approx(expected, rel=1e-12)
    assert tm.gradcheck(lambda z: F.cross_entropy(z, t), [logits])


def test_cross_entropy_rejects_bad_input():
    with pytest.raises(ValueError, match="logits contain 1 NaN/inf"):
        F.cross_entropy(tm.tensor(np.array([[0.0, np.nan]])), np.array([0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 2\)"):
        F.cross_entropy(randn(1, 2), np.array([2]))
    with pytest.raises(ValueError, match=r"targets shape \(2,\) must equal"):
        F.cross_entropy(randn(3, 2), np.array([0, 1]))
    with pytest.raises(TypeError, match="integer class ids"):
        F.cross_entropy(randn(1, 2), np.array([0.0]))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("axis", [-1, 0])
def test_topk_values_indices_and_gradients(k, axis, device):
    x = randn(4, 5, device=device)
    values, indices = F.topk(x, k, axis)
    xn = numpy_of(x)
    expected_idx = np.argsort(-xn, axis=axis)[:k] if axis == 0 else np.argsort(-xn, axis=axis)[:, :k]
    np.testing.assert_array_equal(numpy_of(indices), expected_idx)
    np.testing.assert_array_equal(numpy_of(values), np.take_along_axis(xn, expected_idx, axis))
    assert tm.gradcheck(lambda t: F.topk(t, k, axis)[0], [x])


def test_topk_breaks_ties_by_the_lowest_index(device):
    x = tm.tensor(np.array([[1.0, 3.0, 3.0, 0.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]]), device=device)
    _, indices = F.topk(x, 3)
    np.testing.assert_array_equal(numpy_of(indices), [[1, 2, 4], [0, 1, 2]])


def test_topk_gradient_reaches_only_the_chosen():
    x = tm.tensor(np.array([[0.1, 0.9, 0.5]]), requires_grad=True)
    values, _ = F.topk(x, 2)
    (values * np.array([[2.0, 3.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 2.0, 3.0]])


def test_topk_rejects_bad_k():
    with pytest.raises(ValueError, match=r"k must be an integer in \[1, 3\].*got 4"):
        F.topk(randn(2, 3), 4)
    with pytest.raises(ValueError, match="got 0"):
        F.topk(randn(2, 3), 0)


def test_layer_norm_and_rms_norm_values_and_gradients(device):
    x, w, b = randn(3, 5, device=device), randn(5, device=device, seed=1), randn(5, device=device, seed=2)
    xn = numpy_of(x)
    expected_ln = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5) * numpy_of(w)
    np.testing.assert_allclose(numpy_of(F.layer_norm(x, w, b)), expected_ln + numpy_of(b), rtol=1e-10)
    expected_rms = xn / np.sqrt((xn**2).mean(-1, keepdims=True) + 1e-6) * numpy_of(w)
    np.testing.assert_allclose(numpy_of(F.rms_norm(x, w)), expected_rms, rtol=1e-10)
    assert tm.gradcheck(F.layer_norm, [x, w, b])
    assert tm.gradcheck(F.rms_norm, [x, w])


def test_dropout_function_scales_kept_values_and_is_identity_when_off():
    x = tm.tensor(np.ones((200, 50)), requires_grad=True)
    y = F.dropout(x, 0.2)
    kept = y.data != 0
    assert abs(kept.mean() - 0.8) < 0.01  # 10 000 draws: sd of the mean is 0.004
    np.testing.assert_allclose(y.data[kept], 1 / 0.8)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, y.data)  # the gradient uses the same mask
    assert F.dropout(x, 0.2, training=False) is x
    with pytest.raises(ValueError, match=r"dropout: p must be a finite number in \[0, 1\)"):
        F.dropout(x, 1.0)
