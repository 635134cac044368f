"""The engine's guard rails: negative axes, in-place edits, hand-written Functions, gradcheck's
own arguments. Each test pins a bug that once gave a silently wrong gradient or a bare error."""

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.tensor import Function

F = tm.F


def leaf(array):
    return tm.tensor(np.asarray(array, dtype=np.float64), requires_grad=True)


# ---------------------------------------------------------------- negative axes (item 1)


def test_transpose_with_negative_axes_sends_the_gradient_back_transposed():
    w = np.arange(9.0).reshape(3, 3)
    cases = [
        (lambda t: t.transpose(-1, 0), w.T),  # L = sum(x^T * W): dL/dx = W^T
        (lambda t: F.transpose(t, (0, -1)), w),  # (0, -1) is (0, 1): no change at all
    ]
    for transposed, expected in cases:
        x = leaf(np.random.default_rng(0).standard_normal((3, 3)))
        (transposed(x) * w).sum().backward()
        np.testing.assert_array_equal(x.grad, expected)


@pytest.mark.parametrize("axes", [(-1, 0, 1), (2, -3, -2), (-2, -1, -3)])
def test_transpose_of_a_3d_tensor_with_negative_axes(axes):
    x = leaf(np.random.default_rng(1).standard_normal((2, 3, 4)))
    r = np.random.default_rng(2).standard_normal(np.transpose(x.data, axes).shape)
    (F.transpose(x, axes) * r).sum().backward()
    np.testing.assert_array_equal(x.grad, np.transpose(r, np.argsort(np.array(axes) % 3)))
    assert tm.gradcheck(lambda t: F.transpose(t, axes), [x])


def test_tensor_transpose_takes_axes_as_a_tuple_too():
    x = leaf(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(x.transpose((1, 0)).data, x.transpose(1, 0).data)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: F.transpose(t, (0, 0)), r"transpose: axes \(0, 0\) must be a reordering"),
        (lambda t: F.transpose(t, (0, 2)), r"transpose: axis 2 is out of range"),
        (lambda t: F.softmax(t, axis=2), r"softmax: axis 2 is out of range"),
        (lambda t: F.log_softmax(t, axis=-3), r"log_softmax: axis -3 is out of range"),
        (lambda t: F.logsumexp(t, axis=5), r"logsumexp: axis 5 is out of range"),
        (lambda t: F.topk(t, 1, axis=2), r"topk: axis 2 is out of range"),
        (lambda t: F.take(t, np.array([0]), axis=2), r"take: axis 2 is out of range"),  # once wrapped to 0
        (lambda t: F.gather(t, np.zeros((2, 3), int), axis=-3), r"gather: axis -3 is out of range"),
        (lambda t: F.concat([t, t], axis=2), r"concat: axis 2 is out of range"),
        (lambda t: F.split(t, 3, axis=-3), r"split: axis -3 is out of range"),
        (lambda t: F.unsqueeze(t, 4), r"unsqueeze: axis 4 is out of range"),
        (lambda t: F.swapaxes(t, 0, 2), r"swapaxes: axis 2 is out of range"),
        (lambda t: t.sum(axis=(0, -2)), r"sum: axis \(0, -2\) repeats an axis"),
        (lambda t: t.mean(axis=1.0), r"mean: axis must be an integer"),
    ],
)
def test_an_axis_out_of_range_names_the_op(call, message):
    with pytest.raises(ValueError, match=message):
        call(leaf(np.ones((2, 3))))


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax, F.logsumexp, lambda t, axis: F.topk(t, 2, axis)[0]])
def test_ops_along_a_negative_axis_match_the_same_positive_axis(op):
    x = np.random.default_rng(3).standard_normal((3, 4, 5))
    for negative, positive in ((-1, 2), (-2, 1), (-3, 0)):
        a, b = leaf(x), leaf(x)
        r = np.random.default_rng(4).standard_normal(op(a, axis=negative).shape)
        (op(a, axis=negative) * r).sum().backward()
        (op(b, axis=positive) * r).sum().backward()
        np.testing.assert_array_equal(a.grad, b.grad)


def test_reducing_a_scalar_over_its_last_axis_is_the_scalar():
    x = leaf(3.0)
    for y in (x.sum(axis=-1), x.mean(axis=0), x.max(axis=-1)):
        assert y.shape == () and y.item() == 3.0


# ------------------------------------------------------------ in-place edits (item 4)


def test_editing_an_input_in_place_after_forward_keeps_the_forward_gradient():
    x, w = leaf([[1.0, 2.0], [3.0, 4.0]]), leaf([[5.0, 6.0], [7.0, 8.0]])
    loss = (x * w).sum()
    x.data[:] = 100.0  # d loss/dw is x *as forward saw it*
    w.data *= 100  # an augmented assignment: the array is changed in place, then reassigned
    loss.backward()
    np.testing.assert_array_equal(w.grad, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(x.grad, [[5.0, 6.0], [7.0, 8.0]])
    np.testing.assert_array_equal(x.data, np.full((2, 2), 100.0))  # the edit itself happened
    np.testing.assert_array_equal(w.data, [[500.0, 600.0], [700.0, 800.0]])


def test_editing_an_intermediate_in_place_keeps_the_forward_gradient():
    x = leaf([0.5, -1.0, 2.0])
    y = F.exp(x)  # Exp keeps its output for backward: d e^x = e^x
    loss = (y * y).sum()  # d loss/dx = 2 e^{2x}
    y.data[:] = 0.0
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * np.exp(2 * np.array([0.5, -1.0, 2.0])), rtol=1e-12)


def test_a_parameter_updated_between_forward_and_backward_gets_the_forward_gradient():
    layer = tm.nn.Linear(3, 2)
    x = tm.tensor(np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32))
    loss = layer(x).sum()
    before = layer.weight.data.copy()
    layer.weight.data -= 1.0  # as a hand-written SGD step would
    loss.backward()
    np.testing.assert_allclose(layer.weight.grad, np.repeat(x.data.sum(0)[:, None], 2, axis=1), rtol=1e-6)
    np.testing.assert_array_equal(layer.weight.data, before - 1.0)


def test_edits_without_a_pending_graph_write_through_as_before():
    x = tm.tensor(np.zeros(3))
    alias = x.data
    alias[0] = 1.0
    assert x.data[0] == 1.0 and x.data is alias


# ------------------------------------------------------- hand-written Functions (item 6)


class Doubler(Function):
    """2x, with a backward chosen by each test."""

    def __init__(self, backward):
        self.make_grads = backward

    def forward(self, x):
        return 2 * x

    def backward(self, g):
        return self.make_grads(g)


@pytest.mark.parametrize(
    "backward, error, message",
    [
        (lambda g: (2 * g, 2 * g), ValueError, r"Doubler.backward returned 2 gradient\(s\) for 1 input"),
        (lambda g: (), ValueError, r"Doubler.backward returned 0 gradient\(s\) for 1 input"),
        (lambda g: None, TypeError, r"Doubler.backward must return a tuple"),
        (lambda g: (2.0,), TypeError, r"gradient of input 0 is a float"),
        (lambda g: (np.stack([g, g]),), ValueError, r"Doubler.backward returned a gradient of shape \(2, 3\)"),
        (lambda g: (g[:2],), ValueError, r"shape \(2,\) for input 0 of shape \(3,\)"),
        (lambda g: (np.ones((3, 1)),), ValueError, r"shape \(3, 1\) for input 0 of shape \(3,\)"),
    ],
)
def test_a_wrong_backward_is_an_error_naming_the_op(backward, error, message):
    x = leaf([1.0, 2.0, 3.0])
    y = Doubler(backward)(x).sum()
    with pytest.raises(error, match=message):
        y.backward()


def test_a_bare_gradient_for_a_one_input_op_is_accepted():
    x = leaf([1.0, 2.0, 3.0])
    Doubler(lambda g: 2 * g)(x).sum().backward()
    np.testing.assert_array_equal(x.grad, [2.0, 2.0, 2.0])


class AddRow(Function):
    """a + b with b broadcast over rows; backward hands b the full (N, d) gradient."""

    def forward(self, a, b):
        return a + b

    def backward(self, g):
        return g, g


def test_a_gradient_in_the_output_shape_is_summed_over_broadcast_axes():
    a, b = leaf(np.ones((4, 3))), leaf([1.0, 2.0, 3.0])
    AddRow()(a, b).sum().backward()
    np.testing.assert_array_equal(b.grad, [4.0, 4.0, 4.0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=0), r"gradcheck: eps must be a finite number > 0, got 0"),
        (dict(eps=-1e-6), r"gradcheck: eps must be"),
        (dict(eps=float("nan")), r"gradcheck: eps must be"),
        (dict(atol=-1.0), r"gradcheck: atol must be a finite number >= 0"),
        (dict(rtol=float("inf")), r"gradcheck: rtol must be"),
        (dict(max_rows=0), r"gradcheck: max_rows must be an integer >= 1"),
    ],
)
def test_gradcheck_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tm.gradcheck(lambda t: 2 * t, [leaf([1.0])], **kwargs)


# ------------------------------------------------------------- bad op arguments (item 12)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda t: F.topk(t, True), TypeError, r"topk: k must be an integer in \[1, 3\], got True"),
        (lambda t: F.topk(t, 1.5), TypeError, r"topk: k must be an integer"),
        (lambda t: F.topk(t, 0), ValueError, r"topk: k must be an integer in \[1, 3\], got 0"),
        (lambda t: F.dropout(t, float("nan")), ValueError, r"dropout: p must be a finite number in \[0, 1\)"),
        (lambda t: F.dropout(t, 1.0), ValueError, r"dropout: p must be"),
        (lambda t: F.dropout(t, "0.5"), TypeError, r"dropout: p must be a finite number"),
        (lambda t: F.split(t, 0), ValueError, r"split: sections must be >= 1"),
        (lambda t: F.split(t, [4, -1]), ValueError, r"split: sizes must be non-negative integers"),
        (lambda t: F.concat([]), ValueError, r"concat: needs at least one tensor"),
        (lambda t: F.concat([t, t[:, :2].T]), ValueError, r"concat: shapes \(2, 3\), \(2, 2\) must match"),
        (lambda t: t.reshape(4, 2), ValueError, r"reshape: cannot reshape \(2, 3\) into \(4, 2\)"),
        (lambda t: F.cross_entropy(t, np.array([0.0, 1.0])), TypeError, r"cross_entropy: targets must be integer"),
        (lambda t: F.cross_entropy(t, np.array([0, 3])), ValueError, r"cross_entropy: targets must lie in \[0, 3\)"),
        (lambda t: t.backward(np.ones(3)), ValueError, r"grad has shape \(3,\), expected \(2, 3\)"),
        (lambda t: tm.tensor(np.arange(3), requires_grad=True), TypeError, r"requires_grad needs a float tensor"),
    ],
)
def test_bad_op_arguments_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call(leaf(np.ones((2, 3))))
