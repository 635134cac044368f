"""The lesson-08 checkers: the library's own functions pass, and typical mistakes are
caught with a message that says where."""

import numpy as np
import pytest

from tinymoe import check
from tinymoe import functional as F
from tinymoe.check import CheckFailed


@pytest.mark.parametrize("name, reference", [
    ("router", check.reference_router), ("dispatch", check.reference_dispatch),
    ("experts", check.reference_experts), ("combine", check.reference_combine),
    ("balance_loss", check.reference_balance_loss),
])
def test_the_references_pass(name, reference, capsys):
    check.CHECKERS[name](reference)
    assert f"ok: {name}" in capsys.readouterr().out


def test_a_router_that_forgets_to_renormalise_is_caught():
    def router(x, w_gate, k):
        return F.topk(F.softmax(x @ w_gate), k)

    with pytest.raises(CheckFailed, match=r"router: output 0: \d+ of 24 entries differ; first at index \(0, 0\)"):
        check.check_router(router)


def test_a_dispatch_in_token_order_instead_of_expert_order_is_caught():
    def dispatch(x, expert_index, n_experts):
        return x[np.repeat(np.arange(x.shape[0]), expert_index.shape[1])]

    with pytest.raises(CheckFailed, match="dispatch: output: .* expected .* got"):
        check.check_dispatch(dispatch)


def test_relu_experts_are_caught():
    def experts(xs, counts, w1, w2, w3):
        offsets = np.concatenate([[0], np.cumsum(counts)])
        rows = [F.matmul(F.relu(F.matmul(xs[a:b], w1[e])) * F.matmul(xs[a:b], w3[e]), w2[e])
                for e, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))]
        return F.concat(rows, axis=0)

    with pytest.raises(CheckFailed, match="experts: output"):
        check.check_experts(experts)


def test_cutting_the_graph_is_reported_as_a_missing_gradient():
    def combine(ys, expert_index, weight, n_experts):
        return check.reference_combine(ys, expert_index, weight.detach(), n_experts)

    with pytest.raises(CheckFailed, match="no gradient reached 'weight'"):
        check.check_combine(combine)


def test_a_balance_loss_on_the_wrong_scale_is_caught():
    def balance_loss(probs, expert_index, n_experts):
        return check.reference_balance_loss(probs, expert_index, n_experts) / n_experts

    with pytest.raises(CheckFailed, match="balance_loss: output: 1 of 1 entries differ"):
        check.check_balance_loss(balance_loss)


def test_an_error_in_the_learners_code_is_reported_in_one_line():
    def router(x, w_gate, k):
        return x @ w_gate.T  # wrong shapes

    with pytest.raises(CheckFailed, match="router: your function raised ValueError: matmul: shapes"):
        check.check_router(router)


def test_an_unfinished_exercise_just_raises_not_implemented():
    def router(x, w_gate, k):
        raise NotImplementedError("your turn: router")

    with pytest.raises(NotImplementedError):
        check.check_router(router)
