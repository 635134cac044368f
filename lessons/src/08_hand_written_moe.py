# %% [markdown]
# # 08 手撕 MoE: hand-writing an MoE layer
#
# "手撕 MoE" ("tearing an MoE apart by hand") is the classic exercise of MoE courses and
# interviews: write a top-k Mixture-of-Experts layer from nothing but matrix products,
# a sort and a few gathers. In this lesson you write it in five pieces:
#
# 1. **router**: which k experts each token goes to, and with what weight;
# 2. **dispatch**: copy every token once per choice and group the copies by expert;
# 3. **experts**: each expert runs on its own contiguous block of rows;
# 4. **combine**: bring every answer back to its token, weighted;
# 5. **balance loss**: the auxiliary loss that keeps the experts evenly used.
#
# After each piece a checker from `tinymoe.check` runs your function and the library's on
# the same random float64 inputs and compares the **values and the gradients** of every
# input. Then we assemble your pieces into a layer, check it against the library's
# `TopKMoE` on the same weights, train it inside a small language model, and time it
# against the naive loop.
#
# The layer is Mixtral's (Jiang et al. 2024, *Mixtral of Experts*): softmax router, top-2,
# weights renormalised over the two chosen, SwiGLU experts (Shazeer 2020, *GLU Variants
# Improve Transformer*). The balance loss is the Switch Transformer's (Fedus, Zoph &
# Shazeer 2022, *Switch Transformers*, eq. 4-6), scaled so that it equals 1 at perfect
# balance. Sparse top-k gating itself comes from Shazeer et al. (2017), *Outrageously Large
# Neural Networks* (lesson 02).

# %% [markdown]
# ## Notes for instructors
#
# - **Two notebooks.** `lessons/build.py 08` writes this notebook (with the solutions, run)
#   and `08_hand_written_moe_exercise.ipynb`, where each solution is replaced by
#   `raise NotImplementedError("your turn: ...")`. Hand out the exercise notebook.
# - **Live.** Run the cells down to "The goal" together (about 10 minutes), then do one piece
#   at a time: read the equation and the shapes aloud, let the class type for 5-10 minutes,
#   then run the checker cell. A failing checker names the output or gradient that differs,
#   the first index, the expected and the actual value (step 1 shows one). Typical mistakes
#   it catches: no renormalisation, copies in token order instead of expert order, ReLU
#   instead of SiLU, a `.detach()` that cuts the gradient to the router, the balance loss on
#   the wrong scale.
# - **Order.** The five pieces are independent: a student stuck on dispatch can go on to
#   experts. Only the assembly at the end needs all five.
# - **Time.** The whole solved notebook runs in about half a minute on a 2-core CPU; with
#   `TINYMOE_FAST=1` in the environment the training and timing at the end shrink to a few
#   seconds (handy when you re-run it on a projector).
# - **Rules of the game.** Use `tm.F` ops on tensors (so gradients flow) and plain NumPy on
#   integer index arrays (which have no gradient). No Python loop over tokens; a loop over
#   experts is fine.

# %%
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import check, data
from tinymoe.models import TransformerLM

F = tm.F
FAST = os.environ.get("TINYMOE_FAST") == "1"
np.set_printoptions(precision=3, suppress=True)
print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## The goal: the naive loop
#
# For N tokens $x_n \in \mathbb{R}^d$, E experts and k choices per token, a top-k MoE
# computes
#
# $$y_n = \sum_{j=1}^{k} w_{nj}\, \mathrm{FFN}_{i_{nj}}(x_n),$$
#
# where $i_{n1}, \dots, i_{nk}$ are the experts the router chose for token n and $w_{nj}$
# their weights. The most obvious way to compute it loops over the experts: find the
# tokens that chose expert e (a mask), run the expert on them, add the weighted result
# into their rows. This is `tm.moe.dense_moe`, the oracle every dispatcher of the library is
# tested against. Here it is, written out, next to the library layer:

# %%
tm.manual_seed(0)
N, D, E, K, HIDDEN = 10, 8, 4, 2, 16
layer = tm.moe.TopKMoE(D, HIDDEN, E, K)           # router + 4 SwiGLU experts
x = tm.tensor(np.random.default_rng(0).standard_normal((N, D)), dtype=np.float32)

y_library, aux = layer(x)
routing = layer.last_routing                      # what the router decided
index, weight = routing.expert_index, routing.weight
print("expert_index (N, k):\n", index.T)

y_naive = tm.tensor(np.zeros((N, D), np.float32))
for e in range(E):
    token, choice = np.nonzero(index == e)        # the slots (token n, choice j) that chose e
    out = layer.experts.expert(e, x[token])       # expert e on its tokens
    y_naive = F.index_add(y_naive, token, out * F.unsqueeze(weight[token, choice], -1))

y_oracle = tm.moe.dense_moe(x, index, weight, layer.experts.expert, E)
print("naive loop vs library layer:", np.abs(y_naive.data - y_library.data).max())
print("naive loop vs dense_moe:    ", np.abs(y_naive.data - y_oracle.data).max())

# %% [markdown]
# The loop is correct but scans all N·k choices once per expert, and its rows are
# scattered. Real implementations instead **sort** the (token, choice) slots by expert
# once, so that each expert's inputs lie in one contiguous block of a buffer:
#
# ```
# tokens x (N, d) --router--> index (N, k), weight (N, k)
#          --dispatch--> xs (N*k, d), grouped by expert: [expert 0 rows | expert 1 rows | ...]
#          --experts-->  ys (N*k, d), expert e applied to its block of counts[e] rows
#          --combine-->  y (N, d),   y_n = sum_j w_nj * ys[row of (n, j)]
# ```
#
# That is what you will write. In every exercise: `x`, `weight`, `probs`, the expert
# weights are `Tensor`s (use `F.` ops on them so gradients flow); `expert_index` and
# `counts` are plain NumPy integer arrays (indices have no gradient).

# %% [markdown]
# ## Step 1: the router
#
# $$p_n = \mathrm{softmax}(x_n W_g) \in \mathbb{R}^E,\qquad
# (v_{n1..nk},\ i_{n1..nk}) = \mathrm{TopK}(p_n, k),\qquad
# w_{nj} = \frac{v_{nj}}{\sum_{l=1}^{k} v_{nl}}.$$
#
# Shapes: `x` (N, d), `w_gate` (d, E) → `weight` (N, k) Tensor, `expert_index` (N, k) int
# array, best expert first, ties to the lowest index.
#
# Hints: `F.matmul`, `F.softmax(..., axis=-1)`; `F.topk(t, k)` returns `(values, indices)`
# with exactly that tie rule; `F.sum(..., axis=-1, keepdims=True)`.
#
# Why renormalise? Mixtral does, so that each token's weights sum to 1. It has a famous
# side effect: with k = 1 every weight is exactly 1 and the task loss gives the router no
# gradient at all; only the balance loss trains it then.

# %%
def router(x, w_gate, k):
    # BLANK router
    probs = F.softmax(F.matmul(x, w_gate), axis=-1)   # (N, E)
    top, expert_index = F.topk(probs, k)               # (N, k) values, (N, k) ints
    weight = top / F.sum(top, axis=-1, keepdims=True)  # renormalised over the k chosen
    return weight, expert_index
    # END BLANK


# %%
check.check_router(router)

# %% [markdown]
# This is what a failure looks like: a router that forgets to renormalise.

# %%
def router_without_renormalising(x, w_gate, k):  # a typical mistake
    return F.topk(F.softmax(F.matmul(x, w_gate), axis=-1), k)


try:
    check.check_router(router_without_renormalising)
except check.CheckFailed as failure:
    print("CheckFailed:", failure)

# %% [markdown]
# ## Step 2: dispatch
#
# Number the N·k slots $s = n\,k + j$ (token n, choice j). Sort the slots by their expert,
# **stably**, so that inside one expert the slots keep (token, choice) order; the buffer
# row r holds a copy of the token of the r-th slot in that order:
#
# $$xs_r = x_{\lfloor s_r / k \rfloor},\qquad s_1, s_2, \dots = \text{slots sorted by } i_s \text{ (stable)}.$$
#
# Example, N = 3, k = 2, `expert_index = [[2, 0], [0, 1], [2, 1]]`: the slots 0..5 choose
# experts 2, 0, 0, 1, 2, 1; sorted by expert: slots 1, 2 (expert 0), 3, 5 (expert 1),
# 0, 4 (expert 2); their tokens are 0, 1, 1, 2, 0, 2, so `xs = x[[0, 1, 1, 2, 0, 2]]`.
#
# Shapes: `x` (N, d), `expert_index` (N, k) → `xs` (N·k, d).
#
# Hints: `expert_index.reshape(-1)`; `np.argsort(..., kind="stable")` (a counting sort in
# spirit: E buckets); `F.take(x, rows, axis=0)` gathers rows and its backward adds each
# copy's gradient back into its token.

# %%
def dispatch(x, expert_index, n_experts):
    # BLANK dispatch
    n, k = expert_index.shape
    order = np.argsort(expert_index.reshape(-1), kind="stable")  # slots, grouped by expert
    return F.take(x, order // k, axis=0)                         # the token of each slot
    # END BLANK


# %%
check.check_dispatch(dispatch)

# %% [markdown]
# ## Step 3: the experts
#
# Expert e owns the `counts[e]` rows starting at $o_e = \sum_{e' < e} \mathrm{counts}[e']$,
# and applies the SwiGLU feed-forward network to them:
#
# $$\mathrm{FFN}_e(x) = \big(\mathrm{silu}(x W_1^{(e)}) \odot (x W_3^{(e)})\big)\, W_2^{(e)},
# \qquad \mathrm{silu}(z) = z\,\sigma(z).$$
#
# Shapes: `xs` (R, d) with R = sum of `counts`, `counts` (E,) ints, `w1` and `w3`
# (E, d, f), `w2` (E, f, d) → `ys` (R, d), rows in the same order as `xs`.
#
# Hints: `offsets = np.concatenate([[0], np.cumsum(counts)])`; a slice `xs[a:b]` and an
# index `w1[e]` are differentiable; `F.silu`, `F.concat(list, axis=0)`. One matmul per
# expert on its block: this is a "grouped GEMM". An expert with no rows gives a (0, d)
# block, which is fine.

# %%
def experts(xs, counts, w1, w2, w3):
    # BLANK experts
    offsets = np.concatenate([[0], np.cumsum(counts)])
    outputs = []
    for e in range(len(counts)):
        rows = xs[int(offsets[e]) : int(offsets[e + 1])]             # expert e's block
        hidden = F.silu(F.matmul(rows, w1[e])) * F.matmul(rows, w3[e])
        outputs.append(F.matmul(hidden, w2[e]))
    return F.concat(outputs, axis=0)
    # END BLANK


# %%
check.check_experts(experts)

# %% [markdown]
# ## Step 4: combine
#
# Every slot (n, j) sits in one buffer row $r(n, j)$; its weighted answer goes back to
# token n:
#
# $$y_n = \sum_{j=1}^{k} w_{nj}\; ys_{\,r(n, j)}.$$
#
# $r$ is the **inverse** of the sort of step 2: if `order[r] = s` (row r holds slot s),
# then `row_of_slot[s] = r`.
#
# Shapes: `ys` (N·k, d), `expert_index` (N, k), `weight` (N, k) → `y` (N, d).
#
# Hints: redo the stable sort; invert it with `row_of_slot[order] = np.arange(N*k)`;
# `F.take` the rows in slot order, `F.reshape` to (N, k, d), multiply by
# `F.unsqueeze(weight, -1)`, `F.sum(..., axis=1)`. Both `ys` and `weight` must receive
# gradients: $\partial L/\partial w_{nj} = \langle \partial L/\partial y_n,\, ys_{r(n,j)} \rangle$
# is how the task loss teaches the router.

# %%
def combine(ys, expert_index, weight, n_experts):
    # BLANK combine
    n, k = expert_index.shape
    order = np.argsort(expert_index.reshape(-1), kind="stable")  # row -> slot (as in dispatch)
    row_of_slot = np.empty_like(order)
    row_of_slot[order] = np.arange(order.size)                    # slot -> row: the inverse
    answers = F.reshape(F.take(ys, row_of_slot, axis=0), (n, k, -1))  # (N, k, d)
    return F.sum(F.unsqueeze(weight, -1) * answers, axis=1)
    # END BLANK


# %%
check.check_combine(combine)

# %% [markdown]
# ## Step 5: the balance loss
#
# Left alone, a router tends to send most tokens to a few experts that then get better
# and are chosen even more. The Switch Transformer's auxiliary loss pushes back:
#
# $$L_{\text{balance}} = E \sum_{i=1}^{E} f_i\, P_i,\qquad
# f_i = \frac{\#\{(n, j): i_{nj} = i\}}{N k},\qquad P_i = \frac{1}{N}\sum_{n} p_{n,i}.$$
#
# $f_i$ is the share of the N·k assignments that went to expert i (a count: no gradient),
# $P_i$ the mean router probability of expert i (differentiable). At perfect balance
# $f_i = P_i = 1/E$ and the loss is 1; if one expert takes everything it is E. The
# gradient only flows through $P$: it lowers the probability of the experts that are
# chosen most. (Libraries scale it differently; the docstring of `tinymoe.moe.losses` has a
# table. The layer multiplies it by a small coefficient, 0.01 here.)
#
# Shapes: `probs` (N, E) Tensor, `expert_index` (N, k) → a scalar Tensor.
#
# Hints: `np.bincount(..., minlength=n_experts)`; `F.mean(probs, axis=0)`; cast the
# counts to `probs.dtype` before multiplying.

# %%
def balance_loss(probs, expert_index, n_experts):
    # BLANK balance_loss
    counts = np.bincount(expert_index.reshape(-1), minlength=n_experts)
    f = (counts / expert_index.size).astype(probs.dtype)   # share of the assignments
    P = F.mean(probs, axis=0)                               # mean router probability
    return n_experts * F.sum(f * P)
    # END BLANK


# %%
check.check_balance_loss(balance_loss)

# %% [markdown]
# ## Assembly: your layer
#
# The five pieces make a layer. `HandMoE` starts as an exact copy of a library `TopKMoE`
# (router and expert weights), so the two can be compared number for number. It computes
# the softmax a second time for the loss (your router returns only the top k); a
# production layer would keep the probabilities from the router.

# %%
class HandMoE(tm.nn.Module):
    """Router -> dispatch -> experts -> combine, plus the balance loss: the learner's layer."""

    def __init__(self, like, aux_weight=0.01):
        copy = lambda t: tm.nn.Parameter(t.data.copy())  # noqa: E731
        self.w_gate = copy(like.router.w_gate)
        self.w1, self.w2, self.w3 = copy(like.experts.w1), copy(like.experts.w2), copy(like.experts.w3)
        self.d_model, self.n_experts, self.k = like.d_model, like.n_experts, like.router.k
        self.aux_weight = aux_weight

    def forward(self, x):
        tokens = F.reshape(x, (-1, self.d_model))                      # (B, T, d) -> (N, d)
        weight, index = router(tokens, self.w_gate, self.k)
        counts = np.bincount(index.reshape(-1), minlength=self.n_experts)
        ys = experts(dispatch(tokens, index, self.n_experts), counts, self.w1, self.w2, self.w3)
        y = combine(ys, index, weight, self.n_experts)
        probs = F.softmax(F.matmul(tokens, self.w_gate), axis=-1)
        self.last_counts = counts
        return F.reshape(y, x.shape), {"balance": self.aux_weight * balance_loss(probs, index, self.n_experts)}


tm.manual_seed(1)
library = tm.moe.TopKMoE(32, 64, 8, 2)
mine = HandMoE(library)
x = tm.tensor(np.random.default_rng(1).standard_normal((4, 16, 32)), dtype=np.float32)

outputs = {}
for name, moe in [("library", library), ("yours", mine)]:
    y, aux = moe(x)
    (F.sum(y * y) + aux["balance"]).backward()
    outputs[name] = (y.data, aux["balance"].item(), {n: p.grad for n, p in moe.named_parameters()})

(y_lib, aux_lib, g_lib), (y_mine, aux_mine, g_mine) = outputs["library"], outputs["yours"]
print(f"output:       max |difference| = {np.abs(y_lib - y_mine).max():.2e}   (|y| up to {np.abs(y_lib).max():.2f})")
print(f"balance loss: library {aux_lib:.6f}, yours {aux_mine:.6f}")
for lib_name, my_name in [("router.w_gate", "w_gate"), ("experts.w1", "w1"), ("experts.w2", "w2"),
                          ("experts.w3", "w3")]:
    print(f"gradient of {my_name:6s}: max |difference| = {np.abs(g_lib[lib_name] - g_mine[my_name]).max():.2e}")

# %% [markdown]
# ## Training it
#
# Your layer's output and balance loss are exactly the library's (difference 0), and so are
# the gradients of the three expert weights. The router's gradient differs by 4.8e-07: float32
# rounding, because the library computes $\partial L / \partial w_{nj}$ in one fused step
# (an einsum) and your combine in two (a product, then a sum), which add the same numbers in a
# different order.
#
# A layer that matches in one forward and backward pass should also train like the
# library's. We put it in every block of a small transformer language model (2 blocks,
# d = 32, 8 experts, top-2) on the course's synthetic multi-domain corpus (arithmetic,
# brackets, English-like words, DNA), and train two copies that start from the same
# weights and see the same batches: one with `TopKMoE`, one with `HandMoE`.

# %%
corpus = data.load_corpus("multi_domain", 40_000, seed=0)
STEPS = 40 if FAST else 300
CONTEXT, BATCH, D_MODEL, D_HIDDEN, N_EXPERTS = 32, 16, 32, 64, 8


def make_model(hand):
    tm.manual_seed(0)  # both models draw the same initial weights
    def moe():
        layer = tm.moe.TopKMoE(D_MODEL, D_HIDDEN, N_EXPERTS, 2)
        return HandMoE(layer) if hand else layer
    return TransformerLM(corpus.vocab_size, CONTEXT, D_MODEL, n_heads=4, n_layers=2, d_hidden=D_HIDDEN,
                         moe=moe, moe_every=1)


def train(model, steps):
    optimizer = tm.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)  # the same batches for both models
    losses, aux_losses, start = [], [], time.perf_counter()
    for _ in range(steps):
        inputs, targets = data.random_windows(corpus.train_ids, BATCH, CONTEXT, rng)
        loss, aux = model.loss(inputs, targets)
        optimizer.zero_grad()
        (loss + aux["balance"]).backward()
        tm.optim.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        aux_losses.append(aux["balance"].item() / 0.01)
    return np.array(losses), np.array(aux_losses), time.perf_counter() - start


curves = {}
for name, hand in [("library TopKMoE", False), ("your HandMoE", True)]:
    model = make_model(hand)
    curves[name] = train(model, STEPS)
    print(f"{name:16s}: loss {curves[name][0][:10].mean():.3f} (first 10 steps) -> "
          f"{curves[name][0][-20:].mean():.3f} (last 20), balance loss at the end "
          f"{curves[name][1][-20:].mean():.3f}, {curves[name][2]:.1f} s")
hand_model = model
gap = np.abs(curves["library TopKMoE"][0] - curves["your HandMoE"][0])
print(f"gap between the two loss curves: at most {gap[:10].max():.1e} in the first 10 steps, "
      f"{gap[:100].max():.1e} in the first 100, {gap.max():.1e} over all {STEPS}")

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
for (name, (losses, aux_losses, _)), style in zip(curves.items(), ["-", "--"], strict=True):
    ax1.plot(losses, style, label=name)
    ax2.plot(aux_losses, style, label=name)
ax1.set(xlabel="step", ylabel="cross-entropy (nats per character)", title="Training loss: library vs yours")
ax2.axhline(1.0, color="k", lw=0.8, ls=":", label="perfect balance")
ax2.set(xlabel="step", ylabel="balance loss  E·Σ f_i P_i", title="Balance loss (mean over the 2 MoE layers)")
ax1.legend()
ax2.legend()
fig.tight_layout()
plt.show()

# %%
load = hand_model.blocks[0].ffn.last_counts / hand_model.blocks[0].ffn.last_counts.sum()
print("your layer's expert load in block 0, last batch:", load)

# %% [markdown]
# Both models go from a loss of 3.513 (mean of the first 10 steps) to 1.642 (mean of the
# last 20 of 300 steps), the library's and yours alike to the digits printed. The balance loss
# stays close to its minimum of 1 (1.065 for both, mean of the last 20 steps), and in block 0
# every expert still gets work: the shares of the last batch range from 9.6% to 15.0% (12.5%
# would be even).
#
# The two curves coincide at first (gap at most 2.4e-07 in the first 10 steps, 4.8e-07 in
# the first 100) and then drift apart a little (at most 6.6e-04 over the 300 steps). Nothing
# is wrong: the 1e-7 rounding differences above are amplified by training, for instance when
# a token's second and third experts are nearly tied and a tiny change swaps them. Your layer
# took 3.7 s for the 300 steps, the library 2.8 s; the next section looks at speed.

# %% [markdown]
# ## How fast is it?
#
# Three ways to compute the same output, forward and backward, on N random tokens
# (d = 64, f = 128, top-2):
#
# - **every expert on every token**: run all E experts on all N tokens and weight them by
#   the gates, zero outside the top k (the 1991 mixture with a sparse gate): E·N expert
#   evaluations instead of k·N;
# - **naive loop**: `tm.moe.dense_moe`, one mask per expert (the goal cell above);
# - **yours**: `HandMoE`, sort once, contiguous blocks;
# - and the **library** `TopKMoE`, which runs the same algorithm as yours but as three fused
#   ops (`permute`, one grouped matmul per weight, `unpermute`) instead of many small ones.
#
# Times are the best of a few repeats, in milliseconds, on this machine's CPU.

# %%
def swiglu(rows, w1, w2, w3):
    return F.matmul(F.silu(F.matmul(rows, w1)) * F.matmul(rows, w3), w2)


def every_expert_on_every_token(layer, x):
    weight, index = router(x, layer.w_gate, layer.k)
    gates = F.scatter_add(tm.tensor(np.zeros((x.shape[0], layer.n_experts), np.float32)), index, weight)
    return sum(swiglu(x, layer.w1[e], layer.w2[e], layer.w3[e]) * gates[:, e:e + 1] for e in range(layer.n_experts))


def naive_loop(layer, x):
    weight, index = router(x, layer.w_gate, layer.k)
    expert = lambda e, rows: swiglu(rows, layer.w1[e], layer.w2[e], layer.w3[e])  # noqa: E731
    return tm.moe.dense_moe(x, index, weight, expert, layer.n_experts)


def best_time_ms(fn, layer, x, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        y = fn(layer, x)
        F.sum(y * y).backward()
        best = min(best, time.perf_counter() - start)
    return 1000 * best


sizes = [(256, 8), (1024, 8), (1024, 32)] if FAST else [(1024, 8), (4096, 8), (4096, 32)]
methods = {"every expert on every token": every_expert_on_every_token, "naive loop": naive_loop,
           "yours (sorted dispatch)": lambda layer, x: layer(x)[0]}
print(f"{'N':>5} {'E':>3} " + "".join(f"{m:>29}" for m in [*methods, "library TopKMoE"]))
for n, n_experts in sizes:
    tm.manual_seed(0)
    library = tm.moe.TopKMoE(64, 128, n_experts, 2)
    mine = HandMoE(library)
    x = tm.tensor(np.random.default_rng(0).standard_normal((n, 64)), dtype=np.float32, requires_grad=True)
    times = [best_time_ms(fn, mine, x) for fn in methods.values()]
    times.append(best_time_ms(methods["yours (sorted dispatch)"], library, x))  # same call, library layer
    print(f"{n:>5} {n_experts:>3} " + "".join(f"{t:>26.1f} ms" for t in times))

# %% [markdown]
# - **Every expert on every token** does E/k = 4 times the expert work at E = 8 and is 2.0
#   to 2.8 times slower than your layer (19.9 against 9.8 ms, 92.9 against 33.1 ms); at E = 32
#   it does 16 times the work and is 4.7 times slower (286.6 against 61.5 ms). (Less than the
#   ratio of the work, presumably because its few large matrix products run more efficiently
#   than many small ones, and it skips the dispatch.) This is the saving sparse routing is for,
#   and it grows with E.
# - **Naive loop vs sorted dispatch**: close on a CPU, and the order changes between runs
#   on a busy machine. In this run the naive loop is a little faster at N = 1024 (9.4 against
#   9.8 ms) and yours a little faster at N = 4096 (33.1 against 35.4 ms, 61.5 against 62.7 ms).
#   Both do exactly the same expert matrix products; the naive loop's E mask scans over the
#   N·k slots are cheap next to them at these sizes.
# - **The library** is faster again, most at E = 32 (22.5 against 61.5 ms): it runs your
#   algorithm, but each grouped matrix product is one op with one backward, where your
#   `experts` puts about ten small ops per expert into the autograd graph.
#
# So on a CPU the sort is not what makes an MoE fast. It pays off where the hardware wants
# contiguous work: on a GPU one kernel can run all experts over one sorted buffer (lesson 09),
# and across devices the sorted buffer is exactly what the all-to-all sends (lesson 10).

# %% [markdown]
# ## Exercises
#
# 1. **k = 1.** Build `HandMoE(tm.moe.TopKMoE(32, 64, 8, 1))`, run a batch, call
#    `backward()` on the output alone (no balance loss) and look at `w_gate.grad`. Explain
#    what you see from the renormalisation in step 1. What does the Switch Transformer do
#    instead (lesson 04)?
# 2. **Capacity.** Add a capacity C = ⌈1.25 · N k / E⌉ to your dispatch: slots beyond an
#    expert's first C are dropped (first choices before second choices, in token order),
#    and a dropped slot adds nothing in combine. Compare with
#    `tm.moe.make_plan(index, E, capacity=C)` and its `dropped` mask.
# 3. **One gather instead of a sort?** Write `dispatch` with `np.nonzero(expert_index == e)`
#    per expert followed by one `F.take`. Does it still pass `check_dispatch`? Why, or why
#    not (think about the order inside an expert)?
# 4. **Where does the time go?** Profile `HandMoE` on N = 4096 tokens
#    (`python -m cProfile`, or time each of the five pieces). Which piece dominates, and how
#    does that change with E?

# %% [markdown]
# ## Glossary 术语表
#
# | 中文 | English |
# | --- | --- |
# | 手撕 | writing it by hand, from scratch |
# | 专家 | expert |
# | 路由器 / 门控网络 | router / gating network |
# | 前 k 个 (Top-k) 路由 | top-k routing |
# | 重新归一化 | renormalisation |
# | 分发 | dispatch |
# | 合并 / 加权求和 | combine / weighted sum |
# | 稳定排序 | stable sort |
# | 逆置换 | inverse permutation |
# | 分组矩阵乘 | grouped matrix multiplication (grouped GEMM) |
# | 负载均衡 | load balancing |
# | 辅助损失 | auxiliary loss |
# | 容量因子 | capacity factor |
# | 梯度检查 | gradient check |
