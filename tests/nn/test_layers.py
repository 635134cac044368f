"""The layers, each checked twice: its values against a plain-NumPy version written here,
and its gradients against finite differences (float64 gradcheck)."""

import math

import numpy as np
import pytest
from scipy.special import erf

import tinymoe as tm
from tests.helpers import numpy_of, randn
from tinymoe.models import LSTMMoELM, TransformerLM
from tinymoe.moe import NoisyTopKMoE, TopKMoE
from tinymoe.nn import (
    LSTM,
    CausalSelfAttention,
    Dropout,
    Embedding,
    FeedForward,
    LayerNorm,
    Linear,
    Module,
    RMSNorm,
    TransformerBlock,
)

# --------------------------------------------------------------------------- helpers


def randomized(module, seed=1):
    """Replace every parameter by N(0, 0.5^2) values, so that no weight is a trivial 1 or 0
    (norm gains start at 1, biases at 0: a bug in how they are applied would not show)."""
    rng = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = (0.5 * rng.standard_normal(p.shape)).astype(p.dtype)
    return module


def weights(module):
    """The module's parameters as float64 NumPy arrays, by name."""
    return {name: array.astype(np.float64) for name, array in module.state_dict().items()}


def float32_input(*shape, device):
    x = randn(*shape, device=device, requires_grad=False, dtype=np.float32)
    return x, numpy_of(x).astype(np.float64)


def assert_close(actual, expected):
    """float32 layer vs float64 NumPy: agree to float32 rounding, far below any real bug."""
    np.testing.assert_allclose(numpy_of(actual), expected, rtol=1e-4, atol=1e-5)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_layer_norm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def np_rms_norm(x, w, eps=1e-6):
    return x / np.sqrt((x**2).mean(axis=-1, keepdims=True) + eps) * w


def np_attention(x, p, n_heads, prefix=""):
    """Causal multi-head attention, one head at a time, with an explicit -inf mask."""
    steps, d = x.shape[1], x.shape[2]
    size = d // n_heads
    q, k, v = np.split(x @ p[prefix + "qkv.weight"] + p[prefix + "qkv.bias"], 3, axis=-1)
    future = np.triu(np.ones((steps, steps), dtype=bool), k=1)  # future[t, s]: s > t
    heads = []
    for h in range(n_heads):
        cols = slice(h * size, (h + 1) * size)
        scores = q[..., cols] @ k[..., cols].transpose(0, 2, 1) / math.sqrt(size)
        scores[:, future] = -np.inf
        heads.append(softmax(scores) @ v[..., cols])
    return np.concatenate(heads, axis=-1) @ p[prefix + "out.weight"] + p[prefix + "out.bias"]


def np_lstm_layer(x, w_ih, w_hh, b):
    """The LSTM recurrence written out step by step, gates in the order i, f, g, o."""
    batch, steps, _ = x.shape
    n = w_hh.shape[0]
    h, c = np.zeros((batch, n)), np.zeros((batch, n))
    outputs = []
    for t in range(steps):
        z = x[:, t] @ w_ih + h @ w_hh + b
        i, f, g, o = sigmoid(z[:, :n]), sigmoid(z[:, n : 2 * n]), np.tanh(z[:, 2 * n : 3 * n]), sigmoid(z[:, 3 * n :])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs, axis=1), h, c


# --------------------------------------------------------------------------- values


def test_linear_is_x_times_w_plus_b(device):
    layer = randomized(Linear(3, 4))
    p = weights(layer)
    x, x64 = float32_input(2, 3, device=device)
    assert_close(layer.to(device)(x), x64 @ p["weight"] + p["bias"])


def test_embedding_picks_rows_of_the_table(device):
    table = Embedding(5, 3)
    ids = np.array([[4, 0, 4], [1, 2, 3]])
    out = table.to(device)(tm.tensor(ids, device=device))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(numpy_of(out), table.state_dict()["weight"][ids])


def test_layer_norm_matches_numpy(device):
    norm = randomized(LayerNorm(4))
    p = weights(norm)
    x, x64 = float32_input(2, 3, 4, device=device)
    assert_close(norm.to(device)(x), np_layer_norm(x64, p["weight"], p["bias"]))


def test_rms_norm_matches_numpy(device):
    norm = randomized(RMSNorm(4))
    x, x64 = float32_input(2, 3, 4, device=device)
    assert_close(norm.to(device)(x), np_rms_norm(x64, weights(norm)["weight"]))


NP_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "gelu": lambda z: z * 0.5 * (1 + erf(z / math.sqrt(2))),  # exact GELU, x Phi(x)
}


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_feed_forward_matches_numpy(activation, device):
    ffn = randomized(FeedForward(4, 6, activation))
    p = weights(ffn)
    x, x64 = float32_input(2, 4, device=device)
    if activation == "swiglu":
        gate = x64 @ p["w1.weight"]
        expected = (gate * sigmoid(gate) * (x64 @ p["w3.weight"])) @ p["w2.weight"]
    else:
        hidden = NP_ACTIVATIONS[activation](x64 @ p["w1.weight"] + p["w1.bias"])
        expected = hidden @ p["w2.weight"] + p["w2.bias"]
    assert_close(ffn.to(device)(x), expected)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_lstm_matches_a_numpy_loop(n_layers, device):
    lstm = randomized(LSTM(2, 3, n_layers))
    p = weights(lstm)
    x, expected = float32_input(2, 4, 2, device=device)
    out, states = lstm.to(device)(x)
    assert len(states) == n_layers
    for i, (h, c) in enumerate(states):
        expected, h_np, c_np = np_lstm_layer(expected, *(p[f"layers.{i}.{n}"] for n in ["w_ih", "w_hh", "bias"]))
        assert_close(h, h_np)
        assert_close(c, c_np)
    assert_close(out, expected)


def test_lstm_continues_from_a_given_state():
    lstm = randomized(LSTM(2, 3, n_layers=2)).astype(np.float64)
    x = randn(1, 5, 2, requires_grad=False)
    whole, _ = lstm(x)
    first, states = lstm(x[:, :2])
    rest, _ = lstm(x[:, 2:], states)
    np.testing.assert_allclose(np.concatenate([first.numpy(), rest.numpy()], axis=1), whole.numpy(), atol=1e-12)


def test_attention_matches_numpy_with_an_explicit_causal_mask(device):
    attention = randomized(CausalSelfAttention(4, n_heads=2))
    p = weights(attention)
    x, x64 = float32_input(2, 3, 4, device=device)
    assert_close(attention.to(device)(x), np_attention(x64, p, n_heads=2))


def test_attention_is_causal():
    attention = randomized(CausalSelfAttention(4, n_heads=2)).astype(np.float64)
    x = randn(1, 5, 4, requires_grad=False)
    changed = x.numpy().copy()
    changed[:, 2] += 1.0  # change position t = 2 only
    before, after = attention(x).numpy(), attention(tm.tensor(changed)).numpy()
    np.testing.assert_allclose(after[:, :2], before[:, :2], rtol=0, atol=1e-12)  # t < 2: untouched
    assert np.all(np.abs(after[:, 2:] - before[:, 2:]) > 1e-6)  # t >= 2: they do see it


class ScaleWithAux(Module):
    """A stand-in for an MoE layer: returns (2 h, {"aux": mean(h^2)})."""

    def forward(self, h):
        return h * 2.0, {"aux": (h * h).mean()}


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_transformer_block_with_dense_ffn_matches_numpy(norm, device):
    block = randomized(TransformerBlock(4, 2, FeedForward(4, 8, "gelu"), norm=norm))
    p = weights(block)

    def np_norm(h, i):
        if norm == "layernorm":
            return np_layer_norm(h, p[f"norm{i}.weight"], p[f"norm{i}.bias"])
        return np_rms_norm(h, p[f"norm{i}.weight"])

    x, x64 = float32_input(2, 3, 4, device=device)
    h = x64 + np_attention(np_norm(x64, 1), p, n_heads=2, prefix="attn.")
    hidden = NP_ACTIVATIONS["gelu"](np_norm(h, 2) @ p["ffn.w1.weight"] + p["ffn.w1.bias"])
    expected = h + hidden @ p["ffn.w2.weight"] + p["ffn.w2.bias"]

    y, aux = block.to(device)(x)
    assert_close(y, expected)
    assert aux == {}


def test_transformer_block_passes_the_ffn_aux_losses_through(device):
    block = randomized(TransformerBlock(4, 2, ScaleWithAux()))
    p = weights(block)
    x, x64 = float32_input(2, 3, 4, device=device)
    h = x64 + np_attention(np_layer_norm(x64, p["norm1.weight"], p["norm1.bias"]), p, n_heads=2, prefix="attn.")
    normed = np_layer_norm(h, p["norm2.weight"], p["norm2.bias"])

    y, aux = block.to(device)(x)
    assert_close(y, h + 2 * normed)  # the residual is added by the block, around the FFN
    assert list(aux) == ["aux"]
    assert_close(aux["aux"], (normed**2).mean())


# --------------------------------------------------------------------------- gradients

# (module, input shape, what to differentiate); at most ~200 numbers checked per case
GRADCHECK_CASES = {
    "linear": (lambda: Linear(3, 4), (2, 3), None),
    "layernorm": (lambda: LayerNorm(4), (2, 3, 4), None),
    "rmsnorm": (lambda: RMSNorm(4), (2, 3, 4), None),
    "ffn-relu": (lambda: FeedForward(4, 6, "relu"), (2, 4), None),
    "ffn-gelu": (lambda: FeedForward(4, 6, "gelu"), (2, 4), None),
    "ffn-swiglu": (lambda: FeedForward(4, 6, "swiglu"), (2, 4), None),
    "lstm-1-layer": (lambda: LSTM(2, 3, 1), (1, 3, 2), lambda out: out[0]),
    "lstm-2-layers": (lambda: LSTM(2, 3, 2), (1, 3, 2), lambda out: out[0]),
    "lstm-final-cell": (lambda: LSTM(2, 3, 1), (1, 3, 2), lambda out: out[1][0][1]),
    "attention": (lambda: CausalSelfAttention(4, 2), (2, 3, 4), None),
    "block-dense": (lambda: TransformerBlock(4, 2, FeedForward(4, 8)), (1, 3, 4), lambda out: out[0]),
    "block-aux-y": (lambda: TransformerBlock(4, 2, ScaleWithAux()), (1, 3, 4), lambda out: out[0]),
    "block-aux-loss": (lambda: TransformerBlock(4, 2, ScaleWithAux()), (1, 3, 4), lambda out: out[1]["aux"]),
}


@pytest.mark.parametrize("case", list(GRADCHECK_CASES))
def test_gradients_match_finite_differences(case):
    make, shape, pick = GRADCHECK_CASES[case]
    module = randomized(make()).astype(np.float64)
    pick = pick or (lambda out: out)
    x = randn(*shape)
    assert tm.gradcheck(lambda x: pick(module(x)), [x], params=dict(module.named_parameters()))


def test_embedding_gradient_adds_up_repeated_ids():
    table = Embedding(5, 3).astype(np.float64)
    ids = np.array([[4, 0, 4], [1, 4, 3]])  # row 4 is used three times, row 2 never
    assert tm.gradcheck(lambda: table(ids), [], params=dict(table.named_parameters()))


# --------------------------------------------------------------------------- dropout


def test_dropout_zeroes_about_p_and_scales_the_rest(device):
    p = 0.25
    x = tm.tensor(np.ones((200, 200), np.float32), device=device)
    y = numpy_of(Dropout(p)(x))
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.01  # 40 000 draws: the std of the fraction is 0.002
    np.testing.assert_allclose(y[~dropped], 1 / (1 - p), rtol=1e-6)


def test_dropout_is_the_identity_in_eval_mode(device):
    x = randn(4, 5, device=device, requires_grad=False)
    np.testing.assert_array_equal(numpy_of(Dropout(0.5).eval()(x)), numpy_of(x))


# --------------------------------------------------------------------------- inputs: one rule for every layer
# (nn.checks.as_input; the bad arguments and inputs, one line each: tests/test_bad_input.py)

NN_LAYERS = {  # name: (layer, a valid input shape)
    "linear": (lambda: Linear(4, 3), (2, 4)),
    "layer_norm": (lambda: LayerNorm(4), (2, 4)),
    "rms_norm": (lambda: RMSNorm(4), (2, 4)),
    "dropout": (lambda: Dropout(0.5).eval(), (2, 4)),
    "feed_forward": (lambda: FeedForward(4, 8, "swiglu"), (2, 4)),
    "attention": (lambda: CausalSelfAttention(4, 2), (2, 3, 4)),
    "lstm": (lambda: LSTM(4, 3, n_layers=2), (2, 3, 4)),
    "block": (lambda: TransformerBlock(4, 2, FeedForward(4, 8)), (2, 3, 4)),
}


def first(output):
    """The layer's output tensor (LSTM and TransformerBlock return a pair)."""
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("dtype", [np.int64, bool])
@pytest.mark.parametrize("name", sorted(NN_LAYERS))
def test_integer_and_boolean_inputs_are_refused_with_a_hint_to_cast(name, dtype):
    make, shape = NN_LAYERS[name]
    with pytest.raises(TypeError, match=r"x must hold floats \(float16, float32 or float64\), got .*cast it first"):
        make()(tm.tensor(np.ones(shape, dtype)))


@pytest.mark.parametrize("name", sorted(NN_LAYERS))
def test_a_list_or_an_array_is_taken_as_tm_tensor_takes_it(name):
    make, shape = NN_LAYERS[name]
    layer, x = make(), np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    expected = first(layer(tm.tensor(x))).data
    np.testing.assert_array_equal(first(layer(x.tolist())).data, expected)  # a list becomes float32
    np.testing.assert_array_equal(first(layer(x)).data, expected)


def test_linear_takes_a_single_token_as_a_batch_of_one():
    layer, x = Linear(4, 3), randn(4, dtype=np.float32)
    y = layer(x)
    assert y.shape == (3,)
    np.testing.assert_allclose(y.data, layer(x.data[None]).data[0], rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, layer.weight.data.sum(axis=1), rtol=1e-6)


EMPTY = [(name, shape) for name, (_, valid) in sorted(NN_LAYERS.items())
         for shape in ([(0, 4)] if len(valid) == 2 else [(0, 3, 4), (2, 0, 4)])]


@pytest.mark.parametrize("name, shape", EMPTY)
def test_an_empty_input_gives_an_empty_output_and_zero_gradients(name, shape):
    layer = NN_LAYERS[name][0]()
    x = tm.tensor(np.zeros(shape, np.float32), requires_grad=True)
    y = first(layer(x))
    assert y.shape[:-1] == shape[:-1] and y.size == 0
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.zeros(shape))
    assert all(p.grad is None or not p.grad.any() for p in layer.parameters())


def test_embedding_takes_ids_as_a_list_an_array_or_a_tensor():
    layer = Embedding(5, 3)
    expected = layer(np.array([[1, 4]])).data
    np.testing.assert_array_equal(layer([[1, 4]]).data, expected)
    np.testing.assert_array_equal(layer(tm.tensor(np.array([[1, 4]]))).data, expected)
    assert layer([]).shape == (0, 3)  # an empty list (NumPy makes it float64) is no ids


def test_language_models_take_sequences_of_no_tokens():
    lm = TransformerLM(7, 4, d_model=8, n_heads=2, n_layers=2, moe=lambda: TopKMoE(8, 16, 4, k=2))
    logits, aux = lm(np.zeros((2, 0), int))
    assert logits.shape == (2, 0, 7) and aux and all(value.item() == 0 for value in aux.values())
    logits, aux = LSTMMoELM(7, 8, moe=lambda: NoisyTopKMoE(8, 16, 4, k=2))(np.zeros((2, 0), int))
    assert logits.shape == (2, 0, 7) and all(value.item() == 0 for value in aux.values())
