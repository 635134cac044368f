"""Optimisers, gradient clipping and the learning-rate schedule, against the formulas
worked out by hand."""

import math

import numpy as np
import pytest

import tinymoe as tm
from tinymoe.nn import Linear, Parameter
from tinymoe.optim import SGD, Adam, AdamW, clip_grad_norm, warmup_cosine


def param(*values):
    return Parameter(np.array(values, np.float64))


def step_with(optimizer, p, grad):
    p.grad = np.array(grad, np.float64)
    optimizer.step()


# --------------------------------------------------------------------------- SGD


def test_sgd_steps_against_the_gradient():
    p = param(1.0, -2.0)
    opt = SGD([p], lr=0.1)
    step_with(opt, p, [0.5, -1.0])
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 + 0.1], rtol=1e-12)
    step_with(opt, p, [2.0, 0.0])
    np.testing.assert_allclose(p.data, [0.95 - 0.2, -1.9], rtol=1e-12)


def test_sgd_momentum_accumulates_velocity():
    p = param(1.0)
    opt = SGD([p], lr=0.1, momentum=0.9)
    step_with(opt, p, [1.0])  # v = 1
    np.testing.assert_allclose(p.data, [0.9], rtol=1e-12)
    step_with(opt, p, [1.0])  # v = 0.9 * 1 + 1 = 1.9
    np.testing.assert_allclose(p.data, [0.9 - 0.19], rtol=1e-12)


def test_parameters_without_a_gradient_are_left_alone():
    p, q = param(1.0), param(2.0)
    opt = SGD([p, q], lr=0.1)
    step_with(opt, p, [1.0])
    assert q.data[0] == 2.0


# --------------------------------------------------------------------------- Adam


def test_adam_first_step_moves_each_parameter_by_lr_times_sign_of_grad():
    # bias correction makes m_hat = g and v_hat = g^2 on step 1, so the step is lr g / |g|
    p = param(1.0, 1.0, 1.0)
    opt = Adam([p], lr=0.01)
    step_with(opt, p, [3.0, -0.002, 50.0])
    np.testing.assert_allclose(p.data, [0.99, 1.01, 0.99], atol=1e-7)


def test_adam_second_step_follows_the_moment_formulas():
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    g1, g2 = 2.0, -1.0
    p = param(0.5)
    opt = Adam([p], lr=lr, betas=(b1, b2), eps=eps)
    step_with(opt, p, [g1])
    step_with(opt, p, [g2])

    after_first = 0.5 - lr * g1 / (abs(g1) + eps)
    m = b1 * (1 - b1) * g1 + (1 - b1) * g2
    v = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    m_hat, v_hat = m / (1 - b1**2), v / (1 - b2**2)
    expected = after_first - lr * m_hat / (math.sqrt(v_hat) + eps)
    np.testing.assert_allclose(p.data, [expected], rtol=1e-10)


def test_adamw_decays_the_weight_apart_from_the_adaptive_step():
    # With a zero gradient the only force is weight decay, and the two kinds part ways:
    #   AdamW: p <- p - lr wd p               (a small, proportional shrink)
    #   Adam:  g = wd p is normalised by sqrt(v), so p moves a full lr towards 0
    lr, wd = 0.1, 0.5
    p_adamw, p_adam = param(2.0, -4.0), param(2.0, -4.0)
    step_with(AdamW([p_adamw], lr=lr, weight_decay=wd), p_adamw, [0.0, 0.0])
    step_with(Adam([p_adam], lr=lr, weight_decay=wd), p_adam, [0.0, 0.0])
    np.testing.assert_allclose(p_adamw.data, [2.0 * (1 - lr * wd), -4.0 * (1 - lr * wd)], rtol=1e-12)
    np.testing.assert_allclose(p_adam.data, [2.0 - lr, -4.0 + lr], rtol=1e-7)


def test_adamw_with_a_gradient_adds_decay_and_adam_step():
    lr, wd = 0.1, 0.5
    p = param(4.0)
    step_with(AdamW([p], lr=lr, weight_decay=wd), p, [-3.0])
    np.testing.assert_allclose(p.data, [4.0 - lr * wd * 4.0 + lr], rtol=1e-7)  # decay 0.2, step +0.1


# --------------------------------------------------------------------------- clipping


def grads_of(*arrays):
    params = [Parameter(np.zeros(len(a), np.float32)) for a in arrays]
    for p, a in zip(params, arrays, strict=True):
        p.grad = np.array(a, np.float32)
    return params


def global_norm(params):
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in params))


def test_clip_grad_norm_scales_all_grads_down_to_max_norm():
    params = grads_of([3.0, 4.0], [12.0])  # global norm sqrt(9 + 16 + 144) = 13
    total = clip_grad_norm(params, max_norm=1.0)
    assert total == pytest.approx(13.0)
    assert global_norm(params) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(params[0].grad, [3 / 13, 4 / 13], rtol=1e-5)  # direction kept


def test_clip_grad_norm_leaves_small_grads_unchanged():
    params = grads_of([3.0, 4.0], [12.0])
    assert clip_grad_norm(params, max_norm=20.0) == pytest.approx(13.0)
    np.testing.assert_array_equal(params[0].grad, [3.0, 4.0])
    np.testing.assert_array_equal(params[1].grad, [12.0])


def test_clip_grad_norm_accepts_a_generator_of_params():
    params = grads_of([3.0, 4.0], [12.0])
    clip_grad_norm((p for p in params), max_norm=1.0)  # iterated twice inside: norm, then scale
    assert global_norm(params) == pytest.approx(1.0, abs=1e-5)


def test_clip_grad_norm_skips_params_without_grad():
    params = grads_of([3.0, 4.0])
    params.append(Parameter(np.zeros(2, np.float32)))
    assert clip_grad_norm(params, max_norm=1.0) == pytest.approx(5.0)
    assert params[1].grad is None


# --------------------------------------------------------------------------- schedule


def test_warmup_cosine_schedule_landmarks():
    def lr(step):
        return warmup_cosine(step, max_lr=1.0, warmup_steps=10, total_steps=110, min_lr=0.1)

    assert lr(0) == pytest.approx(1.0 / 10)  # first step: max_lr / warmup
    assert lr(4) == pytest.approx(0.5)  # linear in between
    assert lr(9) == pytest.approx(1.0)  # end of warm-up: the peak
    assert lr(10) == pytest.approx(1.0)  # decay starts from the peak
    assert lr(60) == pytest.approx((1.0 + 0.1) / 2)  # halfway through the decay
    assert lr(110) == pytest.approx(0.1)  # the end: min_lr
    assert lr(500) == pytest.approx(0.1)  # and it stays there
    decay = [lr(s) for s in range(10, 111)]
    assert decay == sorted(decay, reverse=True)  # it never goes back up


# --------------------------------------------------------------------------- resume


def train(model, optimizer, batches):
    for x, y in batches:
        optimizer.zero_grad()
        tm.F.mse_loss(model(tm.tensor(x)), tm.tensor(y)).backward()
        optimizer.step()


@pytest.mark.parametrize(
    "make_optimizer",
    [lambda ps: SGD(ps, lr=0.05, momentum=0.9), lambda ps: Adam(ps, lr=0.01), lambda ps: AdamW(ps, lr=0.01)],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_saved_optimizer_state_resumes_training_bit_for_bit(make_optimizer, tmp_path):
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((4, 3), np.float32), rng.standard_normal((4, 2), np.float32)) for _ in range(8)]

    model = Linear(3, 2)
    optimizer = make_optimizer(model.parameters())
    train(model, optimizer, batches[:5])
    tm.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "ckpt.npz")
    train(model, optimizer, batches[5:])  # the uninterrupted run

    tm.manual_seed(123)  # different initial weights: everything must come from the file
    resumed = Linear(3, 2)
    resumed_optimizer = make_optimizer(resumed.parameters())
    checkpoint = tm.load(tmp_path / "ckpt.npz")
    resumed.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train(resumed, resumed_optimizer, batches[5:])

    for name, expected in model.state_dict().items():
        actual = resumed.state_dict()[name]
        assert np.array_equal(actual.view(np.uint32), expected.view(np.uint32)), name


def test_optimizer_state_for_another_model_is_rejected():
    state = Adam(Linear(3, 2).parameters()).state_dict()
    with pytest.raises(ValueError, match="saved for another model"):
        Adam(Linear(3, 4).parameters()).load_state_dict(state)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("lr", [0.0, -0.1])
@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
def test_lr_must_be_positive(optimizer, lr):
    with pytest.raises(ValueError, match="lr must be > 0"):
        optimizer([param(1.0)], lr=lr)


@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
def test_empty_parameter_list_is_rejected(optimizer):
    with pytest.raises(ValueError, match="empty parameter list"):
        optimizer([])


@pytest.mark.parametrize("betas", [(1.0, 0.999), (0.9, 1.0), (-0.1, 0.999)])
def test_betas_must_lie_in_0_to_1(betas):
    with pytest.raises(ValueError, match="betas must lie in"):
        Adam([param(1.0)], betas=betas)
