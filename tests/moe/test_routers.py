"""Routers, each pinned to its paper on small cases worked out by hand."""

import math

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.moe import (
    CosineRouter,
    DeepSeekRouter,
    ExpertChoiceRouter,
    GShardRouter,
    NoisyTopKRouter,
    SoftmaxGate,
    SwitchRouter,
    TopKRouter,
)


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def identity_router(router, d=None):
    """Make logits = x by giving the router an identity gate (d_model == n_experts)."""
    router.w_gate.data = np.eye(d or router.n_experts, dtype=np.float64)
    return router


def tokens(rows):
    return tm.tensor(np.array(rows, dtype=np.float64))


def test_softmax_gate_is_dense():
    gate = identity_router(SoftmaxGate(3, 3))
    gate.b_gate.data = np.array([0.0, 1.0, 0.0])
    r = gate(tokens([[1.0, 0.0, 0.0]]))
    np.testing.assert_allclose(r.probs.data, np_softmax(np.array([[1.0, 1.0, 0.0]])))
    np.testing.assert_array_equal(r.expert_index, [[0, 1, 2]])
    assert not r.dropped.any()


def test_noisy_top_k_starts_at_zero_and_follows_eqs_3_to_5():
    router = NoisyTopKRouter(2, 3, k=2)
    assert not router.w_gate.data.any() and not router.w_noise.data.any()  # the paper's init
    router.w_gate.data = np.array([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    router.w_noise.data = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    x = tokens([[1.0, 0.5]])
    eps = np.array([[0.3, -0.2, 1.0]])
    r = router(x, noise=eps)
    clean = np.array([1.0, 0.5, -1.0])
    std = np.log1p(np.exp(np.array([0.0, 0.0, 1.0])))  # softplus(x W_noise)
    noisy = clean + eps[0] * std
    np.testing.assert_allclose(r.extras["noisy_logits"].data[0], noisy)
    top = np.argsort(-noisy)[:2]
    np.testing.assert_array_equal(r.expert_index[0], top)
    np.testing.assert_allclose(r.weight.data[0], np_softmax(noisy[top]))  # softmax over the kept logits
    gates = np.zeros(3)
    gates[top] = np_softmax(noisy[top])
    np.testing.assert_allclose(r.probs.data[0], gates)  # G(x): zero outside the top k


def test_noisy_top_k_has_no_noise_in_eval():
    router = NoisyTopKRouter(2, 3, k=1)
    router.w_gate.data = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    router.w_noise.data = np.ones((2, 3))
    router.eval()
    r = router(tokens([[0.2, 0.1]]), noise=np.array([[-5.0, 5.0, 5.0]]))
    np.testing.assert_array_equal(r.expert_index, [[0]])  # the clean winner, noise ignored
    assert "noisy_logits" not in r.extras


def test_top_k_renormalises_only_when_asked():
    x = tokens([[2.0, 1.0, 0.0, -1.0]])
    p = np_softmax(x.data)[0]
    mixtral = identity_router(TopKRouter(4, 4, k=2, normalize=True))(x)
    np.testing.assert_allclose(mixtral.weight.data[0], p[:2] / p[:2].sum())
    plain = identity_router(TopKRouter(4, 4, k=2, normalize=False))(x)
    np.testing.assert_allclose(plain.weight.data[0], p[:2])
    one = identity_router(TopKRouter(4, 4, k=1, normalize=True))(x)
    np.testing.assert_array_equal(one.weight.data, [[1.0]])  # k=1 renormalised: always exactly 1


def test_ties_go_to_the_lowest_index_every_time():
    router = TopKRouter(3, 5, k=2)
    router.w_gate.data[:] = 0  # every expert scores the same
    for _ in range(2):
        np.testing.assert_array_equal(router(tokens([[1.0, 2.0, 3.0]] * 3)).expert_index, [[0, 1]] * 3)


def test_switch_weight_is_p_and_overflow_is_dropped():
    router = identity_router(SwitchRouter(2, 2, capacity_factor=1.0))
    x = tokens([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # three tokens want expert 0
    r = router(x)
    assert r.capacity == 2  # ceil(1.0 * 4 / 2)
    np.testing.assert_array_equal(r.expert_index[:, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(r.dropped[:, 0], [False, False, True, False])  # token order
    p = np_softmax(x.data)
    expected = [p[0, 0], p[1, 0], 0.0, p[3, 1]]  # p_i itself, not renormalised; 0 when dropped
    np.testing.assert_allclose(r.weight.data[:, 0], expected)


def test_switch_router_init_is_small():
    router = SwitchRouter(400, 8)
    assert abs(router.w_gate.data.std() - math.sqrt(0.1 / 400)) < 0.002


def test_switch_jitter_scales_the_input_in_training_only():
    router = identity_router(SwitchRouter(2, 2, capacity_factor=None, jitter=0.5))
    x = tokens([[1.0, 1.2]])
    jittered = router(x, uniform=np.array([[0.75, 0.0]]))  # factors 1.25 and 0.5
    np.testing.assert_allclose(jittered.logits.data, [[1.25, 0.6]])
    assert jittered.expert_index[0, 0] == 0
    router.eval()
    np.testing.assert_allclose(router(x, uniform=np.array([[0.75, 0.0]])).logits.data, [[1.0, 1.2]])


def test_gshard_normalises_then_drops_the_second_expert_at_random():
    router = identity_router(GShardRouter(3, 3, capacity_factor=None))
    x = tokens([[2.0, 1.0, 0.0], [0.0, 1.0, 0.9]])
    p = np_softmax(x.data)
    g1, g2 = np.sort(p, axis=1)[:, ::-1][:, 0], np.sort(p, axis=1)[:, ::-1][:, 1]
    g2_normalised = g2 / (g1 + g2)
    u = np.array([2 * g2_normalised[0] + 0.01, 2 * g2_normalised[1] - 0.01])  # drop the first token's second
    r = router(x, uniform=u)
    np.testing.assert_array_equal(r.dropped, [[False, True], [False, False]])
    first = g1 / (g1 + g2)
    np.testing.assert_allclose(r.weight.data, [[first[0], 0.0], [first[1], g2_normalised[1]]])
    router.eval()  # no random routing at evaluation
    assert not router(x, uniform=u).dropped.any()


def test_gshard_capacity_fills_first_choices_before_second_choices():
    # E=2, N=2, capacity_factor=0.5: C = ceil(0.5 * 2 * 2 / 2) = 1 row per expert
    router = identity_router(GShardRouter(2, 2, capacity_factor=0.5, second_policy="all"))
    r = router(tokens([[0.0, 1.0], [1.0, 0.0]]))  # token 0 -> (1, 0), token 1 -> (0, 1)
    assert r.capacity == 1
    np.testing.assert_array_equal(r.expert_index, [[1, 0], [0, 1]])
    # both first choices fit; both second choices find their expert full
    np.testing.assert_array_equal(r.dropped, [[False, True], [False, True]])


def test_deepseek_v3_bias_changes_the_choice_but_not_the_weights():
    router = identity_router(DeepSeekRouter(3, 3, k=1, score="sigmoid", normalize=False, routed_scale=2.5))
    x = tokens([[1.0, 0.5, 0.0]])
    assert router(x).expert_index[0, 0] == 0
    router.bias.data = np.array([0.0, 0.3, 0.0], np.float32)  # sigmoid(0.5) + 0.3 > sigmoid(1)
    r = router(x)
    assert r.expert_index[0, 0] == 1
    sig = 1 / (1 + np.exp(-x.data[0]))
    np.testing.assert_allclose(r.weight.data, [[2.5 * sig[1]]])  # unbiased score, times the scale
    np.testing.assert_allclose(r.probs.data[0], sig)


def test_deepseek_v3_renormalises_the_chosen_scores():
    router = identity_router(DeepSeekRouter(3, 3, k=2, score="sigmoid", normalize=True))
    r = router(tokens([[1.0, 0.5, 0.0]]))
    sig = 1 / (1 + np.exp(-np.array([1.0, 0.5])))
    np.testing.assert_allclose(r.weight.data[0], sig / sig.sum())


def test_group_limited_selection_v2_max_and_v3_top_two_sum():
    # 4 experts in 2 groups {0,1} {2,3}; keep 1 group, choose 1 expert
    x = tokens([[0.9, -3.0, 0.5, 0.45]])
    v2 = identity_router(DeepSeekRouter(4, 4, k=1, score="softmax", n_group=2, topk_group=1, normalize=False))
    assert v2.forward(x).expert_index[0, 0] == 0  # group {0,1} holds the best single expert
    v3 = identity_router(DeepSeekRouter(4, 4, k=1, score="sigmoid", n_group=2, topk_group=1))
    # sums of the two best sigmoids: {0,1}: s(.9)+s(-3) = 0.76; {2,3}: s(.5)+s(.45) = 1.23
    assert v3.forward(x).expert_index[0, 0] == 2


def test_deepseek_bias_update_rule():
    router = DeepSeekRouter(2, 4, k=1, bias_update=0.01)
    router.update_bias(np.array([[0], [0], [0], [1]]))  # loads 3, 1, 0, 0; mean 1
    np.testing.assert_allclose(router.bias.data, [-0.01, 0.0, 0.01, 0.01])


def test_expert_choice_fills_every_expert_exactly():
    router = identity_router(ExpertChoiceRouter(2, 2, capacity_factor=1.0))
    x = tokens([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    r = router(x)
    assert r.capacity == 2  # each expert takes ceil(4 * 1.0 / 2) tokens
    chosen = ~r.dropped
    np.testing.assert_array_equal(chosen.sum(axis=0), [2, 2])
    p = np_softmax(x.data)
    # expert 0 takes tokens 0, 1 (highest p_0); expert 1 takes tokens 3, 2 (highest p_1)
    np.testing.assert_array_equal(chosen, [[True, False], [True, False], [False, True], [False, True]])
    np.testing.assert_allclose(r.weight.data, p * chosen)


def test_cosine_router_divides_cosine_similarity_by_the_temperature():
    router = CosineRouter(2, 2, k=1, d_route=2, temperature=0.5)
    router.w_proj.data = np.eye(2)
    router.expert_embed.data = np.array([[2.0, 0.0], [1.0, 1.0]])
    r = router(tokens([[3.0, 4.0]]))
    cos = np.array([3 / 5, (3 + 4) / (5 * math.sqrt(2))])
    np.testing.assert_allclose(r.logits.data[0], cos / 0.5)
    r.weight.sum().backward()
    assert router.temperature.grad is not None  # the temperature is learned


def test_router_math_runs_in_float32_for_float16_tokens():
    router = TopKRouter(4, 3, k=2)
    r = router(tm.tensor(np.ones((2, 4), np.float16)))
    assert r.logits.dtype == np.float32 and r.weight.dtype == np.float32


def test_drawn_noise_keeps_float32_routers_in_float32():
    router = NoisyTopKRouter(3, 4, k=2)
    r = router(tm.tensor(np.ones((2, 3), np.float32)))  # noise drawn by the library (float64)
    assert r.extras["noisy_logits"].dtype == np.float32 and r.weight.dtype == np.float32


def test_numpy_integer_k_is_accepted():
    router = TopKRouter(3, 4, k=np.int64(2))
    assert router(tokens([[1.0, 2.0, 3.0]])).expert_index.shape == (1, 2)


@pytest.mark.parametrize("make, name, values", [
    (lambda: GShardRouter(3, 3, capacity_factor=None), "uniform", [0.5, 0.9]),
    (lambda: NoisyTopKRouter(3, 3, k=1), "noise", [[0.5, -1.0, 0.0], [2.0, 0.1, -0.3]]),
])  # fmt: skip
def test_given_randomness_may_be_a_list_as_well_as_an_array(make, name, values):
    router, x = make(), tokens([[2.0, 1.0, 0.0], [0.0, 1.0, 0.9]])
    from_list, from_array = router(x, **{name: values}), router(x, **{name: np.array(values)})
    np.testing.assert_array_equal(from_list.dropped, from_array.dropped)
    np.testing.assert_array_equal(from_list.weight.data, from_array.weight.data)
