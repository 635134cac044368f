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


def adam_by_hand(value, grads, lr, b1, b2, eps, weight_decay, decoupled):
    """One scalar parameter through Adam as torch.optim.Adam/AdamW update it, written out
    step by step: a step without a gradient (None) changes nothing, and t counts only the
    steps that had one."""
    m = v = 0.0
    t = 0
    for g in grads:
        if g is None:
            continue
        t += 1
        if weight_decay and not decoupled:
            g = g + weight_decay * value
        if weight_decay and decoupled:
            value = value - lr * weight_decay * value
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        value = value - lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    return value


@pytest.mark.parametrize("make", [Adam, AdamW], ids=["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_adam_bias_correction_counts_steps_per_parameter(make, weight_decay):
    # p gets a gradient on every other step, q only from the third: each one's first update
    # must be bias-corrected as a first update (t = 1), not as the optimiser's third
    lr, b1, b2, eps = 0.1, 0.9, 0.999, 1e-8
    grads = {"p": [2.0, None, -1.0, None, 0.5], "q": [None, None, 3.0, -2.0, 0.25], "r": [None] * 5}
    params = {name: param(1.5) for name in grads}
    opt = make(list(params.values()), lr=lr, betas=(b1, b2), eps=eps, weight_decay=weight_decay)
    for step in range(5):
        for name, p in params.items():
            p.grad = None if grads[name][step] is None else np.array([grads[name][step]])
        opt.step()
    for name, p in params.items():
        expected = adam_by_hand(1.5, grads[name], lr, b1, b2, eps, weight_decay, decoupled=make is AdamW)
        np.testing.assert_allclose(p.data, [expected], rtol=1e-12, err_msg=name)
    assert params["r"].data[0] == 1.5  # never a gradient: not even weight decay touches it
    assert opt.state_dict()["steps"].tolist() == [3, 3, 0]


def test_adam_first_update_of_a_late_parameter_is_lr_times_sign():
    # the same fact in numbers: on its first update a parameter moves by lr (up to eps),
    # however many steps the optimiser has taken before
    p, q = param(0.0), param(0.0)
    opt = Adam([p, q], lr=0.01)
    for _ in range(3):
        p.grad, q.grad = np.array([1.0]), None
        opt.step()
    p.grad, q.grad = np.array([1.0]), np.array([-4.0])
    opt.step()
    np.testing.assert_allclose(q.data, [0.01], rtol=1e-6)


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


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_grad_norm_reports_a_non_finite_gradient_and_leaves_the_grads_alone(bad):
    # scaling by max_norm / inf would make the finite gradients 0 and the bad one NaN: the
    # caller (the training loop) must see the non-finite norm and stop instead
    params = grads_of([3.0, bad], [12.0])
    total = clip_grad_norm(params, max_norm=1.0)
    assert not math.isfinite(total)
    np.testing.assert_array_equal(params[0].grad, np.array([3.0, bad], np.float32))
    np.testing.assert_array_equal(params[1].grad, [12.0])


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


OPTIMIZERS = [lambda ps: SGD(ps, lr=0.05, momentum=0.9), lambda ps: Adam(ps, lr=0.01), lambda ps: AdamW(ps, lr=0.01)]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS, ids=["sgd-momentum", "adam", "adamw"])
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


def train_sometimes(params, optimizer, grads):
    """Steps where the second parameter has no gradient on every third step."""
    for step, g in enumerate(grads):
        params[0].grad = g[0]
        params[1].grad = None if step % 3 == 0 else g[1]
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS[1:], ids=["adam", "adamw"])
def test_resume_keeps_each_parameters_step_count_bit_for_bit(make_optimizer, tmp_path):
    rng = np.random.default_rng(1)
    grads = [(rng.standard_normal(3).astype(np.float32), rng.standard_normal(2).astype(np.float32)) for _ in range(9)]

    def fresh():
        return [Parameter(np.ones(3, np.float32)), Parameter(np.ones(2, np.float32))]

    params = fresh()
    optimizer = make_optimizer(params)
    train_sometimes(params, optimizer, grads[:4])
    tm.save({"optimizer": optimizer.state_dict(), "p": params[0], "q": params[1]}, tmp_path / "ckpt.npz")
    assert optimizer.state_dict()["steps"].tolist() == [4, 2]  # q had no gradient on steps 0 and 3
    train_sometimes(params, optimizer, grads[4:])

    checkpoint = tm.load(tmp_path / "ckpt.npz")
    resumed = fresh()
    resumed[0].data, resumed[1].data = checkpoint["p"], checkpoint["q"]
    resumed_optimizer = make_optimizer(resumed)
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    train_sometimes(resumed, resumed_optimizer, grads[4:])
    for a, b in zip(params, resumed, strict=True):
        assert a.data.tobytes() == b.data.tobytes()


def test_optimizer_state_for_another_model_is_rejected():
    state = Adam(Linear(3, 2).parameters()).state_dict()
    with pytest.raises(ValueError, match="saved for another model"):
        Adam(Linear(3, 4).parameters()).load_state_dict(state)


def saved_adam_state(**changes):
    state = Adam([param(1.0, 2.0)]).state_dict()
    state.update(changes)
    return state


@pytest.mark.parametrize(
    "changes, name",
    [
        ({"steps": np.array([-1])}, "steps"),  # a negative step count
        ({"steps": np.array([1.0])}, "steps"),  # a float where counts are integers: not cast
        ({"steps": np.array([1, 1])}, "steps"),  # one count per parameter
        ({"lr": np.array(np.nan)}, "lr"),
        ({"lr": np.array("0.1")}, "lr"),  # a string: not parsed
        ({"m.0": np.zeros(2, np.float32)}, "m.0"),  # float32 moments for a float64 parameter: not cast
        ({"v.0": np.zeros(3)}, "v.0"),
        ({"v.0": {"nested": np.zeros(2)}}, "v.0"),  # not an array at all
    ],
    ids=["negative-step", "float-steps", "steps-shape", "nan-lr", "string-lr", "m-dtype", "v-shape", "v-not-array"],
)
def test_a_damaged_optimizer_state_is_refused_naming_the_entry(changes, name):
    optimizer = Adam([param(1.0, 2.0)])
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match=rf"Adam.load_state_dict: {name}\b"):
        optimizer.load_state_dict(saved_adam_state(**changes))
    after = optimizer.state_dict()  # nothing was half-loaded
    assert after["lr"] == before["lr"] and after["steps"].tolist() == before["steps"].tolist()


def test_an_optimizer_state_with_a_missing_key_names_it():
    state = saved_adam_state()
    del state["steps"]
    with pytest.raises(ValueError, match=r"missing keys \['steps'\]"):
        Adam([param(1.0, 2.0)]).load_state_dict(state)


# --------------------------------------------------------------------------- bad input
# Each case asserts the error type and that the message names the argument.

BAD_LR = [0.0, -0.1, np.nan, np.inf, "0.1", True]


@pytest.mark.parametrize("lr", BAD_LR, ids=repr)
@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
def test_lr_must_be_a_finite_number_above_0(optimizer, lr):
    with pytest.raises(ValueError, match=rf"{optimizer.__name__}: lr must be a finite number > 0, got"):
        optimizer([param(1.0)], lr=lr)


@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
def test_empty_parameter_list_is_rejected(optimizer):
    with pytest.raises(ValueError, match="empty parameter list"):
        optimizer([])


@pytest.mark.parametrize(
    "betas, name",
    [((1.0, 0.999), r"betas\[0\]"), ((0.9, 1.0), r"betas\[1\]"), ((-0.1, 0.999), r"betas\[0\]"),
     ((0.9, np.nan), r"betas\[1\]"), ((0.9, "0.999"), r"betas\[1\]"), (0.9, "betas"), ((0.9,), "betas"),
     ((0.9, 0.99, 0.999), "betas")],
    ids=["b1=1", "b2=1", "b1<0", "b2=nan", "b2-string", "not-a-pair", "one", "three"],
)
@pytest.mark.parametrize("optimizer", [Adam, AdamW])
def test_betas_must_be_a_pair_in_0_to_1(optimizer, betas, name):
    with pytest.raises(ValueError, match=rf"{optimizer.__name__}: {name} must be"):
        optimizer([param(1.0)], betas=betas)


@pytest.mark.parametrize("eps", [0.0, -1e-8, np.nan, np.inf], ids=repr)
def test_adam_eps_must_be_a_finite_number_above_0(eps):
    with pytest.raises(ValueError, match=r"Adam: eps must be a finite number > 0"):
        Adam([param(1.0)], eps=eps)


@pytest.mark.parametrize("weight_decay", [-0.1, np.nan, np.inf, None], ids=repr)
@pytest.mark.parametrize("optimizer", [SGD, Adam, AdamW])
def test_weight_decay_must_be_a_finite_number_at_least_0(optimizer, weight_decay):
    with pytest.raises(ValueError, match=rf"{optimizer.__name__}: weight_decay must be a finite number >= 0"):
        optimizer([param(1.0)], weight_decay=weight_decay)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, np.nan, "0.9"], ids=repr)
def test_sgd_momentum_must_lie_in_0_to_1(momentum):
    with pytest.raises(ValueError, match=r"SGD: momentum must be a finite number in \[0, 1\)"):
        SGD([param(1.0)], momentum=momentum)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, np.nan, np.inf, "1", None], ids=repr)
def test_clip_grad_norm_max_norm_must_be_a_finite_number_above_0(max_norm):
    with pytest.raises(ValueError, match=r"clip_grad_norm: max_norm must be a finite number > 0"):
        clip_grad_norm(grads_of([1.0]), max_norm)


GOOD_SCHEDULE = dict(step=3, max_lr=1.0, warmup_steps=2, total_steps=10, min_lr=0.1)


@pytest.mark.parametrize(
    "name, value",
    [("step", -1), ("step", 1.5), ("step", True), ("max_lr", 0.0), ("max_lr", np.nan), ("max_lr", -1.0),
     ("warmup_steps", -1), ("warmup_steps", 2.0), ("total_steps", -5), ("total_steps", None), ("min_lr", -0.1),
     ("min_lr", 2.0), ("min_lr", np.inf)],
    ids=lambda v: repr(v),
)
def test_warmup_cosine_checks_its_arguments(name, value):
    with pytest.raises(ValueError, match=rf"warmup_cosine: {name} must be"):
        warmup_cosine(**{**GOOD_SCHEDULE, name: value})
