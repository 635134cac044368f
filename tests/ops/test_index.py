"""take, gather, scatter_add, index_add, embedding: values against NumPy loops written
here, gradients against finite differences (repeated indices included)."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import backend
from tinymoe import functional as F


def on(device, array):
    return backend.to_device(array, device)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_take_values_and_gradients(axis, device):
    x = randn(3, 4, 2, device=device)
    index = np.array([[0, 1], [1, 1], [0, 0]])  # repeats: gradients must add
    expected = np.take(numpy_of(x), index, axis=axis)
    np.testing.assert_array_equal(numpy_of(F.take(x, on(device, index), axis)), expected)
    assert tm.gradcheck(lambda t: F.take(t, on(device, index), axis), [x])


def test_embedding_gradient_counts_each_use():
    table = randn(5, 3)
    ids = np.array([[1, 4, 1], [1, 0, 2]])
    F.embedding(table, ids).sum().backward()
    uses = np.bincount(ids.ravel(), minlength=5)
    np.testing.assert_array_equal(table.grad, np.repeat(uses[:, None], 3, axis=1))


def test_gather_matches_a_loop_and_gradchecks(device):
    x = randn(4, 5, device=device)
    index = np.array([[4, 0], [1, 1], [3, 2], [0, 4]])
    out = numpy_of(F.gather(x, on(device, index), axis=-1))
    xn = numpy_of(x)
    for i in range(4):
        for j in range(2):
            assert out[i, j] == xn[i, index[i, j]]
    assert tm.gradcheck(lambda t: F.gather(t, on(device, index), axis=1), [x])
    rows = np.array([[3, 0, 1, 2, 0], [1, 1, 0, 3, 2]])  # along axis 0, with repeats
    assert tm.gradcheck(lambda t: F.gather(t, on(device, rows), axis=0), [x])


def test_scatter_add_matches_a_loop_and_gradchecks(device):
    x, src = randn(3, 4, device=device), randn(3, 2, device=device, seed=1)
    index = np.array([[0, 0], [3, 1], [2, 3]])
    expected = numpy_of(x).copy()
    for i in range(3):
        for j in range(2):
            expected[i, index[i, j]] += numpy_of(src)[i, j]
    np.testing.assert_allclose(numpy_of(F.scatter_add(x, on(device, index), src, axis=1)), expected)
    assert tm.gradcheck(lambda a, b: F.scatter_add(a, on(device, index), b, axis=1), [x, src])


def test_index_add_matches_a_loop_and_gradchecks(device):
    x, src = randn(4, 3, device=device), randn(5, 3, device=device, seed=1)
    index = np.array([0, 2, 2, 3, 0])
    expected = numpy_of(x).copy()
    for i, row in enumerate(index):
        expected[row] += numpy_of(src)[i]
    np.testing.assert_allclose(numpy_of(F.index_add(x, on(device, index), src)), expected)
    assert tm.gradcheck(lambda a, b: F.index_add(a, on(device, index), b), [x, src])


def test_bad_indices_are_reported():
    with pytest.raises(IndexError, match=r"take: indices must lie in \[0, 3\).*from 0 to 5"):
        F.take(randn(3, 2), np.array([0, 5]))
    with pytest.raises(ValueError, match="gather: index has 1 axes, x has 2"):
        F.gather(randn(3, 2), np.array([0, 1]))
    with pytest.raises(ValueError, match="index shape .* must equal src shape"):
        F.scatter_add(randn(3, 2), np.zeros((3, 1), int), randn(3, 2))
