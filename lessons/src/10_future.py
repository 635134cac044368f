# %% [markdown]
# # 10 MoE 的未来: the future of MoE
#
# The last lesson looks at three things that decide where MoE goes next:
#
# 1. **Expert choice** (Zhou et al. 2022): turn routing around, so that each *expert*
#    picks its tokens. Every expert is exactly full by construction; the price is that
#    some tokens get no expert, and that a token's route depends on the other tokens in
#    the batch, including ones that come later in a sentence.
# 2. **Every router of the course on one task**: the 13 named configs of
#    `tinymoe.train.CONFIGS`, trained with the same data, seed and number of steps, in
#    one table and one chart.
# 3. **Expert parallelism**: how experts live on different devices and exchange tokens
#    with two all-to-all steps, simulated with NumPy on 4 "devices", and why capacity and
#    balance decide how fast that exchange is.
#
# We end with a short outlook.
#
# Papers: Zhou, Lei, Liu, Du, Huang, Zhao, Dai, Chen, Le & Laudon (2022), *Mixture-of-Experts
# with Expert Choice Routing* (NeurIPS 2022), section 3 (the routing equations);
# Lepikhin et al. (2020), *GShard* and Fedus, Zoph & Shazeer (2022), *Switch Transformers*,
# for the all-to-all dispatch of expert parallelism. The other configs cite their papers in
# lessons 01-07.

# %%
import math
import os
import time

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import data
from tinymoe import train as T
from tinymoe.tensor import no_grad

F = tm.F
FAST = os.environ.get("TINYMOE_FAST") == "1"
np.set_printoptions(precision=3, suppress=True)
print("fast mode" if FAST else "full mode")

# %% [markdown]
# ## 1. Expert choice: experts pick their tokens
#
# Token choice (every router so far) gives each token its k best experts; the experts get
# whatever arrives, so some overflow and others idle, and we needed balance losses,
# capacities and biases. Expert choice reverses the top-k. With scores
# $S = \mathrm{softmax}(X W_g) \in \mathbb{R}^{n \times e}$ (n tokens, e experts), each expert
# takes its $C$ best tokens from its **column** of $S$:
#
# $$G, I = \mathrm{TopK}(S^\top, C),\qquad P = \mathrm{onehot}(I),\qquad C = \frac{n\,c}{e},$$
#
# where $I[i, j]$ is the j-th token expert i chose, $G[i, j]$ its weight (the score), and
# $c$ the capacity factor: on average a token is processed by $c$ experts (the paper uses
# $c = 2$, like top-2). Token $\ell$'s output sums over the experts that chose it:
#
# $$y_\ell = \sum_{i, j:\ I[i, j] = \ell} G[i, j]\ \mathrm{FFN}_i(x_\ell).$$
#
# No balance loss is needed: every expert gets exactly $C$ tokens. But nothing makes every
# token chosen: a token may get 0, 1, ..., e experts. `tm.moe.ExpertChoiceMoE` implements
# these equations (in the token view, `routing.dropped[n, i]` is True when expert i did not
# pick token n). Here it is on 32 random tokens and 8 experts, with c = 2 and with c = 1:

# %%
n_tokens, n_experts = 32, 8
x = tm.tensor(np.random.default_rng(0).standard_normal((n_tokens, 16)), dtype=np.float32)
chosen = {}
for c in [2.0, 1.0]:
    tm.manual_seed(0)  # the same router weights for both
    layer = tm.moe.ExpertChoiceMoE(d_model=16, d_hidden=32, n_experts=n_experts, capacity_factor=c)
    y, aux = layer(x)
    r = layer.last_routing
    chosen[c] = ~r.dropped                        # (tokens, experts): did expert i take token n?
    per_token = chosen[c].sum(axis=1)
    print(f"c = {c}: capacity C = n c / e = {n_tokens} * {c:g} / {n_experts} = {r.capacity}; aux losses: {aux}")
    print("  tokens taken by each expert:", chosen[c].sum(axis=0))
    print("  experts per token:          ", per_token)
    print(f"  tokens with no expert: {(per_token == 0).sum()} of {n_tokens}; their output rows are all zero:",
          bool(np.all(y.data[per_token == 0] == 0)))

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 5.5), gridspec_kw={"width_ratios": [2.2, 1]})
for (ax1, ax2), (c, picked) in zip(axes, chosen.items(), strict=True):
    ax1.imshow(picked.T, cmap="Greys", aspect="auto", interpolation="nearest")
    ax1.set(xlabel="token", ylabel="expert",
            title=f"c = {c:g}: each expert (row) takes exactly C = {picked.sum(axis=0)[0]} tokens (black)")
    counts = np.bincount(picked.sum(axis=1), minlength=n_experts + 1)
    ax2.bar(np.arange(len(counts)), counts)
    ax2.axvline(c, color="k", ls="--", lw=0.8, label=f"mean = c = {c:g}")
    ax2.set(xlabel="number of experts that chose the token", ylabel="tokens", title=f"Experts per token, c = {c:g}")
    ax2.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Every expert took exactly C tokens (8 with c = 2, 4 with c = 1), and the layer returns
# no auxiliary loss. What varies is the number of experts per token. With c = 2, 8 tokens got
# one expert, 17 two, 6 three and 1 four. With c = 1, 5 of the 32 tokens got no expert at all:
# their output rows are exactly zero, and in a transformer block only the residual connection
# carries them on. (This fresh router gives nearly uniform scores, so with c = 2 every token
# happened to be picked; we look at a trained one in section 2.)

# %% [markdown]
# ### Expert choice and causal language models
#
# The top-C runs over **all the tokens of the batch**. In a causal language model, position
# t must only depend on positions ≤ t; but with expert choice, whether expert i takes token
# t depends on how token t compares with every other token, later ones included. So the
# future leaks into the past through the routing decisions. We test it directly: two
# small untrained LMs (Mixtral-style top-2 and expert choice), one batch, then we change
# only the **last 16 characters of the first sequence** and look at how much the output at
# all *earlier* positions (of every sequence) changes. A causal model must give exactly 0.

# %%
corpus = data.load_corpus("multi_domain", 60_000, seed=0)
inputs, _ = data.random_windows(corpus.val_ids, 8, 64, np.random.default_rng(0))
changed = inputs.copy()
changed[0, -16:] = np.random.default_rng(1).integers(0, corpus.vocab_size, 16)  # a different future

for name in ["mixtral", "expert-choice"]:
    model = T.make_model(T.get_config(name), corpus.vocab_size)
    model.eval()
    with no_grad():
        before, _ = model(inputs)
        after, _ = model(changed)
    diff = np.abs(before.data - after.data).max(axis=-1)   # (batch, position)
    past = diff[:, :-16]                                   # every position before the change
    print(f"{name:14s} largest change at earlier positions: {past.max():.2e}; "
          f"earlier positions that changed: {(past > 0).sum()} of {past.size}, "
          f"in {(past > 0).any(axis=1).sum()} of {len(past)} sequences")

# %% [markdown]
# The top-2 model is causal: changing the future moved none of the 384 earlier outputs
# (positions 0-47 of all 8 sequences), not even by a rounding error. In the expert-choice
# model, 135 of those 384 outputs changed, by up to 0.47 in a logit, and in all 8
# sequences: even the seven sequences we did not touch changed, because they compete with
# sequence 0 for the same experts' C places.
#
# This matters in two ways. In **training**, the model can use information from the
# future of its own sequence (and from other sequences) to decide how to process the
# present: a leak that a causal loss is supposed to rule out. In **decoding**, tokens come
# one at a time, so there is no batch of future tokens to compare with: with n = 1 the
# capacity is C = ⌈1·2/8⌉ = 1 and every expert "chooses" the single token. The
# model then computes something it never did in training:

# %%
tm.manual_seed(0)
layer = tm.moe.ExpertChoiceMoE(d_model=16, d_hidden=32, n_experts=n_experts, capacity_factor=2.0)
with no_grad():
    layer(x[:1])                                         # one token, as in step-by-step decoding
print("experts used by a single token at decode time:", int((~layer.last_routing.dropped).sum()),
      f"of {n_experts} (over a batch: c = 2 on average)")

# %% [markdown]
# Zhou et al. note this themselves as a limitation: the method looks at past and future
# tokens to choose, so it does not carry over directly to auto-regressive generation. Later
# work proposes causal variants, for example per-expert score thresholds estimated during
# training and then applied to each token on its own.

# %% [markdown]
# ## 2. Every router of the course, side by side
#
# Each named config is one family of the course, all on the multi-domain character corpus
# (60 000 characters: arithmetic, brackets, English-like words, DNA), the same seed, the
# same batches and the same number of steps. The transformers have 2 blocks of width 64.
# Most MoE configs have 8 experts of hidden size 128, top-2 unless the paper says top-1
# (DeepSeek splits them into 16 experts of 64 and adds a shared one; MH-MoE's experts work on
# quarter-width sub-tokens). The dense config has one FFN of 256, as wide as two experts: the
# same active parameters as top-2.
# `noisy-topk` is Shazeer et al.'s LSTM model, so it also differs in architecture, and
# `glam` has 4 blocks with MoE in every other one.

# %%
for name, description in T.DESCRIPTIONS.items():
    print(f"{name:14s} {description}")

# %%
STEPS = 15 if FAST else 250
runs, start = {}, time.perf_counter()
for name in T.CONFIGS:
    config = T.get_config(name, steps=STEPS, eval_every=STEPS, eval_batches=8)
    runs[name] = T.train(config, progress=False)
    print(f"{name:14s} done, {time.perf_counter() - start:6.1f} s so far")

# %% [markdown]
# The table. **val loss** and **ppl**: validation cross-entropy (nats per character) and
# perplexity after the last step, on 8 fixed batches. **load CV**: the coefficient of
# variation of the experts' shares of the kept assignments (0 = perfectly balanced), mean
# over the last 20 training steps and the MoE layers. **dropped**: the share of
# (token, choice) slots dropped, by a capacity or by GShard's random second expert; for
# expert choice it counts the (token, expert) pairs an expert did not pick, 1 − c/e = 75%
# by construction, so it is not comparable. **no expert**: the share of validation tokens
# that no expert processed at all (the residual carries them). **dead**: experts that no
# validation token used, summed over MoE layers. **tokens/s**: training speed on this
# machine's CPU, the 90th percentile over the steps (the fast steps are the ones least
# disturbed by other programs on the machine; the speeds are still only rough).

# %%
def no_expert_share(run):
    """Share of tokens (of the last evaluation batch) whose every slot was dropped, over MoE layers."""
    layers = run.model.moe_layers()
    return float(np.mean([r.dropped.all(axis=1).mean() for r in (layer.last_routing for layer in layers)]))


rows = []
for name, run in runs.items():
    last, recent = run.evals[-1], run.history[-20:]
    moe = bool(recent[0]["layers"])
    rows.append({
        "config": name, "val": last["val_loss"], "ppl": last["perplexity"],
        "cv": np.mean([T.load_cv(l["load"]) for h in recent for l in h["layers"]]) if moe else np.nan,
        "drop": np.mean([l["drop_rate"] for h in recent for l in h["layers"]]) if moe else np.nan,
        "none": no_expert_share(run) if moe else np.nan,
        "dead": sum(last["dead_experts"]) if moe else 0,
        "experts": sum(layer.n_experts for layer in run.model.moe_layers()),
        "tok_s": np.percentile([h["tokens_per_s"] for h in run.history], 90),
    })

print(f"{'config':<14}{'val loss':>9}{'ppl':>7}{'load CV':>9}{'dropped':>9}{'no expert':>10}{'dead':>9}{'tokens/s':>10}")
for row in sorted(rows, key=lambda row: row["val"]):
    fmt = lambda v, f: "-" if np.isnan(v) else format(v, f)  # noqa: E731
    dead = f"{row['dead']}/{row['experts']}" if row["experts"] else "-"
    print(f"{row['config']:<14}{row['val']:>9.3f}{row['ppl']:>7.2f}{fmt(row['cv'], '.3f'):>9}"
          f"{fmt(row['drop'], '.1%'):>9}{fmt(row['none'], '.1%'):>10}{dead:>9}{row['tok_s']:>10.0f}")

# %%
order = sorted(rows, key=lambda row: row["val"])
names = [row["config"] for row in order]
colors = ["tab:gray" if n == "dense" else "tab:orange" if n == "expert-choice" else "tab:blue" for n in names]
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
axes[0].barh(names, [row["val"] for row in order], color=colors)
axes[0].set(xlabel="validation loss (nats per character)", title=f"Quality after {STEPS} steps (lower is better)")
axes[0].set_xlim(min(row["val"] for row in order) - 0.05, max(row["val"] for row in order) + 0.02)
axes[1].barh(names, [0 if np.isnan(row["cv"]) else row["cv"] for row in order], color=colors)
axes[1].set(xlabel="load CV (0 = balanced)", title="Expert load balance")
axes[2].barh(names, [row["tok_s"] / 1000 for row in order], color=colors)
axes[2].set(xlabel="training speed (thousand tokens per second, CPU)", title="Speed")
for ax in axes:
    ax.invert_yaxis()
fig.tight_layout()
plt.show()

# %% [markdown]
# How large is a difference between two rows? One way to see it: train one config again
# with other seeds. A seed here changes the initial weights, the order of the batches and
# the corpus itself (a fresh sample of the same four domains).

# %%
seed_losses = [runs["mixtral"].evals[-1]["val_loss"]]
for seed in [1] if FAST else [1, 2]:
    config = T.get_config("mixtral", steps=STEPS, eval_every=STEPS, eval_batches=8, seed=seed)
    seed_losses.append(T.train(config, progress=False).evals[-1]["val_loss"])
print("mixtral, validation loss by seed:", np.round(seed_losses, 3),
      f" spread (max - min) = {max(seed_losses) - min(seed_losses):.3f}")

# %% [markdown]
# And expert choice after training: how many experts did each validation token get?

# %%
for i, moe_layer in enumerate(runs["expert-choice"].model.moe_layers()):
    per_token = (~moe_layer.last_routing.dropped).sum(axis=1)
    share = np.bincount(per_token, minlength=n_experts + 1) / len(per_token)
    print(f"layer {i}: share of tokens with 0, 1, 2, ..., 8 experts:", share.round(3),
          f" mean {per_token.mean():.2f}")

# %% [markdown]
# What the table shows, and what it does not:
#
# - **Quality.** The transformers end between 1.640 (xmoe) and 1.715 (mh-moe) nats
#   per character, the dense model at 1.675. But mixtral alone moves from 1.644 to 1.691 and
#   1.659 with seeds 1 and 2: a spread of 0.047, as large as most gaps in the first column.
#   After 250 steps on a 60 000-character toy corpus, this table does **not** rank the
#   transformer routers, and MoE is not yet clearly ahead of the dense model with the same
#   active parameters. The gains the papers report come with far more data, steps and experts.
#   Only the LSTM model of 2017 (noisy-topk, 1.813) is clearly behind, most likely because of
#   its architecture (the only one that is not a transformer) rather than its router.
# - **Expert choice** has load CV exactly 0.000: every expert is always full. Zhou et al.
#   report training convergence more than twice as fast as Switch's top-1 and GShard's top-2
#   gating, at their scale (models of up to billions of parameters); here it ties GShard (1.679
#   against 1.678), is ahead of Switch (1.713) and behind Mixtral (1.644), all within the seed
#   spread: the mechanism reproduces, the speed-up claim cannot be tested at this size. After
#   training, no validation token of this batch went without an expert in either layer; about a third
#   got one expert, 38-39% two, 22-28% three and a few four or five (mean exactly c = 2).
# - **Drops.** Top-1 with capacity factor 1.25 (switch, st-moe) drops 8-9% of the slots in
#   training and leaves 10-11% of the validation tokens without an expert. GShard drops 24.7%
#   of its slots in training, by random routing (a second expert with a small weight is
#   skipped, in training only) and by its capacity factor of 1.0; on validation just 0.2% of
#   the tokens lost both experts. GLaM (capacity factor 2.0) leaves no validation token behind.
# - **Balance.** The balance losses (and DeepSeek-V3's bias) keep every token-choice
#   transformer between CV 0.16 and 0.41, and no expert died in any run; noisy-topk's two losses give the flattest load of all (0.058).
# - **Speed** (rough: measured on a CPU shared with other jobs). The top-1 configs, switch and
#   st-moe, are the fastest at 47.9-48.1 thousand tokens/s, about 30% faster than the dense
#   model (37.0 thousand): their single expert has half the dense FFN's FLOPs, and the saving
#   shows, though not in full, presumably because the FFN is only part of each step and the
#   steps around the experts (routing, sorting, gathering) cost something too. The other MoE
#   configs run at 33.8-37.6 thousand, about the dense model's speed, GLaM (twice the blocks)
#   at 18.3 thousand and the LSTM (a Python loop over time steps) at 17.3 thousand.

# %% [markdown]
# ## 3. Expert parallelism: experts on different devices
#
# Large MoE models do not fit on one device: the experts are spread out, e.g. 8 experts
# on 4 devices, 2 each, while every device also holds its own share of the batch (data
# parallelism for everything else). One MoE layer then runs in five steps (GShard, Switch):
#
# 1. **route + dispatch** (local): each device routes its tokens and sorts the (token,
#    choice) slots by expert, exactly as in lesson 08. Because experts are numbered device by
#    device, the sorted buffer is also grouped by **destination device**.
# 2. **all-to-all** #1: device s sends its block for device t to device t, for every pair.
# 3. **experts** (local): each device runs its experts on the rows it received.
# 4. **all-to-all** #2: the answers go back the same way, transposed.
# 5. **combine** (local): each device puts the answers back in token order and weights them.
#
# Below, 4 "devices" are just 4 lists of NumPy arrays and "sending" is handing an array
# over; we count the bytes that would cross between every pair of devices.

# %%
N_DEV, E, D, K, TOKENS = 4, 8, 64, 2, 1024        # 1024 tokens per device, float32 rows
EXPERTS_PER_DEV = E // N_DEV
owner = np.arange(E) // EXPERTS_PER_DEV           # expert -> the device that holds it
rng = np.random.default_rng(0)
W_expert = rng.standard_normal((E, D, D)) / math.sqrt(D)   # a small expert: tanh(x W_e)


def route(logits, k=K):
    """Softmax, top-k, renormalise (NumPy): (N, E) logits -> (N, k) index, (N, k) weight."""
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    index = np.argsort(-p, axis=1, kind="stable")[:, :k]
    weight = np.take_along_axis(p, index, axis=1)
    return index, weight / weight.sum(axis=1, keepdims=True)


def expert_parallel_moe(xs, indices, weights):
    """One MoE layer over N_DEV devices. Returns every device's output and the bytes sent."""
    sent = np.zeros((N_DEV, N_DEV))
    outbox, orders = {}, []
    for s in range(N_DEV):                                        # 1. route + dispatch, on device s
        flat = indices[s].reshape(-1)
        order = np.argsort(flat, kind="stable")                   # slots sorted by expert
        rows, row_expert = xs[s][order // K], flat[order]
        orders.append(order)
        for t in range(N_DEV):
            to_t = owner[row_expert] == t
            outbox[s, t] = (rows[to_t], row_expert[to_t])
            sent[s, t] = rows[to_t].nbytes
    inbox = {(t, s): outbox[s, t] for s in range(N_DEV) for t in range(N_DEV)}   # 2. all-to-all
    answers = {}
    for (t, s), (rows, row_expert) in inbox.items():              # 3. experts, on device t
        out = np.empty_like(rows)
        for e in np.unique(row_expert):
            mine = row_expert == e
            out[mine] = np.tanh(rows[mine] @ W_expert[e])
        answers[s, t] = out                                       # 4. all-to-all back to s
    ys = []
    for s in range(N_DEV):                                        # 5. combine, on device s
        back = np.concatenate([answers[s, t] for t in range(N_DEV)])  # device order = sorted order
        row_of_slot = np.empty_like(orders[s])
        row_of_slot[orders[s]] = np.arange(len(orders[s]))
        ys.append(np.einsum("nk,nkd->nd", weights[s], back[row_of_slot].reshape(len(xs[s]), K, D)))
    return ys, sent


def single_device_moe(x, index, weight):
    """The same layer on one device: the naive loop of lesson 08."""
    y = np.zeros_like(x)
    for e in range(E):
        token, choice = np.nonzero(index == e)
        np.add.at(y, token, weight[token, choice, None] * np.tanh(x[token] @ W_expert[e]))
    return y


W_router = rng.standard_normal((D, E)) / math.sqrt(D)
xs = [rng.standard_normal((TOKENS, D)).astype(np.float32) for _ in range(N_DEV)]
balanced = [route(x @ W_router) for x in xs]
ys, sent_balanced = expert_parallel_moe(xs, [r[0] for r in balanced], [r[1] for r in balanced])
error = max(np.abs(y - single_device_moe(x, *r)).max() for x, y, r in zip(xs, ys, balanced, strict=True))
print(f"expert-parallel result vs one device: max |difference| = {error:.1e}")
print("MB sent from device (row) to device (column), first all-to-all:\n", sent_balanced / 1e6)

# %% [markdown]
# Now the same layer with a **skewed** router: we add +1.5 to the logits of experts 0 and 1,
# which both live on device 0, as a router does when it has started to collapse onto
# favourite experts. The total traffic is the same (every token still sends k = 2 rows),
# but it piles up on one device.

# %%
skew = np.zeros(E)
skew[[0, 1]] = 1.5
skewed = [route(x @ W_router + skew) for x in xs]
_, sent_skewed = expert_parallel_moe(xs, [r[0] for r in skewed], [r[1] for r in skewed])

fig, axes = plt.subplots(1, 2, figsize=(10, 4))
vmax = max(sent_balanced.max(), sent_skewed.max()) / 1e6
for ax, (title, sent) in zip(axes, [("balanced router", sent_balanced), ("skewed router", sent_skewed)], strict=True):
    image = ax.imshow(sent / 1e6, cmap="viridis", vmin=0, vmax=vmax)
    for (s, t), value in np.ndenumerate(sent / 1e6):
        ax.text(t, s, f"{value:.2f}" + ("\n(local)" if s == t else ""), ha="center", va="center",
                color="w" if value < 0.6 * vmax else "k", fontsize=8)
    ax.set(xlabel="to device", ylabel="from device", title=f"All-to-all bytes (MB), {title}",
           xticks=range(N_DEV), yticks=range(N_DEV))
fig.colorbar(image, ax=axes, label="MB per layer, one direction")
plt.show()

for title, sent in [("balanced", sent_balanced), ("skewed", sent_skewed)]:
    received = sent.sum(axis=0)
    print(f"{title:9s} MB received per device: {received / 1e6}  busiest / mean = {received.max() / received.mean():.2f}")

# %% [markdown]
# The expert-parallel layer gives the same output as the one-device loop (largest
# difference 8.5e-08, float32 rounding). With the balanced router every pair of devices
# exchanges 0.12-0.14 MB, a quarter of each device's rows stays local, and every device
# receives 0.51-0.54 MB (busiest / mean = 1.03). With the skewed router the total is the
# same but device 0 receives 1.35 MB, 2.58 times the mean, and the others 0.22-0.26 MB. An
# all-to-all is over only when its busiest device is, and device 0 then also has about 2.6
# times the expert work: the three other devices wait. Balance is not only about quality;
# it sets the speed of the whole machine.
#
# ### Capacity: fixed-size buffers
#
# Real systems (GShard and Switch on TPUs, and many GPU codes) want static shapes: every
# device sends every expert a buffer of exactly C rows, C = ⌈capacity factor · k · N / E⌉ with
# N the device's tokens. Short buffers are padded with zeros; slots beyond C are
# **dropped** (the residual carries them). So the all-to-all always moves
# E · C · d · 4 bytes per device, whatever the routing, and the capacity factor trades
# bytes and compute (padding) against dropped tokens. We use the library's `make_plan` for
# the drops.

# %%
print(f"{'router':<10}{'capacity factor':>16}{'MB sent per device':>20}{'of which padding':>18}{'dropped slots':>15}")
for title, routed in [("balanced", balanced), ("skewed", skewed)]:
    for factor in [1.0, 1.25, 2.0]:
        cap = tm.moe.capacity(factor, TOKENS, E, K)
        plans = [tm.moe.make_plan(index, E, capacity=cap) for index, _ in routed]
        kept = np.mean([plan.counts.sum() for plan in plans])
        sent_mb = E * cap * D * 4 / 1e6
        print(f"{title:<10}{factor:>16}{sent_mb:>20.2f}{1 - kept / (E * cap):>18.1%}"
              f"{np.mean([plan.dropped.mean() for plan in plans]):>15.1%}")

# %% [markdown]
# With the balanced router, capacity factor 1.0 already drops 2.6% of the slots (random
# fluctuations overflow some experts) and 1.25 drops none, at the price of 20% padding in what
# is sent. The skewed router overflows experts 0 and 1: at 1.25 a third of the slots (33.3%)
# are dropped, and even with buffers twice the average size (2.0, where 57% of the bytes sent
# are padding) 14.5% are still dropped. An unbalanced router wastes bandwidth and drops tokens
# at the same time; a balanced one lets the capacity factor stay near 1. That is why every
# token-choice design in this course carries a balance mechanism, and why the exact balance of
# expert choice is attractive in spite of its causality problem.

# %% [markdown]
# ## Outlook
#
# Some directions the field has taken since the papers of this course, each in one line and
# each only as far as we can vouch for it (we did not reproduce any of them here):
#
# - **Sparse upcycling** (Komatsuzaki et al. 2023, *Sparse Upcycling: Training
#   Mixture-of-Experts from Dense Checkpoints*, ICLR): start an MoE from a trained dense
#   model by copying its FFN into every expert and adding a fresh router, then keep
#   training, instead of training the MoE from scratch.
# - **Soft routing and merging experts**: Soft MoE (Puigcerver et al. 2024, *From Sparse to
#   Soft Mixtures of Experts*, ICLR) gives every expert slot a weighted average of all tokens,
#   so nothing is dropped and nothing is discrete (like expert choice, it mixes the tokens of
#   a sequence, which its authors name as an obstacle for causal decoders). Other work merges
#   experts' weights: per input, averaged with the router's weights (SMEAR: Muqeeth, Liu &
#   Raffel 2023, *Soft Merging of Experts with Adaptive Routing*), or after training, to
#   shrink a model whose experts have grown alike (Li et al. 2024, *Merge, Then Compress*).
# - **Causal routing without a balance loss**: expert choice balanced the load perfectly but
#   broke causality (section 1); DeepSeek-V3's bias (lesson 06) balances token choice without
#   an auxiliary loss. Routing that is causal and balanced by construction at the same time
#   is still being worked on.
# - **Systems**: as section 3 shows, a trained MoE is as fast as its all-to-all and its
#   busiest device: device-limited routing (DeepSeek-V2, lesson 06), capacity, and kernels
#   that overlap communication with computation matter as much as the router's math.

# %% [markdown]
# ## Exercises
#
# 1. **Capacity factor of expert choice.** Train `expert-choice` with
#    `layer_args={"capacity_factor": c}` for c in 0.5, 1, 2 (same steps as above). How do the
#    validation loss, the speed and the share of tokens with no expert change? Zhou et al.
#    report that even c = 1 beat Switch's top-1 at their scale: do you see that here?
# 2. **Upcycling.** Train the `dense` config, then build a `TopKMoE`-style layer with
#    `activation="gelu"` experts (`tm.moe.Experts(8, 64, 256, "gelu", bias=True)`) whose
#    every expert is a copy of the trained FFN, and a fresh router. Before any further
#    training, how does its loss compare with the dense model's? (Hint: the top-2 weights sum
#    to 1.) Then continue training it.
# 3. **More devices.** Repeat the expert-parallel simulation with 8 devices of 1 expert each.
#    How do the busiest-device ratio and the drops at capacity factor 1.25 change under the
#    skewed router?
# 4. **Seeds.** Repeat the side-by-side table with `seed=1` and `seed=2` for three configs of
#    your choice. Which differences in the table are larger than the spread between seeds?

# %% [markdown]
# ## Glossary 术语表
#
# | 中文 | English |
# | --- | --- |
# | 专家选择路由 | expert choice routing |
# | 令牌选择路由 | token choice routing |
# | 容量因子 | capacity factor |
# | 负载均衡 | load balancing |
# | 丢弃的令牌 | dropped token |
# | 因果性 / 信息泄露 | causality / information leak |
# | 自回归解码 | auto-regressive decoding |
# | 专家并行 | expert parallelism |
# | 数据并行 | data parallelism |
# | 全对全通信 (All-to-All) | all-to-all communication |
# | 分发 / 合并 | dispatch / combine |
# | 稀疏升级 (Upcycling) | sparse upcycling |
# | 专家合并 | expert merging |
# | 困惑度 | perplexity |
