# %% [markdown]
# # 00 · 自动微分 (autograd) 从零开始 · Autograd from scratch
#
# Every model in this course, from the 1991 mixture of local experts to DeepSeek-V3, is
# trained by gradient descent, and every gradient comes from the small engine in
# `tinymoe/tensor.py` (about 400 lines) and the ops in `tinymoe/ops/`. This lesson opens
# that engine. By the end you will have:
#
# 1. seen what a `Tensor` records and what a `Function` is (a forward and its backward, side by side);
# 2. written `backward()` yourself: a topological sort and one loop;
# 3. seen why gradients **accumulate**, how **broadcasting** is undone, and why a tensor used twice (a "diamond") is no problem;
# 4. switched the graph off with `no_grad` and `detach`;
# 5. checked gradients with `tm.gradcheck`, caught a wrong backward, and built a new op of your own;
# 6. trained a small MLP on two moons with `tm.optim`.
#
# **Reference.** Reverse-mode differentiation is the back-propagation of D. E. Rumelhart,
# G. E. Hinton and R. J. Williams (1986), *Learning representations by back-propagating
# errors*, Nature 323. The one equation this lesson implements is the chain rule in its
# reverse ("vector-Jacobian product") form, below.

# %%
import inspect
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import functional as F
from tinymoe.backend import array_module
from tinymoe.tensor import Function

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: a shorter training run
tm.manual_seed(0)
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. A `Tensor` remembers where it came from
#
# A `Tensor` is an array (`.data`, NumPy here, CuPy on a GPU) plus three things autograd
# needs: `.requires_grad` (do we want gradients for it?), `.grad` (where they land) and
# `.creator` (the `Function` that produced it; `None` for a **leaf** that you made
# yourself). Every op on tensors that require gradients records its creator, so a
# computation leaves a graph behind it.

# %%
x = tm.tensor([1.0, 2.0, 3.0], requires_grad=True)
y = x * x + 3 * x  # three ops: mul (x * x), mul (3 * x), add
loss = y.sum()  # a fourth: sum

print("loss             :", loss.item())
print("loss made by     :", type(loss.creator).__name__, "<- y made by", type(y.creator).__name__)
print("inputs of the Add:", [type(t.creator).__name__ for t in y.creator.inputs])
print("x is a leaf      :", x.is_leaf, "| y is a leaf:", y.is_leaf)

loss.backward()
print("x.grad           :", x.grad, "  by hand, 2x + 3 =", 2 * x.data + 3)

# %% [markdown]
# ## 2. A `Function`: forward and backward side by side
#
# Write a computation as a chain $x \to y = f(x) \to \dots \to L$ ending in a scalar loss
# $L$. Backward receives $\bar y = \partial L / \partial y$ (same shape as $y$) and must
# return $\bar x = \partial L / \partial x$. By the chain rule
#
# $$\bar x_j = \sum_i \bar y_i \, \frac{\partial y_i}{\partial x_j},$$
#
# a vector-Jacobian product. We never build the Jacobian: for an elementwise op it is
# diagonal, so $\bar x = \bar y \odot f'(x)$. For $y = a b$: $\bar a = \bar y\, b$ and
# $\bar b = \bar y\, a$; for $y = e^x$: $\bar x = \bar y\, e^x = \bar y\, y$, so `Exp`
# keeps its output for the backward. Here are the real ops of the library:

# %%
from tinymoe.ops.elementwise import Exp, Mul

print(inspect.getsource(Mul))
print(inspect.getsource(Exp))

# %% [markdown]
# `forward` works on raw arrays and keeps on `self` whatever `backward` will need.
# `backward(g)` returns **one gradient per input** (a tuple). The glue is
# `Function.__call__`: it unwraps the tensors (`_data` is the raw array), runs `forward`,
# wraps the result and, if any input requires a gradient (and we are not inside `no_grad`),
# records `creator`, `inputs` and the output's shape (to check the gradients backward will
# return), and marks the arrays forward saw as saved (section 9 shows why):

# %%
print(inspect.getsource(Function.__call__))

# %% [markdown]
# ## 3. `backward()` is a topological sort and one loop
#
# To pass a gradient back through a tensor $t$ we must first have **all** of
# $\partial L/\partial t$: the sum over every op that used $t$. So we visit tensors in
# reverse topological order (every user of $t$ before $t$ itself). Depth-first search
# gives that order: append a tensor after all of its inputs, then walk the list backwards.
# Here is the whole algorithm, written with nothing but `creator`, `inputs` and each
# Function's `backward`:

# %%
def topological_order(root):
    """Every tensor that root depends on, each one placed after all of its inputs."""
    order, seen = [], set()

    def visit(t):
        if id(t) in seen:
            return
        seen.add(id(t))
        if t.creator is not None:
            for parent in t.creator.inputs:
                if parent.requires_grad:
                    visit(parent)
        order.append(t)  # after its inputs

    visit(root)
    return order


def my_backward(root):
    """d root / d leaf, accumulated into leaf.grad (no broadcasting support yet: exercise 3)."""
    grads = {id(root): np.ones_like(root.data)}  # dL/dL = 1
    for t in reversed(topological_order(root)):  # users before the tensors they use
        g = grads.pop(id(t))  # complete: every use of t has added its share
        if t.creator is None:  # a leaf: store (accumulate) its gradient
            t.grad = g.copy() if t.grad is None else t.grad + g
            continue
        for parent, g_parent in zip(t.creator.inputs, t.creator.backward(g), strict=True):
            if g_parent is not None and parent.requires_grad:
                grads[id(parent)] = grads.get(id(parent), 0) + g_parent


# %% [markdown]
# Let us run it on $L = \sum_j \left(e^{a_j b_j} + a_j^2\right)$ and compare with the
# library's `backward()` and with the gradients by hand,
# $\partial L/\partial a = b\,e^{ab} + 2a$ and $\partial L/\partial b = a\,e^{ab}$:

# %%
a = tm.tensor([0.5, -1.0], requires_grad=True)
b = tm.tensor([2.0, 0.3], requires_grad=True)
out = (F.exp(a * b) + a * a).sum()

print("visit order:", [type(t.creator).__name__ if t.creator else "leaf" for t in reversed(topological_order(out))])
my_backward(out)
mine = (a.grad.copy(), b.grad.copy())
a.grad = b.grad = None
out.backward()  # the library's version (iterative, otherwise the same idea)
by_hand = (b.data * np.exp(a.data * b.data) + 2 * a.data, a.data * np.exp(a.data * b.data))
for name, m, lib, hand in zip("ab", mine, (a.grad, b.grad), by_hand, strict=True):
    print(f"dL/d{name}: mine {m}  library {lib}  by hand {hand}")

# %% [markdown]
# The library's `Tensor.backward` is the same loop. Its topological sort uses an explicit
# stack instead of recursion (a 10 000-op chain would hit Python's recursion limit), and,
# besides small details (dtypes, `retain_grad`, a check that each backward returns one
# gradient per input), it adds one line we left out: `_sum_to_shape`, for broadcasting
# (section 6).
#
# ## 4. A diamond: one tensor, two users
#
# In $a = x^2$, $L = e^{a} + 2a$, the tensor $a$ feeds two ops. Its gradient is the **sum**
# over both paths, $\partial L/\partial a = e^{a} + 2$, and then
# $\partial L/\partial x = (e^{x^2} + 2)\, 2x$. At $x = 0.5$ that is $e^{0.25} + 2 \approx 3.2840$:

# %%
x = tm.tensor([0.5], requires_grad=True)
a = x * x
L = F.exp(a) + 2 * a  # a is used twice: a "diamond" x -> a -> {exp, 2*} -> L
L.backward()
print("autograd:", x.grad, " by hand:", (np.exp(0.25) + 2) * 2 * 0.5)

# %% [markdown]
# Why insist on the topological order? A naive recursion that pushes each incoming
# gradient straight down, without waiting for the other users, also gives the right sum,
# but it walks every *path* separately. Stack $n$ diamonds
# ($h \leftarrow \tanh h + \operatorname{sigmoid} h$) and there are $2^n$ paths:

# %%
def naive_backward(t, g, calls):
    """Push g down every path at once, without waiting for t's other users."""
    if t.creator is None:
        t.grad = g.copy() if t.grad is None else t.grad + g
        return
    calls[0] += 1
    for parent, g_parent in zip(t.creator.inputs, t.creator.backward(g), strict=True):
        if g_parent is not None and parent.requires_grad:
            naive_backward(parent, g_parent, calls)


print(f"{'diamonds':>8} {'ops':>5} {'naive backward calls':>21} {'same gradient':>14}")
for n in (2, 4, 8, 12):
    x = tm.tensor([0.3], requires_grad=True)
    h = x
    for _ in range(n):
        h = F.tanh(h) + F.sigmoid(h)
    calls = [0]
    naive_backward(h, np.ones_like(h.data), calls)
    naive = x.grad.copy()
    x.grad = None
    h.backward()  # topological: each op's backward runs once
    print(f"{n:>8} {3 * n:>5} {calls[0]:>21} {str(np.allclose(naive, x.grad)):>14}")

# %% [markdown]
# Same gradient, but the naive walk grows as $2^n$ while the topological one costs one
# backward per op. A transformer reuses tensors everywhere (residual streams, shared
# weights), so this is not a corner case.
#
# ## 5. Gradients accumulate
#
# `backward()` **adds** into `.grad`; it never overwrites. Call it twice and you get twice
# the gradient. That is why every training step starts with `optimizer.zero_grad()` (or
# `model.zero_grad()`, or `x.grad = None`).

# %%
w = tm.tensor([1.0, -2.0], requires_grad=True)
for i in range(2):
    (w * w).sum().backward()
    print(f"after backward #{i + 1}: w.grad = {w.grad}   (d/dw sum w^2 = 2w = {2 * w.data})")
w.grad = None

# %% [markdown]
# Accumulation is also a feature: a batch too big for memory can be split into
# micro-batches whose gradients add up. With a mean-squared loss over 8 rows, two halves
# each weighted by $\tfrac12$ give exactly the full-batch gradient:

# %%
rng = np.random.default_rng(0)
X, target = rng.standard_normal((8, 2)).astype(np.float32), rng.standard_normal((8, 1)).astype(np.float32)
w = tm.tensor([[0.5], [-0.5]], requires_grad=True)  # (2, 1): matmul needs 2-D operands

F.mse_loss(X @ w, target).backward()
full = w.grad.copy()
w.grad = None
for half in (slice(0, 4), slice(4, 8)):
    (0.5 * F.mse_loss(X[half] @ w, target[half])).backward()  # accumulates
print("full batch     :", full.ravel())
print("2 micro-batches:", w.grad.ravel())

# %% [markdown]
# ## 6. Broadcasting, and summing the gradient back to the input's shape
#
# NumPy broadcasting stretches size-1 (or missing) axes. In $y_{ij} = X_{ij}\,c_i + b_j$
# with $X$ of shape (3, 2), $c$ of shape (3, 1) and $b$ of shape (2,), the same $b_j$ is
# used by every row $i$, and the same $c_i$ by every column $j$. Each use adds its share:
#
# $$\frac{\partial L}{\partial b_j} = \sum_i \bar y_{ij}, \qquad
#   \frac{\partial L}{\partial c_i} = \sum_j \bar y_{ij} X_{ij}, \qquad
#   \frac{\partial L}{\partial X_{ij}} = \bar y_{ij}\, c_i .$$
#
# An op's backward may return a full (3, 2) gradient; the engine then sums it over the
# axes that broadcasting added or stretched. A concrete example with the upstream gradient
# $\bar y$ given explicitly:

# %%
X = tm.tensor(np.arange(6, dtype=np.float32).reshape(3, 2), requires_grad=True)
c = tm.tensor([[1.0], [2.0], [3.0]], requires_grad=True)  # (3, 1)
b = tm.tensor([10.0, 20.0], requires_grad=True)  # (2,)
y = X * c + b  # (3, 2)
y_bar = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], dtype=np.float32)  # dL/dy
y.backward(y_bar)

print("y_bar =\n", y_bar)
print("b.grad", b.grad.shape, b.grad, "  column sums of y_bar:", y_bar.sum(axis=0))
print("c.grad", c.grad.shape, c.grad.ravel(), "  row sums of y_bar * X:", (y_bar * X.data).sum(axis=1))
print("X.grad", X.grad.shape, "equals y_bar * c:", np.array_equal(X.grad, y_bar * c.data))

# %% [markdown]
# The engine does this in one small function, called on every gradient in `backward()`.
# It gets the input and the op, not just a shape, so that it can refuse a gradient whose
# shape broadcasting cannot explain: that is a bug in the op's backward (section 9).

# %%
from tinymoe.tensor import _sum_to_shape

print(inspect.getsource(_sum_to_shape))

# %% [markdown]
# ## 7. Switching the graph off: `no_grad` and `detach`
#
# Inside `with tm.no_grad():` ops record nothing: no creator, no saved arrays, less memory.
# Evaluation and optimiser updates run that way. `t.detach()` gives the same numbers as a
# new leaf with no history, so the gradient cannot flow back through that use: a
# stop-gradient. (Later lessons use the idea: the expert counts $f_i$ in the Switch
# balance loss carry no gradient.)

# %%
x = tm.tensor([2.0], requires_grad=True)
with tm.no_grad():
    y = x * x
print("inside no_grad: requires_grad =", y.requires_grad, "| creator =", y.creator)

z = x * x.detach()  # only the first factor is "live"
z.backward()
print("d(x * x.detach())/dx =", x.grad, "(the detached x is a constant; d(x*x)/dx would be 4)")

# %% [markdown]
# ## 8. Checking gradients: `tm.gradcheck`
#
# A backward can be wrong and still train (badly). The test is **central finite
# differences**: nudge one input element by $\pm\varepsilon$ and watch a scalar loss
#
# $$\frac{\partial L}{\partial x_i} \approx \frac{L(x + \varepsilon e_i) - L(x - \varepsilon e_i)}{2\varepsilon},
# \qquad \text{error} = O(\varepsilon^2) \text{ (truncation)} + O(u / \varepsilon) \text{ (rounding, } u = \text{machine epsilon)}.$$
#
# `tm.gradcheck(fn, inputs)` uses $L = \sum f(x) \odot R$ with a fixed random $R$ (so every
# output element is checked), runs in float64, and demands
# $|\text{analytic} - \text{numeric}| \le \text{atol} + \text{rtol}\,|\text{numeric}|$ for
# every element. Why float64 and $\varepsilon = 10^{-6}$? The error of the estimate for
# $\frac{d}{dx} e^x$ at $x = 1$:

# %%
eps = np.logspace(-12, -1, 45)
fig, ax = plt.subplots(figsize=(6, 3.5))
for dtype in (np.float32, np.float64):
    one, e = dtype(1.0), eps.astype(dtype)
    numeric = (np.exp(one + e) - np.exp(one - e)) / (2 * e)
    ax.loglog(eps, np.abs(numeric.astype(np.float64) - np.e) + 1e-17, label=np.dtype(dtype).name)
ax.axvline(1e-6, color="k", linestyle="--", label="gradcheck's eps = 1e-6")
ax.set(xlabel="eps", ylabel="|central difference - exact|", title="Finite-difference error for d/dx e^x at x = 1")
ax.legend()
plt.show()

# %% [markdown]
# Two error sources meet: to the right the $O(\varepsilon^2)$ truncation error, to the left
# rounding ($u/\varepsilon$). In float64 the error bottoms out near $\varepsilon \approx 3\cdot10^{-6}$
# at about $3\cdot10^{-11}$ (at gradcheck's $10^{-6}$: $2\cdot10^{-10}$). In float32 the best is
# about $6\cdot10^{-6}$, near $\varepsilon \approx 3\cdot10^{-3}$, and at $\varepsilon = 10^{-6}$ the
# estimate is off by $2\cdot10^{-2}$: useless for catching subtle bugs. Hence float64.
#
# A passing check, the softmax of a matrix product:

# %%
rng = np.random.default_rng(0)
x = tm.tensor(rng.standard_normal((4, 3)), requires_grad=True)  # float64 arrays stay float64
W = tm.tensor(rng.standard_normal((3, 5)), requires_grad=True)
print("gradcheck passed:", tm.gradcheck(lambda x, W: F.softmax(x @ W, axis=-1), {"x": x, "W": W}))

# %% [markdown]
# Now a deliberately wrong op: a sigmoid whose backward forgets the factor $(1 - y)$ of
# $\sigma'(x) = \sigma(x)(1 - \sigma(x))$. Gradcheck raises a `GradcheckError` (an
# `AssertionError`) with a table of the worst entries:

# %%
class BadSigmoid(Function):
    def forward(self, x):
        self.y = 1 / (1 + array_module(x).exp(-x))
        return self.y

    def backward(self, g):
        return (g * self.y,)  # wrong: should be g * y * (1 - y)


try:
    tm.gradcheck(lambda t: BadSigmoid()(t), {"x": x})
except AssertionError as error:
    print(error)

# %% [markdown]
# Every entry is off, and by a lot: the signature of a wrong formula. (A handful of bad
# entries would point to a kink, such as relu at 0, or to randomness inside `fn`.)
#
# ## 9. Build a tiny op: `SoftSign`
#
# Time to add an op the library does not have. $\operatorname{softsign}(x) = \frac{x}{1 + |x|}$
# squashes like $\tanh$ but with polynomial tails. Its derivative: for $x > 0$,
# $\frac{d}{dx}\frac{x}{1 + x} = \frac{1}{(1 + x)^2}$; for $x < 0$,
# $\frac{d}{dx}\frac{x}{1 - x} = \frac{1}{(1 - x)^2}$; together
#
# $$\operatorname{softsign}'(x) = \frac{1}{(1 + |x|)^2},$$
#
# continuous at 0 (both sides give 1), so finite differences work everywhere. Three steps:
# subclass `Function`, keep what backward needs, return one gradient per input.
# (`array_module` makes the same code run on NumPy and CuPy.)

# %%
class SoftSign(Function):
    """softsign(x) = x / (1 + |x|)."""

    def forward(self, x):
        self.denom = 1 + array_module(x).abs(x)  # kept for backward
        return x / self.denom

    def backward(self, g):
        return (g / (self.denom * self.denom),)  # softsign'(x) = 1 / (1 + |x|)^2


def softsign(x):
    return SoftSign()(x)


probe = tm.tensor(np.linspace(-3, 3, 13), requires_grad=True)  # float64, includes 0
print("gradcheck passed:", tm.gradcheck(softsign, [probe]))

# %% [markdown]
# It is now a first-class op: it composes with every other op and backward finds it. Plot
# it and its derivative, the latter straight from autograd:

# %%
t = tm.tensor(np.linspace(-6, 6, 241), requires_grad=True)
softsign(t).sum().backward()  # d/dt_i sum_j softsign(t_j) = softsign'(t_i)

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(t.data, softsign(t).data, label="softsign(x)")
ax.plot(t.data, np.tanh(t.data), "--", label="tanh(x)")
ax.plot(t.data, t.grad, label="softsign'(x) by autograd")
ax.set(xlabel="x", ylabel="value", title="SoftSign, our new op, and its gradient")
ax.legend()
plt.show()

# %% [markdown]
# Two mistakes the engine catches for you when you write an op. A backward must return
# **one gradient per input, of that input's shape**: returning two gradients for one input,
# or a gradient with an extra axis, is an error naming the op (it would otherwise be
# summed away into a silently wrong answer). And the graph keeps the arrays that forward
# saw: editing `x.data` in place between forward and backward changes `x`, not the
# gradient of the forward that already ran.

# %%
class TwoGradients(Function):
    """softsign again, with a backward that returns one gradient too many."""

    def forward(self, x):
        self.denom = 1 + array_module(x).abs(x)
        return x / self.denom

    def backward(self, g):
        return g / self.denom**2, g  # wrong: forward had one input


try:
    TwoGradients()(probe).sum().backward()
except ValueError as error:
    print("ValueError:", error)

w = tm.tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
y = (w * w).sum()  # dy/dw = 2w = [2, 4, 6] at the values forward used
w.data *= 100  # an in-place edit after forward...
y.backward()
print("w.data now:", w.data, "| w.grad:", w.grad)  # ...and still the gradient of that forward

# %% [markdown]
# ## 10. Experiment: a tiny MLP on two moons
#
# Everything together: `tm.nn.Linear` layers, `tanh`, `F.cross_entropy`, `backward()` and
# `tm.optim.Adam`. The data are two interleaved half-circles ("two moons") with Gaussian
# noise: no straight line separates them, so the hidden layers must bend the boundary.

# %%
def two_moons(n, noise, rng):
    """n points on two interleaved half circles, labels 0 (upper) and 1 (lower)."""
    angle = rng.uniform(0, np.pi, n)
    lower = rng.random(n) < 0.5
    upper_xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower_xy = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    xy = np.where(lower[:, None], lower_xy, upper_xy) + noise * rng.standard_normal((n, 2))
    return xy.astype(np.float32), lower.astype(np.int64)


rng = np.random.default_rng(1)
x_train, y_train = two_moons(300, 0.15, rng)
x_test, y_test = two_moons(300, 0.15, rng)
print("train", x_train.shape, "class counts", np.bincount(y_train), "| test", x_test.shape)


class MLP(tm.nn.Module):
    """2 -> 32 -> 32 -> 2 with tanh: the parameters are the Linear layers' attributes."""

    def __init__(self, d_hidden=32):
        self.l1 = tm.nn.Linear(2, d_hidden)
        self.l2 = tm.nn.Linear(d_hidden, d_hidden)
        self.l3 = tm.nn.Linear(d_hidden, 2)

    def forward(self, x):
        return self.l3(F.tanh(self.l2(F.tanh(self.l1(x)))))


tm.manual_seed(0)
model = MLP()
print("parameters:", {name: p.shape for name, p in model.named_parameters()})

# %% [markdown]
# Before training, check the whole model's gradients once (every weight, in float64, on 5
# examples; gradcheck converts the parameters for the check and restores them after):

# %%
probe = tm.tensor(x_train[:5].astype(np.float64))  # no requires_grad: only params are checked
n_params = sum(p.size for p in model.parameters())
start = time.perf_counter()
ok = tm.gradcheck(lambda t: F.cross_entropy(model(t), y_train[:5]), [probe], params=dict(model.named_parameters()))
print(f"gradcheck of all {n_params} parameters passed: {ok} ({time.perf_counter() - start:.1f} s)")

# %% [markdown]
# The training loop is four lines per step: zero the gradients, forward, backward, step.
# Full batch, Adam with learning rate 0.01.

# %%
steps = 300 if FAST else 1500
optimizer = tm.optim.Adam(model.parameters(), lr=0.01)
X_train, X_test = tm.tensor(x_train), tm.tensor(x_test)
history, test_history = [], []
start = time.perf_counter()
for step in range(steps):
    optimizer.zero_grad()
    loss = F.cross_entropy(model(X_train), y_train)
    loss.backward()
    optimizer.step()
    history.append(loss.item())
    if step % 50 == 0 or step == steps - 1:
        with tm.no_grad():
            test_history.append((step, F.cross_entropy(model(X_test), y_test).item()))
print(f"{steps} steps in {time.perf_counter() - start:.1f} s")

with tm.no_grad():
    train_acc = (model(X_train).data.argmax(-1) == y_train).mean()
    test_acc = (model(X_test).data.argmax(-1) == y_test).mean()
best_step, best_test = min(test_history, key=lambda s: s[1])
print(f"final train loss {history[-1]:.4f} | lowest test loss {best_test:.4f} (step {best_step}), "
      f"final test loss {test_history[-1][1]:.4f}")
print(f"train accuracy {train_acc:.1%} | test accuracy {test_acc:.1%}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.semilogy(history, label="train")
ax1.semilogy(*zip(*test_history, strict=True), "o--", label="test")
ax1.set(xlabel="step", ylabel="cross-entropy (nats)", title="Two moons: loss")
ax1.legend()

g1, g2 = np.meshgrid(np.linspace(-1.6, 2.6, 200), np.linspace(-1.1, 1.6, 200))
grid = np.stack([g1.ravel(), g2.ravel()], axis=1).astype(np.float32)
with tm.no_grad():
    p_lower = F.softmax(model(tm.tensor(grid)), axis=-1).data[:, 1].reshape(g1.shape)
ax2.contourf(g1, g2, p_lower, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.6)
ax2.contour(g1, g2, p_lower, levels=[0.5], colors="k")
for label, marker in ((0, "o"), (1, "s")):
    ax2.scatter(*x_test[y_test == label].T, s=10, marker=marker, edgecolor="k", linewidth=0.3, label=f"test, class {label}")
ax2.set(xlabel="x1", ylabel="x2", title="Decision boundary (black: p = 0.5)")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# **Result.** After 1500 full-batch Adam steps (0.4 s in the saved run) the MLP classifies
# 100% of the training points and 99.3% of the 300 test points; the boundary bends around
# both moons. The loss plot also shows **overfitting**: the training loss keeps falling
# (to 0.0022) while the test loss is lowest, 0.0169, at step 150 and then climbs to 0.0596,
# as the network grows more and more confident near the few training points that sit on the
# wrong side. Accuracy hardly moves; the confidence does. (Exercise 4 asks you to try other
# optimisers and depths.)
#
# Everything in this lesson, and every MoE in the rest of the course, runs on these few
# ideas: a graph of Functions, a topological order, vector-Jacobian products, broadcasting
# undone by summation, and `gradcheck` to keep every backward honest.
#
# ## Exercises
#
# 1. **Your own op, `Cube`.** Write `class Cube(Function)` for $y = x^3$ (backward:
#    $3x^2\,\bar y$) and check it with `tm.gradcheck` on `np.linspace(-2, 2, 9)`. Then
#    break it on purpose (return $3x\,\bar y$) and read the table: which entries agree, and why?
# 2. **Two inputs and broadcasting.** Write `Hypot(a, b)` $= \sqrt{a^2 + b^2}$ with
#    $\partial/\partial a = a / y$, $\partial/\partial b = b / y$. Gradcheck it with `a` of
#    shape (4, 3) and `b` of shape (3,). Your backward returns (4, 3) arrays for both: who
#    turns `b`'s into shape (3,)? Verify it is the column sum.
# 3. **Finish `my_backward`.** Run it on `X * c + b` from section 6: what goes wrong?
#    Fix it with one call to `_sum_to_shape(g_parent, parent, t.creator)` and compare with
#    the library.
# 4. **Optimisers and depth.** Retrain the MLP with `tm.optim.SGD(lr=0.1, momentum=0.9)`
#    and with Adam, and plot both loss curves. Then remove the hidden layer `l2`; and then use
#    a purely linear model (`Linear(2, 2)`): what test accuracy can a straight line reach?
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 自动微分 | automatic differentiation (autograd) |
# | 反向传播 | backpropagation |
# | 计算图 | computational graph |
# | 叶子张量 | leaf tensor |
# | 链式法则 | chain rule |
# | 向量-雅可比积 | vector-Jacobian product |
# | 拓扑排序 | topological sort |
# | 梯度累加 | gradient accumulation |
# | 广播 | broadcasting |
# | 停止梯度 | stop-gradient (`detach`) |
# | 有限差分 / 中心差分 | finite differences / central differences |
# | 梯度检验 | gradient check (`gradcheck`) |
# | 算子 | op (operator) |
# | 多层感知机 | multilayer perceptron (MLP) |
# | 优化器 | optimiser |
# | 决策边界 | decision boundary |
