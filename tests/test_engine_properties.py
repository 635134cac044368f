"""Property-based differential tests of the whole engine: random programs, run twice.

The per-op tests (``tests/ops/``) check each op on its own, on inputs someone chose. Bugs
also live where nobody looks: an op is right for ``axis=1`` and wrong for ``axis=-1``; right
for a (3, 4) input and wrong for a 0-d one or a size-1 axis that broadcasts; right when its
output is used once and wrong when two later ops use it (a "diamond": the engine must sum
both gradients before passing them on); right in float64 and wrong in float32. Transpose
with negative axes was such a bug: its forward was right, its backward was not, and no test
wrote ``transpose(-1, 0)``.

So hypothesis writes the tests. A random **program** (``tests/engine_programs.py``) is:

    v0, v1, v2 = 1-3 leaves: float32 or float64, shapes that broadcast together (0-d, size-1
                 axes, now and then an empty axis), distinct values, some requiring grad
    v3 = <op>(v1, v0; its other arguments)        3-8 steps, each any entry point of the API:
    v4 = <op>(v3, v3)                             every op in tinymoe.ops, F.linear,
    v5 = <op>(v3, v2, ...)                        F.mse_loss, every Tensor operator and
    ...                                           method, on any earlier values

with every other argument drawn too: negative axes and tuples of axes, keepdims, k, index
arrays with repeats and negative entries, slices, boolean masks, target shapes, dtypes.
``check`` then runs the program

1. in tinymoe, in float64, comparing every value (shape, dtype, requires_grad, numbers) with
   plain NumPy/SciPy applied to the same inputs, and with the whole program evaluated by
   NumPy alone: each op's reference is written from its definition, never by calling
   tinymoe (only dropout's random mask is read off tinymoe's output);
2. backward of ``L = sum_i sum(v_i * R_i)`` over all values, with fixed random weights R_i
   (so every element of every value matters), once or twice (gradients must accumulate):
   every leaf gradient, and every gradient kept by ``retain_grad``, is compared with float64
   central differences of the NumPy program, so the expected gradient owes nothing to
   tinymoe either; a gradient appears exactly where it should, in the tensor's shape and dtype;
3. again in the program's own dtypes when it has float32 in it: each value must have
   NumPy's dtype and its numbers within float32's precision, and the float32 gradients must
   match the float64 ones.

Central differences are no derivative across a kink (relu at 0, ties in max, top-k, maximum,
clip at a bound): ``check`` compares the two one-sided slopes and rejects the rare example
where they disagree. Each run checks PROGRAMS + PROGRAMS_PER_OP x (number of entry points),
over 2000 programs, the same ones every time (``derandomize``); a failure prints the
program, shrunk to a small one.
"""

import types

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import tinymoe as tm
from tests.engine_programs import OPS, TENSOR_HARNESS, check, programs
from tinymoe import functional as F
from tinymoe.tensor import Tensor

PROGRAMS = 400  # programs of any ops
PROGRAMS_PER_OP = 20  # and, for each entry point (83 of them), programs that use it
SETTINGS = settings(
    derandomize=True,  # the same programs on every run: CI is reproducible
    database=None,
    deadline=None,  # a program's cost varies with its shapes; the file's total is what counts
    suppress_health_check=[HealthCheck.too_slow],  # drawing a program and its values takes time
)


def test_the_table_covers_every_op_and_every_tensor_method():
    """An op added to tinymoe.ops (or tm.F) or a method added to Tensor must get an entry in
    OPS, or this test fails: nothing public goes untested by the programs."""
    methods = {name for name, value in vars(Tensor).items() if isinstance(value, (types.FunctionType, property))}
    api = {f"F.{name}" for name in F.__all__} | {f"Tensor.{name}" for name in methods - TENSOR_HARNESS.keys()}
    assert set(OPS) == api, f"missing from OPS: {sorted(api - set(OPS))}; stale: {sorted(set(OPS) - api)}"
    assert TENSOR_HARNESS.keys() <= methods, f"not Tensor attributes: {sorted(TENSOR_HARNESS.keys() - methods)}"


@settings(SETTINGS, max_examples=PROGRAMS)
@given(programs())
def test_random_programs(program):
    check(program)


@pytest.mark.parametrize("name", sorted(OPS))
@settings(SETTINGS, max_examples=PROGRAMS_PER_OP)
@given(data=st.data())
def test_random_programs_using(name, data):
    """Every entry point in every run, whatever a uniform draw over all of them would miss."""
    check(data.draw(programs(must_use=name), label="program"))


# ------------------------------------------------ the programs have what they are meant to
def _uses(program):
    """How many step inputs name each value."""
    uses = [0] * (len(program.leaves) + sum(step.n_out for step in program.steps))
    for step in program.steps:
        for i in step.inputs:
            uses[i] += 1
    return uses


def _negative_axis(step) -> bool:
    axes = [step.args.get(key) for key in ("axis", "axes", "a", "b")]
    return any(np.any(np.asarray(a) < 0) for a in axes if a is not None)


FEATURES = {
    "a diamond: an intermediate used twice": lambda p: any(n >= 2 for n in _uses(p)[len(p.leaves) :]),
    "one value twice in one step": lambda p: any(len(set(s.inputs)) < len(s.inputs) for s in p.steps),
    "a 0-d leaf": lambda p: any(leaf.data.ndim == 0 for leaf in p.leaves),
    "a size-1 axis broadcast against a longer one": lambda p: any(
        np.broadcast_shapes(*(leaf.data.shape for leaf in p.leaves))[-1 - i] > 1
        for leaf in p.leaves
        for i, n in enumerate(reversed(leaf.data.shape))
        if n == 1
    ),
    "float32 and float64 leaves": lambda p: {leaf.data.dtype.name for leaf in p.leaves} == {"float32", "float64"},
    "a negative axis": lambda p: any(_negative_axis(s) for s in p.steps),
    "an empty leaf": lambda p: any(leaf.data.size == 0 for leaf in p.leaves),
    "a constant leaf": lambda p: any(not leaf.requires_grad for leaf in p.leaves),
    "retain_grad and backward twice": lambda p: p.backward_twice and any(s.retain_grad for s in p.steps),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_the_programs_have(feature):
    """The strategy really draws what the tests rely on (``find`` fails if it never does)."""
    find(programs(), FEATURES[feature], settings=settings(SETTINGS, max_examples=200, phases=[Phase.generate]))


# ------------------------------------------------------------ the bugs the programs found
def _leaf(shape, seed=0):
    return tm.tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)


@pytest.mark.parametrize(
    "shape, axes", [((3, 3), (-1, 0)), ((3, 3), (0, -1)), ((2, 3, 4), (-1, 0, 1)), ((2, 3, 4), (0, -1, -2))]
)
@pytest.mark.parametrize("spelling", ["x.transpose(*axes)", "F.transpose(x, axes)"])
def test_transpose_with_negative_axes_sends_back_the_transposed_gradient(shape, axes, spelling):
    """Forward was right and backward was not (issue 9, item 1): the inverse permutation was
    computed from the raw negative axes. The gradient of sum(transpose(x) * w) is w put back
    in place: w transposed by the inverse permutation."""
    x = _leaf(shape)
    y = x.transpose(*axes) if spelling == "x.transpose(*axes)" else F.transpose(x, axes)
    np.testing.assert_array_equal(y.data, np.transpose(x.data, axes))
    w = np.random.default_rng(1).standard_normal(y.shape)
    (y * w).sum().backward()
    np.testing.assert_array_equal(x.grad, np.transpose(w, np.argsort(np.array(axes) % len(shape))))


def test_gather_with_an_index_that_broadcasts_against_x():
    """As in numpy.take_along_axis, index and x broadcast along the other axes: an index of
    one row picks from every row of x, and a one-row x serves every row of the index. The
    forward did so; the backward raised (ValueError, IndexError) instead of adding up."""
    x = tm.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    y = F.gather(x, np.array([[2, 0]]), axis=1)  # index (1, 2) against x (2, 3)
    np.testing.assert_array_equal(y.data, [[2.0, 0.0], [5.0, 3.0]])
    (y * np.array([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad, [[2.0, 0.0, 1.0], [4.0, 0.0, 3.0]])

    x = tm.tensor(np.arange(3.0).reshape(1, 3), requires_grad=True)
    y = F.gather(x, np.array([[2, 0], [1, 1]]), axis=1)  # x (1, 3) against index (2, 2)
    np.testing.assert_array_equal(y.data, [[2.0, 0.0], [1.0, 1.0]])
    (y * np.array([[1.0, 2.0], [3.0, 4.0]])).sum().backward()
    np.testing.assert_array_equal(x.grad, [[2.0, 3.0 + 4.0, 1.0]])


def test_scatter_add_with_an_index_smaller_than_x():
    """out[..., index[..., j, ...], ...] += src[..., j, ...]: a (1, 2) index into a (3, 2) x
    touches row 0 only. src's gradient used take_along_axis, which broadcast the index over
    all three rows: the sum of three rows' gradients, silently wrong."""
    x = tm.tensor(np.zeros((3, 2)), requires_grad=True)
    src = tm.tensor(np.array([[10.0, 20.0]]), requires_grad=True)
    out = F.scatter_add(x, np.array([[1, 0]]), src, axis=1)
    np.testing.assert_array_equal(out.data, [[20.0, 10.0], [0.0, 0.0], [0.0, 0.0]])
    w = np.arange(6.0).reshape(3, 2)
    (out * w).sum().backward()
    np.testing.assert_array_equal(src.grad, [[w[0, 1], w[0, 0]]])  # where each src element landed
    np.testing.assert_array_equal(x.grad, w)


def test_index_add_refuses_a_src_that_would_broadcast():
    """src must have x's shape with the index's length along the axis (as documented, and as
    in PyTorch). NumPy's add.at broadcast a (1, 3) src over three indexed rows, and backward
    then failed with an error that blamed IndexAdd.backward; forward now names src."""
    x = tm.tensor(np.zeros((2, 3)), requires_grad=True)
    with pytest.raises(ValueError, match=r"index_add: src has shape \(1, 3\).* \(3, 3\)"):
        F.index_add(x, np.array([0, 1, 1]), tm.tensor(np.ones((1, 3)), requires_grad=True), axis=0)


@pytest.mark.parametrize("shape_a, shape_b", [((2, 0), (0, 3)), ((2, 3), (3, 0)), ((2, 2, 0), (0, 3))])
def test_matmul_with_an_empty_axis(shape_a, shape_b):
    """NumPy multiplies a (2, 0) by a (0, 3) into zeros (2, 3). Backward reshaped a size-0
    array to (-1, 0), which NumPy refuses (ValueError). Every gradient here is zero."""
    a, b = _leaf(shape_a), _leaf(shape_b, seed=1)
    y = a @ b
    np.testing.assert_array_equal(y.data, np.matmul(a.data, b.data))
    (y * np.ones(y.shape)).sum().backward()
    np.testing.assert_array_equal(a.grad, np.zeros(shape_a))
    np.testing.assert_array_equal(b.grad, np.zeros(shape_b))
