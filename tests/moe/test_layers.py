"""MoE layers: float64 gradients of every layer, the bug classes popular tutorials ship
(one test each), and what every layer does with unusual input (lists, integer tokens, one
token, an empty batch) and inside MH-MoE."""

import dataclasses

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import randn
from tinymoe import functional as F
from tinymoe.moe import (
    DeepSeekMoE,
    ExpertChoiceMoE,
    Experts,
    GShardMoE,
    MHMoE,
    MixtureOfLocalExperts,
    NoisyTopKMoE,
    SparseMoE,
    SwitchMoE,
    TopKMoE,
    TopKRouter,
    losses,
    mean_aux_over_layers,
)
from tinymoe.moe import layers as moe_layers

D = 4


def randomize(layer, seed=3, scale=0.7):
    """Random weights everywhere (noisy top-k's zero init would make every gate equal)."""
    rng = np.random.default_rng(seed)
    for p in layer.parameters():
        p.data = np.asarray(scale * rng.standard_normal(p.shape))  # 0-d stays an array
    return layer.astype(np.float64)


# name: (layer, extra call arguments that fix its randomness)
LAYERS = {
    "noisy_topk": (lambda: NoisyTopKMoE(D, 3, 4, k=2), {"noise": np.random.default_rng(1).standard_normal((6, 4))}),
    "gshard": (lambda: GShardMoE(D, 3, 4, capacity_factor=0.75), {"uniform": np.full(6, 0.5)}),
    "switch": (lambda: SwitchMoE(D, 3, 4, capacity_factor=1.0, z_weight=1e-3), {}),
    "topk_mixtral": (lambda: TopKMoE(D, 3, 4, k=2), {}),
    "topk_cosine": (lambda: TopKMoE(D, 3, 4, k=2, router="cosine", activation="gelu"), {}),
    "deepseek_v3": (lambda: DeepSeekMoE(D, 4, 4, k=1, n_shared=1, n_group=2, topk_group=1, segments=2), {}),
    "deepseek_v2": (lambda: DeepSeekMoE(D, 4, 4, k=2, score="softmax", n_group=2, topk_group=1, normalize=False,
                                        bias_update=0, seq_aux_weight=0, aux_weight=0.01, device_aux_weight=0.01), {}),
    "expert_choice": (lambda: ExpertChoiceMoE(D, 3, 4, capacity_factor=1.0), {}),
    "mh_moe": (lambda: MHMoE(D, 2, TopKMoE(2, 3, 4, k=2)), {}),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_gradients_match_finite_differences(name):
    make, kwargs = LAYERS[name]
    layer = randomize(make())
    x = randn(2, 3, D, seed=7)

    def output_and_losses(t):
        y, aux = layer(t, **kwargs)
        return y.sum(axis=-1) + sum(aux.values(), tm.tensor(np.zeros(()))) if aux else y.sum(axis=-1)

    y, aux = layer(x, **kwargs)
    assert y.shape == x.shape and all(v.shape == () for v in aux.values())
    assert tm.gradcheck(output_and_losses, [x], params=dict(layer.named_parameters()))


def test_mixture_of_local_experts_values_and_gradients():
    layer = randomize(MixtureOfLocalExperts(2, 3, 4, loss="competitive"))
    x, target = randn(5, 2, seed=1), randn(5, 3, seed=2, requires_grad=False)
    gates = layer.gates(x).data
    outputs = np.einsum("nd,edo->neo", x.data, layer.weight.data) + layer.bias.data[None]
    np.testing.assert_allclose(layer(x)[0].data, np.einsum("ne,neo->no", gates, outputs))
    params = dict(layer.named_parameters())
    assert tm.gradcheck(lambda t: layer.loss(t, target), [x], params=params)
    layer.loss_kind = "cooperative"
    assert tm.gradcheck(lambda t: layer.loss(t, target), [x], params=params)


# ------------------------------------------------------ bug classes of popular tutorials


def test_dropped_tokens_contribute_exactly_zero():
    layer = SwitchMoE(D, 3, 2, capacity_factor=0.5, aux_weight=0, activation="gelu")  # C = 1 of 4 per expert
    y, _ = layer(randn(4, D, dtype=np.float32))
    dropped = layer.last_routing.dropped[:, 0]
    assert dropped.sum() >= 2
    assert np.all(y.data[dropped] == 0.0)  # exactly zero: the residual outside carries them
    assert np.all(np.abs(y.data[~dropped]).sum(axis=1) > 0)


def test_k1_renormalised_gives_the_router_no_task_gradient_but_switch_does():
    x = randn(8, D, seed=1)
    renormalised = randomize(TopKMoE(D, 3, 4, k=1, normalize=True, aux_weight=0))
    (renormalised(x)[0] ** 2).sum().backward()
    # the weight is v / v = 1 whatever the router says: zero gradient (up to rounding of v / v)
    assert np.abs(renormalised.router.w_gate.grad).max() < 1e-12
    switch = randomize(SwitchMoE(D, 3, 4, capacity_factor=None, aux_weight=0))
    (switch(x)[0] ** 2).sum().backward()
    assert np.abs(switch.router.w_gate.grad).sum() > 1e-3  # weight p_i carries the gradient


def test_the_aux_loss_gradient_reaches_the_router_weights():
    layer = randomize(SwitchMoE(D, 3, 4, capacity_factor=None))
    _, aux = layer(randn(8, D, seed=2))
    aux["balance"].backward()
    assert np.abs(layer.router.w_gate.grad).sum() > 0
    assert all(p.grad is None for p in layer.experts.parameters())  # and only the router


def test_aux_losses_are_averaged_per_layer_not_over_concatenated_tokens():
    # layer A sends everything to expert 0, layer B everything to expert 1 (E = 2, k = 1)
    probs_a = tm.tensor(np.array([[1.0, 0.0]] * 4))
    probs_b = tm.tensor(np.array([[0.0, 1.0]] * 4))
    index_a, index_b = np.zeros((4, 1), int), np.ones((4, 1), int)
    per_layer = mean_aux_over_layers([
        {"balance": losses.load_balancing_loss(probs_a, index_a, 2)},
        {"balance": losses.load_balancing_loss(probs_b, index_b, 2)},
    ])
    assert per_layer["balance"].item() == pytest.approx(2.0)  # both layers collapsed: E each
    pooled = losses.load_balancing_loss(F.concat([probs_a, probs_b]), np.concatenate([index_a, index_b]), 2)
    assert pooled.item() == pytest.approx(1.0)  # pooling hides the collapse: looks balanced


def test_tie_breaking_is_deterministic_in_layers():
    layer = TopKMoE(D, 3, 4, k=2)
    layer.router.w_gate.data[:] = 0  # all experts tie for every token
    x = randn(5, D, dtype=np.float32)
    layer(x)
    np.testing.assert_array_equal(layer.last_routing.expert_index, [[0, 1]] * 5)


# ------------------------------------------------------------------ layer behaviour


def test_deepseek_output_is_routed_plus_shared():
    layer = randomize(DeepSeekMoE(D, 4, 4, k=2, n_shared=2, segments=2))
    assert layer.n_experts == 8 and layer.router.k == 4 and layer.experts.d_hidden == 2  # m = 2
    x = randn(6, D, seed=4)
    y, _ = layer(x)
    r = layer.last_routing
    routed = layer.experts.dense(x, r.expert_index, r.weight)
    np.testing.assert_allclose(y.data, (routed + layer.shared(x)).data, rtol=1e-12)


def test_deepseek_update_bias_after_a_step_rebalances():
    layer = DeepSeekMoE(D, 4, 4, k=1, n_shared=0, bias_update=0.1)
    layer(randn(16, D, dtype=np.float32))
    load = np.bincount(layer.last_routing.expert_index.ravel(), minlength=4)
    layer.update_bias()
    np.testing.assert_allclose(layer.router.bias.data, 0.1 * np.sign(load.mean() - load))
    np.testing.assert_array_equal(layer.state_dict()["router.bias"], layer.router.bias.data)  # saved with the model


def test_deepseek_expert_level_loss_on_sigmoid_scores_cannot_fall_by_shrinking_them():
    # Sigmoid scores do not sum to 1; unnormalised, sum_i f_i P_i would fall by pushing every
    # score towards 0 (a collapse seen in training) rather than by balancing the experts.
    layer = DeepSeekMoE(D, 4, 4, k=1, n_shared=0, score="sigmoid", n_group=2, bias_update=0, seq_aux_weight=0,
                        aux_weight=1.0, device_aux_weight=1.0)
    layer(randn(8, D, dtype=np.float64))
    r = layer.last_routing
    small = dataclasses.replace(r, probs=r.probs * 0.01)
    for name, value in layer.aux_losses(r, randn(8, D)).items():
        np.testing.assert_allclose(layer.aux_losses(small, randn(8, D))[name].data, value.data, rtol=1e-12)


def test_expert_choice_gives_every_expert_its_capacity():
    layer = ExpertChoiceMoE(D, 3, 4, capacity_factor=1.0)
    layer(randn(2, 6, D, dtype=np.float32))
    chosen = ~layer.last_routing.dropped
    np.testing.assert_array_equal(chosen.sum(axis=0), [3, 3, 3, 3])  # ceil(12 * 1.0 / 4)


def test_mh_moe_splits_routes_and_merges():
    inner = TopKMoE(2, 3, 4, k=2)
    layer = randomize(MHMoE(D, 2, inner))
    x = randn(3, D, seed=5)
    y, _ = layer(x)
    sub = layer.head(x).data.reshape(6, 2)  # 3 tokens x 2 heads -> 6 sub-tokens of width 2
    r = inner.last_routing
    assert r.expert_index.shape == (6, 2)
    inner_out = inner.experts.dense(tm.tensor(sub), r.expert_index, r.weight).data.reshape(3, D)
    np.testing.assert_allclose(y.data, layer.merge(tm.tensor(inner_out)).data, rtol=1e-12)


def test_float16_tokens_keep_their_dtype_while_the_router_runs_in_float32():
    layer = TopKMoE(D, 3, 4, k=2)
    layer.experts.astype(np.float16)
    y, aux = layer(tm.tensor(np.ones((3, D), np.float16)))
    assert y.dtype == np.float16 and layer.last_routing.logits.dtype == np.float32
    assert aux["balance"].dtype == np.float32


# ------------------------------------------------- inputs: one rule for every layer (nn.checks.as_input)
# (the bad arguments and inputs of every constructor, one line each: tests/test_bad_input.py)

LAYER_MAKERS = {name: make for name, (make, _) in LAYERS.items()} | {
    "mixture_1991": lambda: MixtureOfLocalExperts(D, D, 3),  # takes (N, d_in) only
}
TOKENS = np.random.default_rng(4).standard_normal((3, D)).astype(np.float32)


def output(layer_output):
    return layer_output[0]  # every MoE layer returns (y, aux)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, bool])
@pytest.mark.parametrize("name", sorted(LAYER_MAKERS))
def test_integer_and_boolean_tokens_are_refused_with_a_hint_to_cast(name, dtype):
    with pytest.raises(TypeError, match=r"x must hold floats \(float16, float32 or float64\), got .*cast it first"):
        LAYER_MAKERS[name]()(tm.tensor(np.ones((3, D), dtype)))


@pytest.mark.parametrize("name", sorted(LAYER_MAKERS))
def test_a_list_or_an_array_is_taken_as_tm_tensor_takes_it(name):
    layer = LAYER_MAKERS[name]().eval()  # eval: no noise or random routing to compare
    expected = output(layer(tm.tensor(TOKENS))).data
    np.testing.assert_array_equal(output(layer(TOKENS.tolist())).data, expected)  # a list becomes float32
    np.testing.assert_array_equal(output(layer(TOKENS)).data, expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_a_single_token_of_shape_d_model_is_a_batch_of_one(name):
    layer = LAYER_MAKERS[name]().eval()
    y = output(layer(tm.tensor(TOKENS[0])))
    assert y.shape == (D,)
    np.testing.assert_allclose(y.data, output(layer(tm.tensor(TOKENS[:1]))).data[0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(0, D), (2, 0, D), (0, 3, D)])
@pytest.mark.parametrize("name", sorted(LAYER_MAKERS))
def test_an_empty_batch_gives_an_empty_output_zero_losses_and_zero_gradients(name, shape):
    if name == "mixture_1991" and len(shape) != 2:
        pytest.skip("the 1991 mixture takes (N, d_in) only")
    layer = LAYER_MAKERS[name]()  # training mode: the random parts draw arrays of 0 rows
    x = tm.tensor(np.zeros(shape, np.float32), requires_grad=True)
    y, aux = layer(x)
    assert y.shape == shape
    assert all(value.item() == 0.0 for value in aux.values()), {k: v.item() for k, v in aux.items()}
    sum(aux.values(), y.sum()).backward()
    np.testing.assert_array_equal(x.grad, np.zeros(shape))
    for name_, p in layer.named_parameters():
        assert p.grad is None or not p.grad.any(), name_  # zeros, never NaN


# every layer class of tinymoe.moe.layers (and two things that are not one), built for
# sub-tokens of width 2 (MHMoE(4, 2, ...)): a class added later must be added here
INNER_LAYERS = {
    "NoisyTopKMoE": lambda: NoisyTopKMoE(2, 3, 4, k=2),
    "GShardMoE": lambda: GShardMoE(2, 3, 4),
    "SwitchMoE": lambda: SwitchMoE(2, 3, 4, z_weight=1e-3),
    "TopKMoE": lambda: TopKMoE(2, 3, 4, k=2, router="cosine"),
    "DeepSeekMoE": lambda: DeepSeekMoE(2, 4, 4, k=2, n_group=2, aux_weight=0.01, device_aux_weight=0.01),
    "ExpertChoiceMoE": lambda: ExpertChoiceMoE(2, 3, 4),
    "MHMoE": lambda: MHMoE(2, 2, TopKMoE(1, 3, 4, k=1)),
    "SparseMoE": lambda: SparseMoE(TopKRouter(2, 4, k=2), Experts(4, 2, 3)),
    # no router to take noise=/uniform=, or not a layer at all: refused at construction
    "MixtureOfLocalExperts": lambda: MixtureOfLocalExperts(2, 2, 3),
    "FeedForward": lambda: tm.nn.FeedForward(2, 3),
    "the class TopKMoE": lambda: TopKMoE,
}
REFUSED_INNER = {"MixtureOfLocalExperts", "FeedForward", "the class TopKMoE"}
LAYER_CLASSES = sorted(c.__name__ for c in vars(moe_layers).values()
                       if isinstance(c, type) and issubclass(c, tm.nn.Module) and c.__module__ == moe_layers.__name__)


@pytest.mark.parametrize("name", sorted(set(LAYER_CLASSES) | set(INNER_LAYERS)))
def test_mh_moe_works_around_every_layer_or_refuses_it_at_construction(name):
    inner = INNER_LAYERS[name]()
    if name in REFUSED_INNER:
        with pytest.raises(TypeError, match=r"MHMoE: inner_moe must be a sparse MoE layer"):
            MHMoE(D, 2, inner)
        return
    layer = MHMoE(D, 2, inner)
    x = randn(2, 3, D, seed=2, dtype=np.float32)
    y, aux = layer(x)
    assert y.shape == x.shape
    sum(aux.values(), y.sum()).backward()
    assert np.isfinite(x.grad).all()
    assert all(np.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@pytest.mark.parametrize("make", [
    lambda: SwitchMoE(D, 3, 4, capacity_factor=1e300),
    lambda: GShardMoE(D, 3, 4, capacity_factor=1e300, second_policy="all"),
    lambda: ExpertChoiceMoE(D, 3, 4, capacity_factor=1e300),
])
def test_a_huge_capacity_factor_means_room_for_every_token(make):
    layer = make()  # 1e300: no overflow, no 1e300-row buffer
    layer(randn(5, D, dtype=np.float32))
    assert layer.last_routing.capacity == 5 and not layer.last_routing.dropped.any()
