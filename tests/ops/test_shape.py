"""matmul and the shape ops: values against NumPy, gradients against finite differences."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import functional as F

MATMUL_SHAPES = [
    ((3, 4), (4, 2)),  # plain
    ((2, 3, 4), (2, 4, 5)),  # batched
    ((2, 3, 4), (4, 5)),  # a linear layer on (B, T, d)
    ((2, 1, 3, 4), (3, 4, 2)),  # batch axes broadcast both ways
    ((4, 3), (2, 3, 2)),  # matrix on the left, batch on the right
]


@pytest.mark.parametrize("shape_a, shape_b", MATMUL_SHAPES)
def test_matmul_values_and_gradients(shape_a, shape_b, device):
    a, b = randn(*shape_a, device=device), randn(*shape_b, device=device, seed=1)
    np.testing.assert_allclose(numpy_of(a @ b), numpy_of(a) @ numpy_of(b), rtol=1e-12)
    assert tm.gradcheck(F.matmul, [a, b])


def test_matmul_shape_error_names_both_shapes():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\) do not fit"):
        randn(2, 3) @ randn(4, 5)


def test_matmul_gradient_only_for_inputs_that_need_it():
    a, b = randn(2, 3), randn(3, 4, seed=1, requires_grad=False)
    (a @ b).sum().backward()
    assert b.grad is None and a.grad.shape == (2, 3)


SHAPE_CASES = {
    "reshape": (lambda t: F.reshape(t, (6, 4)), lambda a: a.reshape(6, 4)),
    "reshape_infer": (lambda t: t.reshape(-1, 3), lambda a: a.reshape(-1, 3)),
    "transpose": (lambda t: F.transpose(t, (2, 0, 1)), lambda a: a.transpose(2, 0, 1)),
    "T": (lambda t: t.T, lambda a: a.T),
    "swapaxes": (lambda t: F.swapaxes(t, 0, 2), lambda a: a.swapaxes(0, 2)),
    "expand": (lambda t: F.expand(t[:, :1], (5, 2, 3, 4)), lambda a: np.broadcast_to(a[:, :1], (5, 2, 3, 4))),
    "unsqueeze": (lambda t: F.unsqueeze(t, 1), lambda a: a[:, None]),
    "squeeze": (lambda t: F.squeeze(t[:, :1], 1), lambda a: a[:, 0]),
    "slice": (lambda t: t[1:, ::2, -1], lambda a: a[1:, ::2, -1]),
    "int_array_repeats": (lambda t: t[np.array([0, 1, 0, 0])], lambda a: a[np.array([0, 1, 0, 0])]),
    "mixed_index": (lambda t: t[:, np.array([2, 2, 0]), 1:3], lambda a: a[:, np.array([2, 2, 0]), 1:3]),
    "bool_mask": (lambda t: t[t.data > 0], lambda a: a[a > 0]),
}


@pytest.mark.parametrize("name", sorted(SHAPE_CASES))
def test_shape_op_values_and_gradients(name):
    op, reference = SHAPE_CASES[name]
    x = randn(2, 3, 4)
    np.testing.assert_array_equal(op(x).data, reference(x.data))
    assert tm.gradcheck(op, [x])


def test_repeated_indices_add_their_gradients():
    x = randn(3)
    x[np.array([0, 0, 2, 0])].sum().backward()
    np.testing.assert_array_equal(x.grad, [3.0, 0.0, 1.0])


def test_concat_stack_split(device):
    a, b = randn(2, 3, device=device), randn(2, 1, device=device, seed=1)
    np.testing.assert_array_equal(numpy_of(F.concat([a, b], axis=1)), np.concatenate([numpy_of(a), numpy_of(b)], 1))
    assert tm.gradcheck(lambda s, t: F.concat([s, t, s], axis=1), [a, b])
    c = randn(2, 3, device=device, seed=2)
    np.testing.assert_array_equal(numpy_of(F.stack([a, c], axis=1)), np.stack([numpy_of(a), numpy_of(c)], 1))
    assert tm.gradcheck(lambda s, t: F.stack([s, t], axis=-1), [a, c])
    x = randn(2, 6, device=device)
    parts = F.split(x, [1, 2, 3], axis=1)
    assert [p.shape for p in parts] == [(2, 1), (2, 2), (2, 3)]
    assert tm.gradcheck(lambda t: F.split(t, 3, axis=-1)[1] * F.split(t, 3, axis=-1)[2], [x])


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"cannot reshape \(2, 3\) into \(4, 2\)"):
        randn(2, 3).reshape(4, 2)
    with pytest.raises(ValueError, match="does not divide into 4 equal parts"):
        F.split(randn(2, 6), 4)
    with pytest.raises(ValueError, match="add up to 5, not the axis size 6"):
        F.split(randn(2, 6), [2, 3])
    with pytest.raises(ValueError, match="axis 1 has size 3, not 1"):
        F.squeeze(randn(2, 3), 1)
    with pytest.raises(ValueError, match=r"cannot broadcast \(2, 3\) to \(4, 3\)"):
        F.expand(randn(2, 3), (4, 3))
