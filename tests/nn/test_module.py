"""Module: how layers name, hold, move, save and load their tensors."""

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.nn import Dropout, Linear, Module, ModuleList, Parameter, Sequential


class Net(Module):
    """A Linear child, a ModuleList of two layers, a bare Parameter and a buffer."""

    def __init__(self):
        self.fc = Linear(2, 3)
        self.blocks = ModuleList([Linear(3, 3, bias=False), Linear(3, 3)])
        self.scale = Parameter(np.ones(3, np.float32))
        self.register_buffer("counts", np.array([1, 2, 3], np.int64))

    def forward(self, x):
        x = self.fc(x)
        for block in self.blocks:
            x = block(x)
        return x * self.scale


PARAM_NAMES = ["fc.weight", "fc.bias", "blocks.0.weight", "blocks.1.weight", "blocks.1.bias", "scale"]


def test_named_parameters_gives_dotted_names_in_attribute_order():
    assert [name for name, _ in Net().named_parameters()] == PARAM_NAMES


def test_parameters_are_the_named_parameters_themselves():
    net = Net()
    expected = [net.fc.weight, net.fc.bias, net.blocks[0].weight, net.blocks[1].weight, net.blocks[1].bias, net.scale]
    params = net.parameters()
    assert len(params) == len(expected)
    assert all(p is q for p, q in zip(params, expected, strict=True))
    assert all(p.requires_grad for p in params)


def test_buffers_are_saved_but_not_trained():
    net = Net()
    state = net.state_dict()
    assert list(state) == [*PARAM_NAMES, "counts"]
    np.testing.assert_array_equal(state["counts"], [1, 2, 3])
    assert all(p is not net.counts for p in net.parameters())


def test_buffers_of_children_get_dotted_names():
    outer = Sequential(Net())
    assert "0.counts" in outer.state_dict()


def test_train_and_eval_reach_every_submodule():
    model = Sequential(Linear(4, 4), Dropout(0.5), ModuleList([Dropout(0.5)]))
    model.eval()
    assert all(not m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_dropout_inside_a_model_is_the_identity_in_eval_mode():
    model = Sequential(Linear(4, 4), Dropout(0.5)).eval()
    x = tm.tensor(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    w, b = model[0].weight.numpy(), model[0].bias.numpy()
    np.testing.assert_allclose(model(x).numpy(), x.numpy() @ w + b, rtol=1e-6)


def test_zero_grad_sets_every_grad_to_none():
    net = Net()
    net(tm.tensor(np.ones((2, 2), np.float32))).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_state_dict_round_trip_is_bit_exact():
    tm.manual_seed(1)
    source = Net()
    tm.manual_seed(2)
    target = Net()
    assert not np.array_equal(source.fc.weight.numpy(), target.fc.weight.numpy())

    target.load_state_dict(source.state_dict())
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values(), strict=True):
        assert a.dtype == b.dtype, name
        assert np.array_equal(a, b), name
        if a.dtype == np.float32:
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), name


def test_state_dict_holds_copies_not_the_live_arrays():
    net = Net()
    state = net.state_dict()
    state["fc.weight"][:] = 0
    assert np.any(net.fc.weight.numpy() != 0)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("blocks.1.bias"), r"missing keys: \['blocks\.1\.bias'\]"),
        (lambda s: s.update({"head.weight": np.zeros(2)}), r"unexpected keys: \['head\.weight'\]"),
        (lambda s: s.update({"fc.weight": np.zeros((3, 2))}), r"shape mismatch: fc\.weight"),
    ],
    ids=["missing", "unexpected", "wrong-shape"],
)
def test_strict_load_names_the_offending_key(edit, message):
    state = Net().state_dict()
    edit(state)
    with pytest.raises(ValueError, match=message):
        Net().load_state_dict(state)


def test_non_strict_load_ignores_missing_and_unexpected_keys():
    tm.manual_seed(1)
    source = Net()
    tm.manual_seed(2)
    target = Net()
    target.fc.bias.data += 1  # differs from source's zeros, so an overwrite would show
    kept_bias = target.fc.bias.numpy().copy()

    state = source.state_dict()
    del state["fc.bias"]
    state["head.weight"] = np.zeros(2)
    target.load_state_dict(state, strict=False)

    np.testing.assert_array_equal(target.fc.weight.numpy(), source.fc.weight.numpy())
    np.testing.assert_array_equal(target.fc.bias.numpy(), kept_bias)


def test_to_cuda_moves_parameters_or_says_how_to_get_a_gpu():
    net = Net()
    if tm.cuda_available():
        net.to("cuda")
        assert {t.device for _, t in net._named_tensors()} == {"cuda"}
        assert net.device == "cuda"
    else:
        with pytest.raises(RuntimeError, match="requirements-gpu.txt"):
            net.to("cuda")


def test_to_rejects_an_unknown_device():
    with pytest.raises(ValueError, match="device must be one of"):
        Net().to("tpu")


def test_astype_converts_float_parameters_and_keeps_integer_buffers():
    net = Net()
    before = net.state_dict()
    net.astype(np.float64)
    for name, p in net.named_parameters():
        assert p.dtype == np.float64, name
        np.testing.assert_array_equal(p.numpy(), before[name].astype(np.float64))
    assert net.counts.dtype == np.int64


def test_sequential_applies_modules_in_order():
    first, second = Linear(2, 3), Linear(3, 1)
    for p in [first.bias, second.bias]:
        p.data[:] = np.arange(1, p.size + 1)
    x = np.array([[1.0, -2.0], [0.5, 3.0]], np.float32)
    expected = (x @ first.weight.numpy() + first.bias.numpy()) @ second.weight.numpy() + second.bias.numpy()
    np.testing.assert_allclose(Sequential(first, second)(tm.tensor(x)).numpy(), expected, rtol=1e-6)


def test_module_list_indexing_length_and_iteration():
    layers = [Linear(2, 2), Linear(2, 2), Linear(2, 2)]
    blocks = ModuleList(layers)
    assert len(blocks) == 3
    assert blocks[0] is layers[0] and blocks[-1] is layers[2]
    assert all(a is b for a, b in zip(blocks, layers, strict=True))
    blocks.append(Linear(2, 1))
    assert len(blocks) == 4 and blocks[3].d_out == 1


@pytest.mark.parametrize("index", [3, -4])
def test_module_list_index_out_of_range_raises_index_error(index):
    with pytest.raises(IndexError, match="out of range"):
        ModuleList([Linear(2, 2)] * 3)[index]


def test_tied_weights_are_listed_once():
    class Tied(Module):
        def __init__(self):
            self.embed = tm.nn.Embedding(5, 3)
            self.head = Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight  # same Parameter object in two places

    names = [name for name, _ in Tied().named_parameters()]
    assert names == ["embed.weight"]


def test_load_state_dict_refuses_values_that_are_not_numbers():
    layer = tm.nn.Linear(2, 3)
    state = layer.state_dict()
    state["weight"] = np.full((2, 3), "w")
    with pytest.raises(ValueError, match=r"not numbers: weight: dtype <U1"):
        layer.load_state_dict(state)
