"""sum, mean, max, var: values against NumPy and gradients against finite differences."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import functional as F

AXES = [None, 0, -1, (0, 2), (1,)]
OPS = {
    "sum": (F.sum, np.sum),
    "mean": (F.mean, np.mean),
    "max": (F.max, np.max),
    "var": (F.var, np.var),
}


@pytest.mark.parametrize("name", sorted(OPS))
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reduction_values_and_gradients(name, axis, keepdims, device):
    op, reference = OPS[name]
    x = randn(2, 3, 4, device=device)
    out = op(x, axis=axis, keepdims=keepdims)
    np.testing.assert_allclose(numpy_of(out), reference(numpy_of(x), axis=axis, keepdims=keepdims), rtol=1e-12)
    assert tm.gradcheck(lambda t: op(t, axis=axis, keepdims=keepdims), [x])


def test_max_ties_share_the_gradient():
    x = tm.tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 1.0]]), requires_grad=True)
    F.max(x, axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])


def test_var_with_ddof_and_its_gradient():
    x = randn(5)
    np.testing.assert_allclose(F.var(x, ddof=1).data, np.var(x.data, ddof=1))
    assert tm.gradcheck(lambda t: F.var(t, ddof=1), [x])
    with pytest.raises(ValueError, match="no degrees of freedom"):
        F.var(randn(1), ddof=1)


def test_axis_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"sum: axis 3 is out of range for a tensor with 2 dimension"):
        randn(2, 3).sum(axis=3)
