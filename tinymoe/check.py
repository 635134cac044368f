"""Checkers for the hand-written MoE exercises (lesson 08, 手撕 MoE).

Each checker calls the learner's function and the library's on the same random inputs,
compares the outputs and then the gradients of every input, and either prints a short
"ok" or raises ``CheckFailed`` saying exactly what differs: which output or gradient,
at which index, the expected and the actual value. The inputs are float64 and seeded, so
a failure is repeatable.

The exercises and their signatures (N tokens, d features, E experts, k choices, f hidden):

- ``router(x, w_gate, k) -> (weight, expert_index)``: softmax(x W_gate), the top k
  (ties to the lowest index), renormalised to sum to 1 (Mixtral). weight (N, k) Tensor.
- ``dispatch(x, expert_index, n_experts) -> xs``: the token rows copied once per choice
  and grouped by expert, ascending; inside an expert, in (token, choice) order.
- ``experts(xs, counts, w1, w2, w3) -> ys``: SwiGLU expert e on its ``counts[e]`` rows:
  (silu(x w1[e]) * (x w3[e])) w2[e].
- ``combine(ys, expert_index, weight, n_experts) -> y``: y_n = sum_j weight[n, j] times the
  row of ys that holds (token n, choice j).
- ``balance_loss(probs, expert_index, n_experts) -> scalar``: E * sum_i f_i P_i (1 when balanced).
"""

from __future__ import annotations

import numpy as np

from tinymoe import functional as F
from tinymoe.moe import losses
from tinymoe.moe.dispatch import make_plan, permute, unpermute
from tinymoe.moe.experts import grouped_matmul
from tinymoe.tensor import Tensor


class CheckFailed(AssertionError):
    """The learner's function differs from the library's; the message says where."""


N, D, E, K, HIDDEN = 12, 6, 4, 2, 5


def _inputs(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    w_gate = rng.standard_normal((D, E))
    index = np.argsort(-(x @ w_gate), axis=-1, kind="stable")[:, :K]
    weight = rng.random((N, K)) + 0.1
    return rng, x, w_gate, index, weight


def _leaf(array) -> Tensor:
    return Tensor(np.array(array, dtype=np.float64), requires_grad=True)


def _first_difference(name: str, got, expected, atol: float = 1e-8, rtol: float = 1e-6) -> str | None:
    got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
    if got.shape != expected.shape:
        return f"{name}: shape {got.shape}, expected {expected.shape}"
    bad = ~np.isclose(got, expected, atol=atol, rtol=rtol)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.argwhere(bad)[0])
    return (f"{name}: {int(bad.sum())} of {bad.size} entries differ; first at index {where}: "
            f"expected {expected[where]:.6g}, got {got[where]:.6g}")


def _compare(exercise: str, learner, reference, named_inputs: dict) -> None:
    """Values of the outputs, then gradients of every input through a random projection."""
    problems = []
    got = _run_and_grad(learner, named_inputs, problems, "your function")
    expected = _run_and_grad(reference, named_inputs, problems, "the library")
    if problems:
        raise CheckFailed(f"{exercise}: " + "; ".join(problems))
    (got_values, got_grads), (expected_values, expected_grads) = got, expected
    if len(got_values) != len(expected_values):
        raise CheckFailed(f"{exercise}: returned {len(got_values)} value(s), expected {len(expected_values)}")
    for i, (g, e) in enumerate(zip(got_values, expected_values, strict=True)):
        message = _first_difference(f"output {i}" if len(got_values) > 1 else "output", g, e)
        if message:
            raise CheckFailed(f"{exercise}: {message}")
    for name, expected_grad in expected_grads.items():
        if expected_grad is None:
            continue
        if got_grads.get(name) is None:
            raise CheckFailed(f"{exercise}: no gradient reached {name!r}: is it used through tinymoe ops?")
        message = _first_difference(f"gradient of {name}", got_grads[name], expected_grad)
        if message:
            raise CheckFailed(f"{exercise}: {message}")
    print(f"ok: {exercise} matches the library (values and gradients)")


def _run_and_grad(fn, named_inputs, problems, who):
    inputs = {k: make() for k, make in named_inputs.items()}
    try:
        out = fn(**inputs)
    except NotImplementedError:  # an exercise not done yet: let the notebook show it as is
        raise
    except Exception as error:  # report the learner's error in one line
        problems.append(f"{who} raised {type(error).__name__}: {error}")
        return None
    outs = out if isinstance(out, tuple) else (out,)
    values = [o.data if isinstance(o, Tensor) else np.asarray(o) for o in outs]
    projection = np.random.default_rng(1)
    loss = None
    for o in outs:
        if isinstance(o, Tensor) and o.requires_grad:
            term = F.sum(o * projection.standard_normal(o.shape))
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    grads = {k: (v.grad if isinstance(v, Tensor) else None) for k, v in inputs.items()}
    return values, grads


# ------------------------------------------------------------------ the references


def reference_router(x, w_gate, k):
    probs = F.softmax(F.matmul(x, w_gate), axis=-1)
    top, index = F.topk(probs, k)
    return top / F.sum(top, axis=-1, keepdims=True), index


def reference_dispatch(x, expert_index, n_experts):
    return permute(x, make_plan(expert_index, n_experts))


def reference_experts(xs, counts, w1, w2, w3):
    offsets = np.concatenate([[0], np.cumsum(counts)])
    return grouped_matmul(F.silu(grouped_matmul(xs, w1, offsets)) * grouped_matmul(xs, w3, offsets), w2, offsets)


def reference_combine(ys, expert_index, weight, n_experts):
    return unpermute(ys, make_plan(expert_index, n_experts), weight)


def reference_balance_loss(probs, expert_index, n_experts):
    return losses.load_balancing_loss(probs, expert_index, n_experts)


# -------------------------------------------------------------------- the checkers


def check_router(router) -> None:
    _, x, w_gate, _, _ = _inputs()
    _compare("router", lambda x, w_gate: router(x, w_gate, K), lambda x, w_gate: reference_router(x, w_gate, K),
             {"x": lambda: _leaf(x), "w_gate": lambda: _leaf(w_gate)})


def check_dispatch(dispatch) -> None:
    _, x, _, index, _ = _inputs()
    _compare("dispatch", lambda x: dispatch(x, index, E), lambda x: reference_dispatch(x, index, E),
             {"x": lambda: _leaf(x)})


def check_experts(experts) -> None:
    rng, _, _, index, _ = _inputs()
    counts = np.bincount(index.ravel(), minlength=E)
    xs = rng.standard_normal((N * K, D))
    w = {name: rng.standard_normal(shape) * 0.5 for name, shape in
         [("w1", (E, D, HIDDEN)), ("w2", (E, HIDDEN, D)), ("w3", (E, D, HIDDEN))]}
    _compare("experts", lambda xs, w1, w2, w3: experts(xs, counts, w1, w2, w3),
             lambda xs, w1, w2, w3: reference_experts(xs, counts, w1, w2, w3),
             {"xs": lambda: _leaf(xs), **{name: (lambda a=a: _leaf(a)) for name, a in w.items()}})


def check_combine(combine) -> None:
    rng, _, _, index, weight = _inputs()
    ys = rng.standard_normal((N * K, D))
    _compare("combine", lambda ys, weight: combine(ys, index, weight, E),
             lambda ys, weight: reference_combine(ys, index, weight, E),
             {"ys": lambda: _leaf(ys), "weight": lambda: _leaf(weight)})


def check_balance_loss(balance_loss) -> None:
    rng, _, _, index, _ = _inputs()
    logits = rng.standard_normal((N, E))
    probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
    _compare("balance_loss", lambda probs: balance_loss(probs, index, E),
             lambda probs: reference_balance_loss(probs, index, E), {"probs": lambda: _leaf(probs)})


CHECKERS = {
    "router": check_router,
    "dispatch": check_dispatch,
    "experts": check_experts,
    "combine": check_combine,
    "balance_loss": check_balance_loss,
}
