"""The engine: graph order, accumulation, no_grad/detach, dtypes, devices, clear errors."""

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe import backend
from tinymoe import functional as F
from tinymoe.tensor import is_grad_enabled


def test_diamond_graph_sums_both_paths(device):
    # y = a * b with a = 2x and b = 3x share x: dy/dx = 2*3x + 3*2x = 12x
    x = randn(5, device=device)
    a, b = x * 2.0, x * 3.0
    (a * b).sum().backward()
    np.testing.assert_allclose(numpy_of(x.grad), 12 * numpy_of(x), rtol=1e-12)


def test_a_tensor_used_directly_and_through_another_op():
    # y = x + 2x: x's two uses are at different depths; the traversal must still finish
    # both users before x (a regression: marking nodes visited too early lost 2/3 of it)
    x = randn(3)
    y = x + x * 2.0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(3, 3.0))
    z = randn(1, seed=1)
    (z * z * 6.0 + z).sum().backward()  # d/dz (6 z^2 + z) = 12 z + 1
    np.testing.assert_allclose(z.grad, 12 * z.data + 1, rtol=1e-12)


def test_reused_intermediate_gets_its_full_gradient_before_passing_it_on(device):
    # h is used three times; its consumers must all report before h's grad flows to x
    x = randn(4, device=device)
    h = F.exp(x)
    y = (h * h + h).sum()  # dy/dx = (2h + 1) h
    y.backward()
    h_np = np.exp(numpy_of(x))
    np.testing.assert_allclose(numpy_of(x.grad), (2 * h_np + 1) * h_np, rtol=1e-12)


def test_gradients_accumulate_over_two_backward_calls(device):
    x = randn(3, device=device)
    (x * x).sum().backward()
    first = numpy_of(x.grad).copy()
    (x * x).sum().backward()
    np.testing.assert_allclose(numpy_of(x.grad), 2 * first)
    x.grad = None
    (x * 5.0).sum().backward()
    np.testing.assert_allclose(numpy_of(x.grad), np.full(3, 5.0))


def test_leaf_grads_are_not_aliased_between_inputs():
    # add's backward hands the same array to both inputs; an in-place change to one
    # leaf's grad must not change the other's
    a, b = randn(3, seed=1), randn(3, seed=2)
    (a + b).sum().backward()
    a.grad *= 10
    np.testing.assert_array_equal(b.grad, np.ones(3))


def test_broadcast_gradients_are_summed_back_to_the_input_shape(device):
    x = randn(2, 3, 4, device=device)
    b = randn(3, 1, device=device, seed=1)
    (x * b).sum().backward()
    assert b.grad.shape == (3, 1)
    np.testing.assert_allclose(numpy_of(b.grad), numpy_of(x).sum(axis=(0, 2))[:, None], rtol=1e-12)


def test_no_grad_records_nothing():
    x = randn(3)
    with tm.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.creator is None
    assert is_grad_enabled()  # switched back on after the block
    z = x * 2.0
    assert z.requires_grad


def test_detach_cuts_the_graph():
    x = randn(3)
    y = (x.detach() * x).sum()  # only the second factor carries gradient
    y.backward()
    np.testing.assert_allclose(x.grad, x.data)


def test_a_10000_op_chain_needs_no_recursion():
    x = tm.tensor(np.ones(2), requires_grad=True)
    y = x
    for _ in range(10_000):
        y = y * 1.0001
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(2, 1.0001**10_000), rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtypes_are_preserved_through_ops_and_grads(dtype, device):
    x = tm.tensor(np.linspace(-1, 1, 6, dtype=dtype).reshape(2, 3), requires_grad=True, device=device)
    w = tm.tensor(np.ones((3, 2), dtype=dtype), requires_grad=True, device=device)
    y = F.softmax(F.tanh(x @ w) * 2.0 + 1, axis=-1)
    assert y.dtype == dtype
    (y * y).sum().backward()
    assert x.grad.dtype == dtype and w.grad.dtype == dtype


def test_tensor_factory_dtypes_and_copy():
    assert tm.tensor([1, 2, 3]).dtype == np.float32  # lists become float32
    assert tm.tensor(np.zeros(2, np.float16)).dtype == np.float16
    assert tm.tensor(np.arange(3)).dtype.kind == "i"  # integer arrays stay integer
    source = np.zeros(3)
    t = tm.tensor(source)
    t.data += 1
    assert source.sum() == 0  # tm.tensor copies, like torch.tensor


def test_requires_grad_needs_a_float_dtype():
    with pytest.raises(TypeError, match="float tensor.*int"):
        tm.tensor(np.arange(3), requires_grad=True)


def test_backward_of_a_non_scalar_needs_a_gradient():
    x = randn(2, 3)
    y = x * 2.0
    with pytest.raises(RuntimeError, match=r"needs a scalar.*shape \(2, 3\)"):
        y.backward()
    y.backward(np.ones((2, 3)))  # with an explicit gradient it is fine
    np.testing.assert_allclose(x.grad, np.full((2, 3), 2.0))
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), expected \(2, 3\)"):
        y.backward(np.ones(3))


def test_backward_without_any_input_requiring_grad_is_explained():
    y = tm.tensor([1.0, 2.0]).sum()
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


def test_mixing_devices_names_both(monkeypatch):
    # Without a GPU we pretend one array lives on "cuda": the check is what is tested.
    a, b = randn(2), randn(2, seed=1)
    real = backend.device_of
    monkeypatch.setattr(backend, "device_of", lambda arr: "cuda" if arr is b.data else real(arr))
    with pytest.raises(RuntimeError, match=r"different devices \(cpu, cuda\).*\.to\("):
        a + b


@pytest.mark.gpu
@pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")
def test_mixing_real_devices_fails():
    with pytest.raises(RuntimeError, match="different devices"):
        randn(2) + randn(2, device="cuda")


def test_retain_grad_keeps_an_intermediate_gradient():
    x = randn(3)
    h = (x * 3.0).retain_grad()
    (h * h).sum().backward()
    np.testing.assert_allclose(h.grad, 2 * h.data)


def test_numpy_arrays_and_numbers_mix_with_tensors_on_either_side():
    x = randn(3)
    array = np.array([1.0, 2.0, 3.0])
    y = (array * x + 1 - x / 2 + 2 / (x * x + 1)).sum()
    y.backward()
    xv = x.data
    np.testing.assert_allclose(x.grad, array - 0.5 - 4 * xv / (xv * xv + 1) ** 2, rtol=1e-12)
    assert isinstance(x > 0, np.ndarray)  # comparisons give plain arrays: no gradient


def test_full_reductions_hold_a_0d_array_not_a_numpy_scalar():
    y = randn(2, 3).sum()
    assert isinstance(y.data, np.ndarray) and y.shape == ()
    y.data[()] = 5.0  # writable in place, like any other tensor data
    assert y.item() == 5.0
