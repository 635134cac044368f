"""Check analytic gradients against central finite differences, in float64.

For a function f of tensors, backprop gives dL/dx for L = sum(f(x) * R), with R a fixed
random array (so every output element is checked, not just their sum). The numerical
estimate perturbs one input element at a time:

    dL/dx_i  ~  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)     (error O(eps^2))

Both must agree to |analytic - numeric| <= atol + rtol |numeric| for every element.
This is the tool the tests use and the one learners use on their own code, so a failure
prints a table of the worst elements: which input, which index, both values, both errors.
"""

from __future__ import annotations

import numpy as np

from tinymoe import backend, validate
from tinymoe.tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """Raised when analytic and numerical gradients disagree (an AssertionError, so pytest
    shows the table)."""


def _named(tensors, prefix: str) -> list[tuple[str, Tensor]]:
    if isinstance(tensors, dict):
        return list(tensors.items())
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    return [(f"{prefix} {i}", t) for i, t in enumerate(tensors)]


def gradcheck(fn, inputs, params=None, eps=1e-6, atol=1e-6, rtol=1e-4, max_rows=10) -> bool:
    """Compare backprop with central differences; return True or raise GradcheckError.

    fn:      called as ``fn(*inputs)``; returns one Tensor of any shape.
    inputs:  a list of tensors (or a dict name -> tensor, for nicer messages); those with
             ``requires_grad=True`` are checked, the others are passed through unchanged.
    params:  tensors that ``fn`` uses without receiving them, e.g.
             ``dict(layer.named_parameters())``; checked too.

    Inputs are copied to fresh float64 leaves; params are converted to float64 in place for
    the check and restored after it (values, dtypes and ``.grad``). ``fn`` must not draw
    random numbers (no dropout; pass router noise explicitly), or its outputs will not be
    comparable between calls.
    """
    eps = validate.real("gradcheck", "eps", eps, 0, None, low_open=True)  # eps = 0 would divide 0 by 0
    atol = validate.real("gradcheck", "atol", atol, 0)
    rtol = validate.real("gradcheck", "rtol", rtol, 0)
    max_rows = validate.integer("gradcheck", "max_rows", max_rows, 1)
    if not callable(fn):
        raise TypeError(f"gradcheck: fn must be callable, got {type(fn).__name__}")
    args, checked = [], []
    for name, t in _named(inputs, "input"):  # inputs become fresh float64 leaves: never mutated
        if isinstance(t, Tensor):
            t = Tensor(_as_float64(t.data), requires_grad=t.requires_grad)
            if t.requires_grad:
                checked.append((name, t))
        args.append(t)
    named_params = [(name, p) for name, p in _named(params or [], "param") if isinstance(p, Tensor)]
    checked += [(name, p) for name, p in named_params if p.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input or param has requires_grad=True, so there is nothing to check")
    saved = [(p, p.data, p.grad) for _, p in named_params]
    try:  # params are used by fn through a closure, so they are converted in place...
        for p, data, _ in saved:
            p.data, p.grad = _as_float64(data), None
        rows = _compare(fn, args, checked, eps, atol, rtol)
    finally:  # ...and restored afterwards: values, dtype and grad
        for p, data, grad in saved:
            p.data, p.grad = data, grad
    if rows:
        raise GradcheckError(_report(rows, sum(t.size for _, t in checked), atol, rtol, max_rows))
    return True


def _as_float64(data):
    """A float64 array copy of float data (perturbing it never touches the original)."""
    return backend.array_module(data).array(data, dtype=np.float64) if data.dtype.kind == "f" else data


def _call(fn, args) -> Tensor:
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"gradcheck: fn must return one Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise TypeError(
            f"gradcheck: fn returned {out.dtype}, not float64; finite differences need float64 "
            "all the way through (does fn cast with astype or build float32 constants?)"
        )
    return out


def _compare(fn, args, checked, eps, atol, rtol):
    out = _call(fn, args)
    xp = backend.array_module(out.data)
    weights = xp.asarray(np.random.default_rng(0).standard_normal(out.shape))
    if out.requires_grad:
        (out * weights).sum().backward()

    def loss() -> float:
        with no_grad():
            return float((_call(fn, args).data * weights).sum())

    rows = []
    for name, t in checked:
        analytic = backend.to_numpy(t.grad if t.grad is not None else xp.zeros(t.shape)).reshape(-1)
        for i in range(t.size):
            index = tuple(int(j) for j in np.unravel_index(i, t.shape))  # () for a 0-d tensor
            original = t.data[index].item()
            t.data[index] = original + eps
            up = loss()
            t.data[index] = original - eps
            down = loss()
            t.data[index] = original
            numeric = (up - down) / (2 * eps)
            error = abs(analytic[i] - numeric)
            if not error <= atol + rtol * abs(numeric):  # `not <=` also catches NaN
                rows.append((name, index, float(analytic[i]), numeric, error))
    return rows


def _report(rows, total, atol, rtol, max_rows) -> str:
    rows = sorted(rows, key=lambda r: -r[4] if r[4] == r[4] else -np.inf)
    lines = [
        f"gradcheck failed: {len(rows)} of {total} gradient entries disagree "
        f"(allowed: |analytic - numeric| <= {atol:g} + {rtol:g} * |numeric|)",
        f"{'input':<14} {'index':<14} {'analytic':>13} {'numeric':>13} {'abs err':>10} {'rel err':>10}",
    ]
    for name, index, analytic, numeric, error in rows[:max_rows]:
        rel = error / abs(numeric) if numeric else float("inf")
        index = str(index).replace(" ", "")
        lines.append(f"{name:<14} {index:<14} {analytic:>13.6g} {numeric:>13.6g} {error:>10.2e} {rel:>10.2e}")
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more (worst first)")
    lines.append(
        "Hint: a wrong backward formula gives large errors everywhere; a few bad entries often "
        "mean a kink (relu at 0, max/top-k ties) or randomness inside fn."
    )
    return "\n".join(lines)
