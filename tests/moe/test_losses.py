"""The MoE losses (tinymoe.moe.losses), one paper at a time: values checked on cases small
enough to do on paper (expected numbers written out or computed here by an independent
formula, never by the code under test), gradients by hand where the papers give them and
by finite differences everywhere else (float64, routing held fixed)."""

import inspect
import math

import numpy as np
import pytest

import tinymoe as tm
from tests.helpers import randn
from tinymoe import backend
from tinymoe import functional as F
from tinymoe.moe import DeepSeekMoE, NoisyTopKMoE, losses
from tinymoe.moe.routers import SwitchRouter


def t(values, requires_grad=False):
    """A float64 tensor from a (nested) list."""
    return tm.tensor(np.array(values, dtype=np.float64), requires_grad=requires_grad)


def phi(z):
    """The standard normal CDF, from math.erf (independent of the library's erf)."""
    return np.vectorize(lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2))))(z)


def cv2(x):
    """Squared coefficient of variation: population variance / mean^2."""
    x = np.asarray(x, dtype=np.float64)
    return x.var() / x.mean() ** 2


def separated(n, e, seed=0):
    """(n, e) logits whose entries in a row are at least 0.5 apart: no ties anywhere, so
    a finite-difference step never changes which experts are in the top k."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(e) * 0.7 + rng.uniform(-0.1, 0.1, e) for _ in range(n)]
    return np.array(rows)


# ------------------------------------------------------------------ 1991: Jacobs et al.
# Two tokens, two experts, one output dimension:
#   token 0: d = 1, o = (2, 0), p = (1/4, 3/4)
#   token 1: d = 0, o = (1, 3), p = (1/2, 1/2)
TARGET = [[1.0], [0.0]]
OUTPUTS = [[[2.0], [0.0]], [[1.0], [3.0]]]
P = np.array([[0.25, 0.75], [0.5, 0.5]])


def jacobs_inputs():
    """target, expert outputs and gate logits (gates = softmax(logits) = P) as leaves."""
    return t(TARGET), t(OUTPUTS, requires_grad=True), t(np.log(P), requires_grad=True)


def test_cooperative_loss_is_the_squared_error_of_the_mixture():
    # token 0: y_bar = 1/4*2 + 3/4*0 = 1/2, error (1 - 1/2)^2 = 1/4
    # token 1: y_bar = 1/2*1 + 1/2*3 = 2,   error (0 - 2)^2   = 4
    loss = losses.cooperative_loss(t(TARGET), t(OUTPUTS), t(P))
    assert loss.item() == pytest.approx((0.25 + 4) / 2)


def test_competitive_loss_is_minus_log_of_the_gated_gaussian_likelihoods():
    # token 0: ||d - o||^2 = (1, 1):  -log(1/4 e^{-1/2} + 3/4 e^{-1/2}) = 1/2
    # token 1: ||d - o||^2 = (1, 9):  -log(1/2 e^{-1/2} + 1/2 e^{-9/2})
    token1 = -math.log(0.5 * math.exp(-0.5) + 0.5 * math.exp(-4.5))
    loss = losses.competitive_loss(t(TARGET), t(OUTPUTS), t(P))
    assert loss.item() == pytest.approx((0.5 + token1) / 2, rel=1e-12)


def test_competitive_loss_stays_finite_when_every_expert_is_far_off():
    # ||d - o||^2 / 2 = 800 and 1250: exp(-800) underflows to 0 in float64, the loss must not
    loss = losses.competitive_loss(t([[0.0]]), t([[[40.0], [50.0]]]), t([[0.5, 0.5]]))
    assert loss.item() == pytest.approx(800 + math.log(2), rel=1e-12)  # e^{-1250} is negligible


def test_posterior_h_weighs_each_gate_by_its_experts_likelihood():
    # token 0: both experts are off by 1, so h = p; token 1: h ~ (e^{-1/2}, e^{-9/2})
    h = losses.posterior(t(TARGET), t(OUTPUTS), t(P)).numpy()
    e1, e9 = math.exp(-0.5), math.exp(-4.5)
    np.testing.assert_allclose(h, [[0.25, 0.75], [e1 / (e1 + e9), e9 / (e1 + e9)]], rtol=1e-12)


def hand_posterior():
    """h_i = p_i exp(-1/2 ||d - o_i||^2) / sum_j (...), written out with NumPy."""
    sq = ((np.array(TARGET)[:, None, :] - np.array(OUTPUTS)) ** 2).sum(-1)
    w = P * np.exp(-0.5 * sq)
    return w / w.sum(-1, keepdims=True)


def test_competitive_loss_gradient_wrt_gate_logits_is_p_minus_h_over_n():
    target, outputs, logits = jacobs_inputs()
    losses.competitive_loss(target, outputs, F.softmax(logits, axis=-1)).backward()
    np.testing.assert_allclose(logits.grad, (P - hand_posterior()) / 2, atol=1e-12)


def test_competitive_loss_gradient_wrt_expert_outputs_is_minus_h_times_own_error_over_n():
    target, outputs, logits = jacobs_inputs()
    losses.competitive_loss(target, outputs, F.softmax(logits, axis=-1)).backward()
    own_error = np.array(TARGET)[:, None, :] - np.array(OUTPUTS)  # d - o_i
    np.testing.assert_allclose(outputs.grad, -hand_posterior()[..., None] * own_error / 2, atol=1e-12)


def test_cooperative_loss_gradient_wrt_expert_outputs_is_minus_two_p_times_residual_over_n():
    target, outputs, logits = jacobs_inputs()
    losses.cooperative_loss(target, outputs, F.softmax(logits, axis=-1)).backward()
    residual = np.array([[1 - 0.5], [0 - 2.0]])  # d - y_bar, the same for every expert
    np.testing.assert_allclose(outputs.grad, -2 * P[..., None] * residual[:, None, :] / 2, atol=1e-12)


# --------------------------------------------------------------- 2017: Shazeer et al.


def test_cv_squared_is_population_variance_over_mean_squared():
    # [1, 2, 3]: mean 2, population variance 2/3 (not the sample variance 1), so 1/6
    assert losses.cv_squared(t([1.0, 2.0, 3.0])).item() == pytest.approx(1 / 6, rel=1e-9)
    assert losses.cv_squared(t([0.5, 0.5, 0.5])).item() == 0.0


def test_importance_loss_is_cv_squared_of_the_summed_gates():
    gates = [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.5]]
    # importance = (2, 1/2, 1/2): mean 1, variance (1 + 1/4 + 1/4) / 3 = 1/2, so CV^2 = 1/2
    assert losses.importance_loss(t(gates)).item() == pytest.approx(0.5, rel=1e-9)


def test_kth_excluding_takes_the_next_logit_inside_the_top_k_and_the_kth_outside():
    logits = t([[4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 2.0, 3.0]])
    # k=2, row 0: experts 0, 1 are in the top 2 -> 3rd largest (2); experts 2, 3 -> 2nd largest (3)
    #      row 1: experts 1, 3 are in the top 2 -> 3rd largest (2); experts 0, 2 -> 2nd largest (3)
    np.testing.assert_array_equal(losses.kth_excluding(logits, 2).numpy(), [[2, 2, 3, 3], [3, 2, 3, 2]])
    # k=1: the winner is compared with the runner-up, everyone else with the winner
    np.testing.assert_array_equal(losses.kth_excluding(logits, 1).numpy(), [[3, 4, 4, 4], [4, 3, 4, 4]])


def test_load_loss_probability_is_phi_of_clean_minus_threshold_over_std():
    clean = np.array([[1.0, 0.5, -0.5], [0.0, 0.2, 0.1]])
    noisy = np.array([[1.2, 0.3, -1.0], [0.4, -0.1, 0.6]])
    std = np.array([[0.5, 1.0, 2.0], [1.0, 0.5, 0.25]])
    # k=1: the noisy winner (expert 0, then expert 2) is compared with the noisy runner-up
    threshold = np.array([[0.3, 1.2, 1.2], [0.6, 0.6, 0.4]])
    load = phi((clean - threshold) / std).sum(axis=0)
    loss = losses.load_loss(t(clean), t(noisy), t(std), k=1)
    assert loss.item() == pytest.approx(cv2(load), rel=1e-9)


def test_load_loss_compares_clean_logits_and_noisy_thresholds_on_the_same_scale():
    # regression: with no noise (clean = noisy, tiny std) an expert in the top k must get
    # P ~ 1 and every other P ~ 0, so Load = how often each expert is in the top 2
    logits = t([[4.0, 3.0, 2.0, 1.0], [1.0, 4.0, 2.0, 3.0], [3.0, 1.0, 4.0, 2.0]])
    std = t(np.full((3, 4), 1e-6))
    load = [2, 2, 1, 1]  # top 2: {0, 1}, {1, 3}, {0, 2}
    assert losses.load_loss(logits, logits, std, k=2).item() == pytest.approx(cv2(load), rel=1e-9)


def test_load_loss_is_unchanged_when_logits_and_std_are_scaled_and_shifted_together():
    clean, noisy = randn(5, 4, seed=1).numpy(), separated(5, 4)
    std = np.abs(randn(5, 4, seed=2).numpy()) + 0.5
    loss = losses.load_loss(t(clean), t(noisy), t(std), k=2).item()
    moved = losses.load_loss(t(3 * clean - 7), t(3 * noisy - 7), t(3 * std), k=2).item()
    assert moved == pytest.approx(loss, rel=1e-9)
    shifted_clean_only = losses.load_loss(t(clean - 7), t(noisy), t(std), k=2).item()
    assert shifted_clean_only != pytest.approx(loss, rel=1e-3)


# ------------------------------------------------------------- 2020-2022: GShard, Switch


def test_expert_fraction_is_the_share_of_all_n_times_k_choices():
    index = np.array([[0, 1], [0, 2], [0, 1]])  # 6 choices: expert 0 three, 1 two, 2 one, 3 none
    np.testing.assert_allclose(losses.expert_fraction(index, 4), [3 / 6, 2 / 6, 1 / 6, 0])


def test_load_balancing_loss_is_e_times_sum_of_f_times_p_on_a_hand_case():
    probs = [[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]]
    index = np.array([[0], [0], [0], [1]])
    # f = (3/4, 1/4), P = (0.6, 0.4): 2 * (0.45 + 0.1) = 1.1
    assert losses.load_balancing_loss(t(probs), index, 2).item() == pytest.approx(1.1, rel=1e-12)


def test_load_balancing_loss_is_1_at_perfect_balance_and_e_when_one_expert_takes_all():
    n, e = 8, 4
    balanced = losses.load_balancing_loss(t(np.full((n, e), 1 / e)), np.arange(n)[:, None] % e, e)
    collapsed = losses.load_balancing_loss(t(np.eye(e)[np.zeros(n, int)]), np.zeros((n, 1), int), e)
    assert balanced.item() == pytest.approx(1.0, rel=1e-12)
    assert collapsed.item() == pytest.approx(e, rel=1e-12)


def test_load_balancing_loss_counts_assignments_before_capacity_drops():
    # Switch, capacity ceil(0.5 * 4 / 2) = 1: tokens 0-2 choose expert 0, token 3 expert 1;
    # two of expert 0's tokens are dropped, but f still counts them: f = (3/4, 1/4)
    router = SwitchRouter(2, 2, capacity_factor=0.5)
    router.w_gate.data = np.array([[2.0, 0.0], [0.0, 2.0]], np.float32)
    x = tm.tensor(np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32))
    routing = router(x)
    assert routing.dropped.sum() == 2
    a = math.exp(2) / (math.exp(2) + 1)  # softmax([2, 0])[0]
    p_mean = np.array([3 * a + (1 - a), 3 * (1 - a) + a]) / 4
    expected = 2 * (0.75 * p_mean[0] + 0.25 * p_mean[1])  # after dropping, f would be (1/2, 1/2)
    loss = losses.load_balancing_loss(routing.probs, routing.expert_index, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_gradient_wrt_probs_is_e_times_f_over_n():
    probs = t([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]], requires_grad=True)
    losses.load_balancing_loss(probs, np.array([[0], [0], [0], [1]]), 2).backward()
    np.testing.assert_allclose(probs.grad, np.tile([2 * 0.75 / 4, 2 * 0.25 / 4], (4, 1)), rtol=1e-12)


def test_load_balancing_loss_gradient_reaches_the_router_weights():
    # regression: f is a count (no gradient), so the router must be reached through P
    x = randn(6, 3, seed=1, requires_grad=False)
    w = randn(3, 4, seed=2)
    probs = F.softmax(F.matmul(x, w), axis=-1)
    _, index = F.topk(probs, 1)
    losses.load_balancing_loss(probs, index, 4).backward()
    assert w.grad is not None and np.abs(w.grad).max() > 1e-3


def test_balance_loss_scales_of_the_docstring_table_at_perfect_balance():
    n, e, k = 8, 4, 2
    index = np.stack([np.arange(n) % e, (np.arange(n) + 1) % e], axis=1)  # every expert: 2 first + 2 second
    probs = np.full((n, e), 1 / e)
    ours = losses.load_balancing_loss(t(probs), index, e).item()
    m = probs.mean(axis=0)  # mean gate per expert (P_i, m_e)
    c = np.bincount(index[:, 0], minlength=e)  # GShard's c_e: top-1 counts in the group of S = n
    tokens_per_choice = np.eye(e)[index].mean(axis=0)  # Mixtral HF: (k, E), mean of one-hot over tokens
    mixtral_hf = e * (tokens_per_choice * m).sum()  # = E * sum_i (count_i / N) P_i
    gshard_code = e * ((c / n) * m).sum()
    gshard_paper = ((c / n) * m).mean()
    deepseek_expert = (e / (k * n) * np.bincount(index.ravel(), minlength=e) * m).sum()
    assert ours == pytest.approx(1.0)
    assert gshard_code == pytest.approx(1.0)
    assert deepseek_expert == pytest.approx(1.0)
    assert mixtral_hf == pytest.approx(k)
    assert gshard_paper == pytest.approx(1 / e**2)


def test_mixtral_hf_is_k_times_ours_and_deepseek_expert_level_equals_ours_for_any_routing():
    n, e, k = 7, 5, 3
    probs = F.softmax(randn(n, e, requires_grad=False), axis=-1)
    _, index = F.topk(probs, k)
    ours = losses.load_balancing_loss(probs, index, e).item()
    m, counts = probs.numpy().mean(axis=0), np.bincount(index.ravel(), minlength=e)
    assert e * (counts / n * m).sum() == pytest.approx(k * ours)  # Mixtral HF
    assert (e / (k * n) * counts * m).sum() == pytest.approx(ours)  # DeepSeek expert-level


def test_z_loss_squares_logsumexp_not_the_logits():
    logits = [[0.0, 0.0], [1.0, -1.0]]
    lse = np.array([math.log(2), math.log(math.e + 1 / math.e)])
    z = losses.z_loss(t(logits)).item()
    assert z == pytest.approx((lse**2).mean(), rel=1e-12)
    assert z != pytest.approx(np.mean(np.square(logits)), rel=1e-3)  # the other reading: 0.5


# ------------------------------------------------------------------------ DeepSeek


def test_device_balance_loss_is_1_at_perfect_balance():
    n, e = 8, 4
    loss = losses.device_balance_loss(t(np.full((n, e), 1 / e)), np.arange(n)[:, None] % e, e, n_devices=2)
    assert loss.item() == pytest.approx(1.0, rel=1e-12)


def test_device_balance_loss_on_a_hand_case_with_contiguous_device_groups():
    # E = 4 on D = 2 devices: {0, 1} and {2, 3}. Both tokens go to device 0 (k = 1, T = 2).
    probs = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.5, 0.2, 0.2]]
    # f_i = E/(kT) count_i = (2, 2, 0, 0) -> f'_d = (2, 0); P = (0.4, 0.3, 0.15, 0.15) -> P'_d = (0.7, 0.3)
    loss = losses.device_balance_loss(t(probs), np.array([[0], [1]]), 4, n_devices=2)
    assert loss.item() == pytest.approx(2 * 0.7 + 0 * 0.3, rel=1e-12)


def test_device_balance_loss_ignores_imbalance_inside_a_device():
    # experts 1 and 3 are idle, but each device gets half the tokens: device loss 1, expert loss 2
    probs = t([[0.5, 0.0, 0.5, 0.0]] * 4)
    index = np.array([[0], [2], [0], [2]])
    assert losses.device_balance_loss(probs, index, 4, n_devices=2).item() == pytest.approx(1.0)
    assert losses.load_balancing_loss(probs, index, 4).item() == pytest.approx(2.0)


def test_sequence_balance_loss_is_1_at_perfect_balance():
    scores = t(np.full((4, 2), 0.3))  # raw (sigmoid) scores: normalised to 1/2 each
    index = np.array([[0], [1], [1], [0]])  # each sequence of 2 uses each expert once
    assert losses.sequence_balance_loss(scores, index, 2, seq_len=2).item() == pytest.approx(1.0, rel=1e-12)


def test_sequence_balance_loss_averages_the_loss_of_each_sequence():
    # E = 2, k = 1, two sequences of T = 2; raw scores are normalised per token first
    sequence_a = [[0.8, 0.2], [0.6, 0.2]]  # normalised (0.8, 0.2), (0.75, 0.25): P = (0.775, 0.225)
    sequence_b = [[0.5, 0.5], [0.1, 0.3]]  # normalised (0.5, 0.5), (0.25, 0.75): P = (0.375, 0.625)
    scores = sequence_a + sequence_b
    index = np.array([[0], [0], [0], [1]])  # A: f = 2/2 * (2, 0); B: f = 2/2 * (1, 1)
    loss_a, loss_b = 2 * 0.775, 0.375 + 0.625
    loss = losses.sequence_balance_loss(t(scores), index, 2, seq_len=2)
    assert loss.item() == pytest.approx((loss_a + loss_b) / 2, rel=1e-12)
    # one sequence of 4 would mix them: f = (1.5, 0.5), P = (0.575, 0.425) -> 1.075, not 1.275
    whole = losses.sequence_balance_loss(t(scores), index, 2, seq_len=4)
    assert whole.item() == pytest.approx(1.5 * 0.575 + 0.5 * 0.425, rel=1e-12)


# ---------------------------------------- at the edges: no tokens, no noise, a gate of 0, underflow


def test_every_loss_of_no_tokens_is_0_with_zero_gradients():
    e = 4
    logits = tm.tensor(np.zeros((0, e)), requires_grad=True)
    probs, index = F.softmax(logits, axis=-1), np.zeros((0, 2), int)
    target, outputs = tm.tensor(np.zeros((0, 2))), tm.tensor(np.zeros((0, e, 2)))
    values = {
        "cooperative": losses.cooperative_loss(target, outputs, probs),
        "competitive": losses.competitive_loss(target, outputs, probs),
        "importance": losses.importance_loss(probs),
        "load": losses.load_loss(logits, logits, F.softplus(logits), 2),
        "balance": losses.load_balancing_loss(probs, index, e),
        "z": losses.z_loss(logits),
        "device": losses.device_balance_loss(probs, index, e, 2),
        "sequence": losses.sequence_balance_loss(F.sigmoid(logits), index, e, 2),
    }
    assert {name: value.item() for name, value in values.items()} == dict.fromkeys(values, 0.0)
    sum(values.values()).backward()
    assert logits.grad.shape == (0, e)


def test_load_loss_where_there_is_no_noise_is_the_step_limit_with_zero_gradient():
    clean = np.array([[1.0, 0.5, -0.3], [0.2, 0.1, 0.9]])
    noisy = np.array([[1.2, 0.4, -0.1], [0.3, 0.0, 1.0]])
    std = np.array([[0.0, 0.5, 0.2], [1.0, 0.0, 0.3]])  # no noise on two entries (softplus underflowed)
    # k=1: the noisy winner (expert 0, then expert 2) is compared with the noisy runner-up
    threshold = np.array([[0.4, 1.2, 1.2], [1.0, 1.0, 0.3]])
    margin = clean - threshold
    # Phi(margin / std) as std -> 0+: 1 above the threshold, 0 below (margins 0.6 and -0.9 here)
    prob = np.where(std == 0, margin > 0, phi(margin / np.where(std == 0, 1.0, std)))
    leaves = t(clean, True), t(noisy, True), t(std, True)
    loss = losses.load_loss(*leaves, k=1)
    assert loss.item() == pytest.approx(cv2(prob.sum(axis=0)), rel=1e-9)
    loss.backward()
    assert all(np.isfinite(leaf.grad).all() for leaf in leaves)  # it was 0/0 = NaN
    # there, the derivatives of Phi(margin / std) have the limit 0 (phi(margin / std) / std -> 0);
    # (a noisy logit there still sets the threshold of the other experts: its gradient is not 0)
    clean_leaf, _, std_leaf = leaves
    assert not clean_leaf.grad[std == 0].any() and not std_leaf.grad[std == 0].any()
    # and everywhere else, finite differences agree (std held at its values: 0 is its edge)
    assert tm.gradcheck(lambda c, z: losses.load_loss(c, z, t(std), k=1), [t(clean, True), t(noisy, True)])


def test_noisy_top_k_aux_losses_stay_finite_where_the_noise_scale_underflows():
    layer = NoisyTopKMoE(4, 3, 4, k=2)
    layer.router.w_gate.data = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    layer.router.w_noise.data[:] = -100.0  # softplus(-400) is exactly 0 in float32
    x = tm.tensor(np.ones((3, 4), np.float32), requires_grad=True)
    y, aux = layer(x)
    assert (layer.last_routing.extras["noise_std"].data == 0).all() and np.isfinite(aux["load"].item())
    sum(aux.values(), y.sum()).backward()
    assert np.isfinite(x.grad).all() and all(np.isfinite(p.grad).all() for p in layer.parameters())


def test_competitive_loss_with_a_gate_of_exactly_0_has_its_true_finite_gradient():
    gates = [[0.0, 1.0], [0.5, 0.5]]  # token 0 leaves expert 0 out entirely
    leaf = t(gates, True)
    loss = losses.competitive_loss(t(TARGET), t(OUTPUTS), leaf)
    # token 0: -log(1 * e^{-1/2}) = 1/2; token 1 as in the hand case above
    token1 = -math.log(0.5 * math.exp(-0.5) + 0.5 * math.exp(-4.5))
    assert loss.item() == pytest.approx((0.5 + token1) / 2, rel=1e-12)
    loss.backward()
    # dE/dp_i = -exp(-1/2 ||d - o_i||^2) / sum_j p_j exp(-1/2 ||d - o_j||^2), over N = 2 tokens:
    # token 0, expert 0: -e^{-1/2} / e^{-1/2} / 2 = -1/2 (log p made it 0/0 = NaN)
    assert leaf.grad[0, 0] == pytest.approx(-0.5, rel=1e-12)
    # p enters linearly, so the loss is smooth at p = 0: finite differences agree, also for the posterior
    inputs = [t(TARGET, True), t(OUTPUTS, True), t(gates, True)]
    assert tm.gradcheck(losses.competitive_loss, inputs)
    assert tm.gradcheck(lambda d, o, p: losses.posterior(d, o, p) * t([[1.0, 2.0]]), inputs)


def test_competitive_loss_through_a_softmax_that_underflows_to_0():
    logits = t([[-800.0, 0.0], [0.0, 0.0]], True)  # exp(-800) is 0 in float64: p = (0, 1), (1/2, 1/2)
    losses.competitive_loss(t(TARGET), t(OUTPUTS), F.softmax(logits, axis=-1)).backward()
    p = np.array([[0.0, 1.0], [0.5, 0.5]])
    w = p * np.exp(-0.5 * ((np.array(TARGET)[:, None, :] - np.array(OUTPUTS)) ** 2).sum(-1))
    np.testing.assert_allclose(logits.grad, (p - w / w.sum(-1, keepdims=True)) / 2, atol=1e-12)  # (p - h) / N


def test_deepseek_balance_losses_stay_exact_when_sigmoid_scores_underflow():
    # logits near -150: sigmoid is exactly 0 in float32 (below about -88), and s_i / sum_j s_j was 0/0
    layer = DeepSeekMoE(4, 8, 4, k=2, n_group=2, aux_weight=0.1, device_aux_weight=0.1)  # and seq_aux_weight 1e-4
    w = -37.5 + 0.25 * np.random.default_rng(1).standard_normal((4, 4))
    layer.router.w_gate.data = w.astype(np.float32)
    x = np.random.default_rng(2).uniform(0.9, 1.1, (2, 3, 4))
    y, aux = layer(tm.tensor(x.astype(np.float32), requires_grad=True))
    assert not layer.last_routing.probs.data.any()  # every score underflowed
    # float64 reference: the scores do not underflow there (sigmoid(-150) = 7e-66)
    s = 1 / (1 + np.exp(-(x.reshape(6, 4) @ w)))
    normalised, index = s / s.sum(axis=-1, keepdims=True), layer.last_routing.expert_index
    expected = {
        "sequence": 1e-4 * losses.sequence_balance_loss(t(s), index, 4, seq_len=3).item(),
        "balance": 0.1 * losses.load_balancing_loss(t(normalised), index, 4).item(),
        "device": 0.1 * losses.device_balance_loss(t(normalised), index, 4, n_devices=2).item(),
    }
    assert {name: value.item() for name, value in aux.items()} == pytest.approx(expected, rel=1e-5)
    sum(aux.values(), y.sum()).backward()
    assert np.isfinite(layer.router.w_gate.grad).all() and layer.router.w_gate.grad.any()


def test_sequence_balance_loss_counts_a_token_whose_scores_are_all_0_as_s_prime_0():
    scores = t([[0.0, 0.0], [0.6, 0.2]], True)  # token 0's sigmoid scores underflowed: s' is 0/0
    loss = losses.sequence_balance_loss(scores, np.array([[0], [0]]), 2, seq_len=2)
    # f = 2 / (1 * 2) * (2, 0) = (2, 0); P = mean over the 2 tokens of s' = ((0 + 3/4) / 2, (0 + 1/4) / 2)
    assert loss.item() == pytest.approx(2 * 0.375, rel=1e-12)
    loss.backward()
    assert np.isfinite(scores.grad).all()


# ---------------------------------------------------- gradients by finite differences
# (N, E, k); N even for sequence_balance_loss (seq_len = 2), E even for 2 devices.
SHAPES = [(4, 2, 1), (6, 4, 2), (4, 6, 3)]


def gradcheck_case(name, n, e, k, device):
    """(fn, inputs) for one loss. Routing is held fixed: expert_index is a constant array and
    the noisy logits have no ties near the top-k boundary."""
    on = lambda a: backend.to_device(a, device)  # noqa: E731
    logits = tm.tensor(separated(n, e, seed=3), requires_grad=True, device=device)
    index = on(np.argsort(-separated(n, e, seed=4), axis=-1)[:, :k])
    softmax = lambda z: F.softmax(z, axis=-1)  # noqa: E731
    target, outputs = randn(n, 2, device=device, seed=5), randn(n, e, 2, device=device, seed=6)
    cases = {
        "cooperative_loss": (lambda d, o, z: losses.cooperative_loss(d, o, softmax(z)), [target, outputs, logits]),
        "competitive_loss": (lambda d, o, z: losses.competitive_loss(d, o, softmax(z)), [target, outputs, logits]),
        "posterior": (lambda d, o, z: losses.posterior(d, o, softmax(z)), [target, outputs, logits]),
        "cv_squared": (losses.cv_squared, [tm.tensor(np.arange(e) + 1.5, requires_grad=True, device=device)]),
        "importance_loss": (lambda z: losses.importance_loss(softmax(z)), [logits]),
        "kth_excluding": (lambda z: losses.kth_excluding(z, k), [logits]),
        "load_loss": (
            lambda c, z, s: losses.load_loss(c, z, F.softplus(s), k),
            [randn(n, e, device=device, seed=7), logits, randn(n, e, device=device, seed=8)],
        ),
        "load_balancing_loss": (lambda z: losses.load_balancing_loss(softmax(z), index, e), [logits]),
        "z_loss": (losses.z_loss, [logits]),
        "device_balance_loss": (lambda z: losses.device_balance_loss(softmax(z), index, e, 2), [logits]),
        "sequence_balance_loss": (lambda z: losses.sequence_balance_loss(F.sigmoid(z), index, e, 2), [logits]),
    }
    return cases[name]


GRADCHECKED = (
    "cooperative_loss competitive_loss posterior cv_squared importance_loss kth_excluding load_loss "
    "load_balancing_loss z_loss device_balance_loss sequence_balance_loss"
).split()


@pytest.mark.parametrize("name", GRADCHECKED)
@pytest.mark.parametrize("n,e,k", SHAPES)
def test_loss_gradients_match_finite_differences(name, n, e, k, device):
    fn, inputs = gradcheck_case(name, n, e, k, device)
    assert tm.gradcheck(fn, inputs)


def test_every_differentiable_loss_is_gradchecked():
    defined = {name for name, f in vars(losses).items()
               if inspect.isfunction(f) and f.__module__ == losses.__name__ and not name.startswith("_")}
    assert defined - {"expert_fraction"} == set(GRADCHECKED)  # expert_fraction counts: no gradient
