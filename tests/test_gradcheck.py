"""gradcheck itself: it passes correct gradients, and catches and explains wrong ones."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import randn
from tinymoe.gradcheck import GradcheckError
from tinymoe.tensor import Function


class WrongSquare(Function):
    """x^2 with a deliberately wrong derivative (x instead of 2x)."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, g):
        return (g * self.x,)


def test_correct_gradient_passes():
    assert tm.gradcheck(lambda a, b: a * tm.F.exp(b), [randn(3), randn(3, seed=1)])


def test_wrong_gradient_fails_with_a_readable_table():
    x = randn(2, 2)
    with pytest.raises(GradcheckError) as info:
        tm.gradcheck(lambda t: WrongSquare()(t), {"x": x})
    message = str(info.value)
    assert "4 of 4 gradient entries disagree" in message
    assert "analytic" in message and "numeric" in message
    assert "\nx " in message and "(0,0)" in message  # the input's name and the index


def test_params_used_by_closure_are_checked_and_restored():
    layer = tm.nn.Linear(3, 2)
    original = layer.weight.data.copy()
    x = randn(4, 3, requires_grad=False)
    assert tm.gradcheck(lambda t: layer(t), [x], params=dict(layer.named_parameters()))
    assert layer.weight.dtype == np.float32  # converted to float64 only during the check
    np.testing.assert_array_equal(layer.weight.data, original)
    assert layer.weight.grad is None


def test_catches_a_wrong_gradient_in_a_parameter():
    w = randn(3)
    x = randn(3, requires_grad=False)
    with pytest.raises(GradcheckError, match="param 0"):
        tm.gradcheck(lambda t: WrongSquare()(w) * t, [x], params=[w])


def test_nothing_to_check_is_an_error():
    with pytest.raises(ValueError, match="nothing to check"):
        tm.gradcheck(lambda t: t * 2.0, [randn(2, requires_grad=False)])


def test_float32_output_is_refused():
    x = randn(2)
    with pytest.raises(TypeError, match="float32, not float64"):
        tm.gradcheck(lambda t: t.astype(np.float32), [x])


def test_non_leaf_and_float32_inputs_are_checked_as_float64_leaves():
    x = tm.tensor(np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32), requires_grad=True)
    original = x.data.copy()
    assert tm.gradcheck(lambda t: tm.F.tanh(t) * t, [x * 1.0])  # x * 1.0 is not a leaf
    assert tm.gradcheck(lambda t: tm.F.tanh(t) * t, [x.T])  # a transposed (non-contiguous) view
    np.testing.assert_array_equal(x.data, original)
    assert x.grad is None  # nothing flowed back into the original graph
    with pytest.raises(GradcheckError):  # and a wrong backward is still caught through them
        tm.gradcheck(lambda t: WrongSquare()(t), [x.T])


def test_zero_dimensional_tensors_are_perturbed_too():
    scale = tm.tensor(np.array(1.5), requires_grad=True)
    assert tm.gradcheck(lambda t: t * scale * scale, [randn(3)], params=[scale])
    with pytest.raises(GradcheckError, match="param 0"):
        tm.gradcheck(lambda t: t * WrongSquare()(scale), [randn(3)], params=[scale])
