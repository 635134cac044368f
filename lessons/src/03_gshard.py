# %% [markdown]
# # 03 · Transformer 时代: GShard (2020)
#
# **Paper.** D. Lepikhin, H. Lee, Y. Xu, D. Chen, O. Firat, Y. Huang, M. Krikun, N. Shazeer
# and Z. Chen (2020), *GShard: Scaling Giant Models with Conditional Computation and
# Automatic Sharding*, arXiv:2006.16668 (ICLR 2021).
#
# **The idea in plain words.** GShard puts the sparse MoE of lesson 02 into a Transformer
# (every other feed-forward layer becomes an MoE layer) and spreads the experts over
# thousands of TPU cores. On hardware, every tensor needs a fixed shape, so each expert gets
# a fixed-size buffer: its **expert capacity** (专家容量). The gating is rewritten around that:
#
# - each token picks its **top-2** experts, with gate values $g_1, g_2$ normalised to sum to 1;
# - each expert accepts at most $C$ tokens per group; the rest **overflow** and are dropped
#   (溢出 / 丢弃): the residual connection carries them past the layer unchanged;
# - first choices are served before second choices, so a token loses its *main* expert only
#   when that expert is full of other tokens' first choices;
# - the second expert is used only with probability $2 g_2$ (**random routing**, 随机路由): a
#   second expert with a tiny weight barely changes the output and is not worth a buffer slot;
# - an auxiliary loss keeps the experts evenly loaded, so few tokens overflow.
#
# **What this lesson implements.** The top-2 gating with capacity and random routing of the
# paper's Algorithm 1 (`tm.moe.GShardRouter`), the dispatch plan that turns the decisions into
# buffers (`tm.moe.make_plan`), and the auxiliary loss $\ell_{aux}$ of section 2.2; then
# experiments on how many tokens are dropped at each capacity factor.

# %%
import dataclasses
import os

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import data, train
from tinymoe.moe import losses

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: short trainings
STEPS = 60 if FAST else 800
SEEDS = [0] if FAST else [0, 1]  # seeds of the capacity-factor comparison (section 6)
np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## 1. Top-2 gating, capacity and random routing
#
# For a group of $S$ tokens and $E$ experts, the router computes $g_s = \mathrm{softmax}(x_s W_g)$
# for every token $s$. Then:
#
# $$g_1, e_1, g_2, e_2 = \mathrm{top2}(g_s), \qquad g_1 \leftarrow \frac{g_1}{g_1 + g_2}, \quad g_2 \leftarrow \frac{g_2}{g_1 + g_2}$$
#
# (normalised **before** anything is dropped: a token that loses one expert keeps its
# other weight as it was, it is not renormalised to 1). Every expert has a capacity
#
# $$C = \left\lceil \text{capacity\_factor} \cdot \frac{2S}{E} \right\rceil ,$$
#
# where $2S/E$ is the load of a perfectly balanced top-2 layer. The second expert is kept
# only if $2 g_2 > u$, $u \sim U(0, 1)$, so with probability $2 g_2 \le 1$.
#
# A hand-made batch makes each rule visible: $S = 8$ tokens, $E = 4$ experts. We set
# $W_g$ to the identity, so each token *is* its own router logits, and choose the logits so
# that five tokens want expert 0 first. The uniform draws are an argument (`uniform=`), so
# the example is the same at every run.

# %%
E = 4
logits = np.array([
    [2.0, 1.0, 0.0, -1.0],  # token 0: expert 0, then 1
    [2.0, -1.0, 1.5, 0.0],  # token 1: expert 0, then 2
    [3.0, 0.2, 0.0, 0.0],   # token 2: expert 0 by far; a tiny second choice
    [1.5, 0.0, 0.0, 1.2],   # token 3: expert 0, then 3
    [2.5, 2.0, 0.0, 0.0],   # token 4: expert 0 (the fifth one!), then 1
    [0.0, 2.0, 1.8, 0.0],   # token 5: expert 1, then 2
    [1.0, 2.0, 0.0, 0.0],   # token 6: expert 1, then 0
    [0.0, 0.0, 2.0, 1.9],   # token 7: expert 2, then 3
], dtype=np.float32)
S = len(logits)
u = np.array([0.3, 0.6, 0.9, 0.2, 0.1, 0.4, 0.5, 0.8])  # one uniform draw per token

router = tm.moe.GShardRouter(E, E, capacity_factor=1.0)
router.w_gate.data = np.eye(E, dtype=np.float32)
routing = router(tm.tensor(logits), uniform=u)
print("softmax gates g:\n", routing.probs.numpy())
print("capacity C = ceil(1.0 * 2 * 8 / 4) =", routing.capacity)

# %% [markdown]
# Now the same steps by hand: top-2, normalise, random routing, then capacity.

# %%
g = routing.probs.numpy()
order = np.argsort(-g, axis=1, kind="stable")
e1, e2 = order[:, 0], order[:, 1]
g1, g2 = g[np.arange(S), e1], g[np.arange(S), e2]
g1, g2 = g1 / (g1 + g2), g2 / (g1 + g2)  # normalised before dropping
keep_second = 2 * g2 > u  # random routing
print("e1:", e1, "  e2:", e2)
print("g1:", g1, "\ng2:", g2)
print("2*g2 > u: ", keep_second)

# %% [markdown]
# Capacity: walk through the first choices in token order, then through the second
# choices in token order, and give each expert at most $C$ slots. A second choice dropped
# by random routing takes no slot.

# %%
C = routing.capacity
filled = np.zeros(E, int)
dropped = np.zeros((S, 2), bool)
for choice, experts, wanted in [(0, e1, np.ones(S, bool)), (1, e2, keep_second)]:
    for s in range(S):
        if not wanted[s]:
            dropped[s, choice] = True  # random routing said no
        elif filled[experts[s]] < C:
            filled[experts[s]] += 1
        else:
            dropped[s, choice] = True  # the expert is full
print("slots used per expert:", filled)
print("dropped (by hand):\n", dropped.astype(int))
print("same as the router:", bool((dropped == routing.dropped).all()))
print("router's combine weights (0 where dropped):\n", routing.weight.numpy())

# %% [markdown]
# Each rule shows up once:
#
# - **Token 4** wanted expert 0 first, but tokens 0-3 had filled its 4 slots: its first choice
#   is dropped. Its second choice (expert 1) is kept, with its normalised weight $0.378$, not 1.
# - **Token 6**'s second choice is expert 0, full since the first-choice pass: dropped.
# - **Token 2**'s second gate is tiny ($g_2 = 0.057$, so $2g_2 = 0.11 < u = 0.9$): random
#   routing skips it, and it takes no slot of expert 1.
#
# ## 2. The dispatch plan
#
# The layer turns these decisions into buffers: `make_plan` sorts the (token, choice)
# slots by expert (a stable counting sort: inside an expert, first choices in token order,
# then second choices), gives each kept slot a row of a padded $(E \cdot C, d)$ buffer
# (expert $e$'s rows start at $e \cdot C$), and marks the rest $-1$.

# %%
plan = tm.moe.make_plan(routing.expert_index, E, routing.capacity, routing.dropped)
print("counts (rows used per expert):", plan.counts)
print("offsets (where each expert's kept slots start if packed back to back):", plan.offsets)
print("buffer rows = E * C =", plan.n_rows)
print("row of each (token, choice) slot, -1 = dropped:\n", plan.row)
for e in range(E):
    slots = [(s, c) for s in range(S) for c in range(2) if e * C <= plan.row[s, c] < (e + 1) * C]
    slots.sort(key=lambda sc: plan.row[sc])
    print(f"expert {e}: rows {e * C}..{(e + 1) * C - 1} hold (token, choice) {slots}")

# %% [markdown]
# Expert 3 uses 2 of its 4 rows and expert 0 is full: unused rows are padding (zeros), the
# price of fixed shapes. The layer then runs `permute` (copy tokens into the buffer), the
# experts (one batched matmul over $(E, C, d)$), and `unpermute` (weighted sum back per token).
#
# ## 3. The auxiliary loss
#
# With $c_e$ the number of tokens whose **first** choice is $e$ (counted before any drop) and
# $m_e = \frac1S \sum_s g_{s,e}$ the mean gate of expert $e$, GShard's balance loss is
#
# $$\ell_{aux} = E \sum_{e=1}^{E} \frac{c_e}{S}\, m_e .$$
#
# $c_e/S$ is a count, with no gradient: it only says which experts are overloaded. The
# gradient flows through $m_e$, and pushes down the mean gate of the busy experts. At
# perfect balance $c_e/S = m_e = 1/E$ and $\ell_{aux} = 1$. (The formula printed in the paper
# averages over experts, $\frac1E\sum_e$, which is $1/E^2$ at balance; the $E\sum_e$ scaling
# used here, as in GShard's code, is 1 at balance for any $E$: see the table in
# `tinymoe.moe.losses`.)

# %%
c = np.bincount(e1, minlength=E)
m = g.mean(axis=0)
print("first-choice counts c_e:", c, "  mean gates m_e:", m)
print("by hand: E * sum(c/S * m) =", E * np.sum(c / S * m))
print("losses.load_balancing_loss(probs, first choices):",
      losses.load_balancing_loss(routing.probs, routing.expert_index[:, :1], E).item())
layer = tm.moe.GShardMoE(E, 8, E, capacity_factor=1.0)  # its aux: aux_weight (0.01) times the loss
layer.router.w_gate.data = np.eye(E, dtype=np.float32)
_, aux = layer(tm.tensor(logits), uniform=u)
print("GShardMoE aux:", {name: round(v.item(), 5) for name, v in aux.items()})

# %% [markdown]
# ## 4. Experiment: how many tokens overflow at each capacity factor?
#
# We train the named config `"gshard"` of `tinymoe.train` (a 2-block Transformer with a
# GShard layer of 8 GELU experts in each block, capacity factor 1.0, aux weight 0.01), made
# smaller: width 32, experts of hidden width 64, windows of 32 characters, 16 windows per
# step. One group is one batch: $S = 512$ tokens, so at capacity factor 1 each expert takes
# $C = 2 \cdot 512 / 8 = 128$ slots.
#
# Then we take the tokens that reach the **first** MoE layer (after the embeddings,
# attention and layer norm of block 1) on a validation batch, and route them at capacity
# factors from 0.5 to 2.5, with the router of the trained model and with the same model at
# initialisation. The inputs of the first layer do not depend on
# the capacity factor, so only the routing changes.

# %%
base = train.get_config("gshard", steps=STEPS, d_model=32, d_hidden=64, context=32,
                        eval_every=max(STEPS // 5, 1), eval_batches=16)
corpus = data.load_corpus(base.corpus, base.corpus_chars, seed=base.seed)
runs = {(1.0, 0): train.train(base, progress=False)}  # (capacity factor, seed) -> run
print(train.summary_table(runs[1.0, 0]))


def first_moe_inputs(model, ids):
    """The (tokens, d) rows the first MoE layer sees: embeddings -> attention -> norm."""
    x = model.tokens(ids) + model.positions(np.arange(ids.shape[1]))
    block = model.blocks[0]
    x = x + block.attn(block.norm1(x))
    return tm.F.reshape(block.norm2(x), (-1, x.shape[-1]))


ids, _ = data.random_windows(corpus.val_ids, base.batch_size, base.context, np.random.default_rng(1))
untrained = train.make_model(base, corpus.vocab_size)  # same seed: the weights training started from
with tm.no_grad():
    tokens = {"initialisation": first_moe_inputs(untrained, ids),
              "trained": first_moe_inputs(runs[1.0, 0].model, ids)}
routers = {"initialisation": untrained.blocks[0].ffn.router, "trained": runs[1.0, 0].model.blocks[0].ffn.router}
print("tokens per group S =", tokens["trained"].shape[0])

# %% [markdown]
# To separate the two reasons a slot is dropped, route each group twice with the same
# uniform draws: without capacity (only random routing drops second choices) and with it.
# A *capacity drop* is a slot dropped only in the second case.

# %%
FACTORS = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5]
u_val = np.random.default_rng(2).random(tokens["trained"].shape[0])


def capacity_drops(router, x, factor, uniform):
    """(share of first choices dropped, share of surviving second choices dropped, share of tokens with no expert)."""
    router.capacity_factor = None
    random_only = router(x, uniform=uniform).dropped
    router.capacity_factor = factor
    routing = router(x, uniform=uniform)
    by_capacity = routing.dropped & ~random_only
    second_offered = ~random_only[:, 1]
    return (by_capacity[:, 0].mean(), by_capacity[:, 1].sum() / max(second_offered.sum(), 1),
            routing.dropped.all(axis=1).mean())


sweep = {}
with tm.no_grad():
    for name in routers:
        sweep[name] = np.array([capacity_drops(routers[name], tokens[name], f, u_val) for f in FACTORS])
        routers[name].capacity_factor = 1.0  # back to the config's value
        first = routers[name](tokens[name], uniform=u_val).expert_index[:, 0]
        print(f"{name:>14}: first choices per expert {np.bincount(first, minlength=8)}")
print(f"\n{'factor':>6} {'C':>4} | {'first dropped':>14} {'2nd dropped':>12} {'no expert':>10} (initialisation)"
      f" | {'first dropped':>14} {'2nd dropped':>12} {'no expert':>10} (trained)")
for i, f in enumerate(FACTORS):
    cap = tm.moe.capacity(f, tokens["trained"].shape[0], 8, 2)
    a, b = sweep["initialisation"][i], sweep["trained"][i]
    print(f"{f:>6} {cap:>4} | {a[0]:>14.1%} {a[1]:>12.1%} {a[2]:>10.1%}                  "
          f" | {b[0]:>14.1%} {b[1]:>12.1%} {b[2]:>10.1%}")

# %% [markdown]
# Why is the untrained router so lopsided? Compare, for each expert, the mean of its logit
# over the 512 tokens with how much that logit varies from token to token:

# %%
with tm.no_grad():
    init_logits = routers["initialisation"].logits(tokens["initialisation"]).numpy()
print("initialisation, mean logit per expert:  ", init_logits.mean(axis=0))
print("initialisation, std over tokens:        ", init_logits.std(axis=0))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
for ax, column, title in [(axes[0], 0, "first choices dropped"),
                          (axes[1], 1, "second choices dropped (of those random routing kept)")]:
    for name, style in [("initialisation", "s--"), ("trained", "o-")]:
        ax.plot(FACTORS, 100 * sweep[name][:, column], style, label=name)
    ax.set(xlabel="capacity factor", ylabel="dropped by capacity (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
fig.suptitle("GShard layer 1 on a validation batch (S = 512 tokens, 8 experts)")
fig.tight_layout()
plt.show()

# %% [markdown]
# **What the sweep shows.** A random router is not a balanced router. At initialisation the
# logits of each expert have an offset shared by all tokens (expert 3: mean 1.51) that is
# larger than their spread from token to token (0.39-0.94), so most tokens agree: 320 of the
# 512 first choices go to expert 3. At factor 1 ($C = 128$) 37.5% of the first choices
# overflow and 32.4% of the tokens get no expert at all; only at factor 2.5 ($C = 320$) do
# all first choices fit, and even then 22.3% of the second choices are dropped.
#
# After 800 steps with the balance loss, the first choices are spread over all 8 experts
# (35 to 109 each). From factor 1.0 up no first choice overflows (3.5% at 0.75); second
# choices need more room: 41.4% of those sent overflow at factor 1.0, 11.7% at 1.25 and none
# from 1.5 on. Factor 0.5 is special: the buffers have $8 \times 64 = 512$ rows, one per
# token, for up to 1024 (token, choice) slots, so at least half of the slots are dropped
# whatever the router does (here 17.8% of the first choices and 82.1% of the second).
# Balanced routing is what makes a small capacity factor possible; our factor 1 is the
# load of a perfectly balanced top-2 layer, $2S/E$ rows per expert.
#
# ## 5. Random routing: how many second experts are used?
#
# Random routing keeps the second expert with probability $2 g_2$ (after normalisation
# $g_2 \le 1/2$). How large are the trained router's second gates? And what does random
# routing save, compared with always sending the second choice (`second_policy="all"`)?

# %%
router = routers["trained"]
with tm.no_grad():
    routing = router(tokens["trained"], uniform=u_val)
g2 = routing.probs.numpy()[np.arange(len(u_val)), routing.expert_index[:, 1]]
g1 = routing.probs.numpy()[np.arange(len(u_val)), routing.expert_index[:, 0]]
g2 = g2 / (g1 + g2)
sent = 2 * g2 > u_val  # the second choices random routing keeps (before capacity)
print(f"mean normalised g2 = {g2.mean():.3f};  expected share of second experts kept, mean(2 g2) = "
      f"{np.mean(2 * g2):.1%};  kept in this draw: {sent.mean():.1%}")

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(g2, bins=25, range=(0, 0.5))
ax.set(xlabel="normalised second gate $g_2$ (kept with probability $2g_2$)", ylabel="tokens",
       title="Trained GShard router: second gates on a validation batch")
fig.tight_layout()
plt.show()

# %%
print(f"{'policy':>7} {'factor':>6} | {'2nd sent':>9} {'2nd kept':>9} {'mean g2 of kept 2nd':>20} {'g2 mass kept':>13} "
      f"{'experts/token':>14} {'buffer used':>12}")
for policy in ["all", "random"]:
    router.second_policy = policy
    for f in [1.0, 1.25, 2.0]:
        router.capacity_factor = f
        with tm.no_grad():
            kept = ~router(tokens["trained"], uniform=u_val).dropped
        second_sent = sent.mean() if policy == "random" else 1.0
        g2_kept = g2[kept[:, 1]].mean()  # the average weight of the second experts that run
        g2_mass = (g2 * kept[:, 1]).sum() / g2.sum()  # share of the total second-gate weight that is used
        buffer = 8 * tm.moe.capacity(f, len(u_val), 8, 2)  # E * C rows
        print(f"{policy:>7} {f:>6} | {second_sent:>9.1%} {kept[:, 1].mean():>9.1%} {g2_kept:>20.3f}"
              f" {g2_mass:>13.1%} {kept.sum(axis=1).mean():>14.2f} {kept.sum() / buffer:>12.1%}")
router.second_policy, router.capacity_factor = "random", 1.0

# %% [markdown]
# **What random routing does.** The trained router's second gates cover the whole range,
# with many tokens near $g_2 = 0.5$ (two experts about equally good) and a second group
# around 0.1-0.2. Their mean is 0.314, so random routing sends 62.7% of the second choices
# on average (63.3% in this draw). First choices are never affected: they are served first.
# Compared with sending every second choice (`all`):
#
# - at factor 1.25, random routing runs 1.56 experts per token instead of 1.73 and fills
#   62.3% of the buffers instead of 69.3%, yet keeps the same share of the total second-gate
#   weight (68.4% in both): the second experts it skips are the ones with small weights
#   (the kept ones average $g_2 = 0.384$, against 0.293 with `all`);
# - at factor 1.0, `all` keeps more second experts (54.5% against 37.1%) and a little more
#   gate weight (46.6% against 42.3%), but which ones overflow is decided by token order, not
#   by weight (the kept ones average 0.268, below the overall mean of 0.314);
# - with room for everything (factor 2.0), random routing keeps 78.2% of the second-gate
#   weight and saves 18% of the expert work (1.63 against 2.00 experts per token).
#
# So random routing trades a little of the mixture's weight for compute and buffer room, and
# lets the weights, rather than the position in the batch, decide which second choices are
# left out.
#
# ## 6. Capacity factor during training
#
# Finally, train the same model at capacity factors 0.5 and 2.0 as well, with the same
# seed (same initial weights, same batches), and once more with a second seed (which also
# draws a new corpus), then compare the share of dropped slots during training and the
# validation loss. `history[step]["layers"][i]["drop_rate"]` counts every dropped
# (token, choice) slot of layer $i$, so it includes the second choices that random routing
# skipped.

# %%
FACTORS_TRAINED = [0.5, 1.0, 2.0]
for seed in SEEDS:
    for factor in FACTORS_TRAINED:
        if (factor, seed) not in runs:
            config = dataclasses.replace(base, name=f"gshard-cf{factor}-seed{seed}", seed=seed,
                                         layer_args={**base.layer_args, "capacity_factor": factor})
            runs[factor, seed] = train.train(config, progress=False)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
for factor in FACTORS_TRAINED:
    run = runs[factor, 0]
    drop = [np.mean([layer["drop_rate"] for layer in h["layers"]]) for h in run.history]
    window = min(25, len(drop))
    axes[0].plot(np.arange(window - 1, len(drop)), 100 * np.convolve(drop, np.ones(window) / window, "valid"),
                 label=f"capacity factor {factor}")
    axes[1].plot([e["step"] for e in run.evals], [e["val_loss"] for e in run.evals], "o-",
                 label=f"capacity factor {factor}")
axes[0].set(xlabel="training step", ylabel="dropped slots (%), both layers",
            title="Dropped (token, choice) slots during training (seed 0)")
axes[1].set(xlabel="training step", ylabel="validation cross-entropy (nats/char)", title="Validation loss (seed 0)")
for ax in axes:
    ax.legend()
    ax.grid(alpha=0.3)
fig.tight_layout()
plt.show()

print(f"{'capacity factor':>15} {'seed':>5} {'val loss':>9} {'perplexity':>11} {'dropped (last 50 steps)':>24}")
for seed in SEEDS:
    for factor in FACTORS_TRAINED:
        run = runs[factor, seed]
        drop = np.mean([layer["drop_rate"] for h in run.history[-50:] for layer in h["layers"]])
        print(f"{factor:>15} {seed:>5} {run.evals[-1]['val_loss']:>9.3f} {run.evals[-1]['perplexity']:>11.3f}"
              f" {drop:>24.1%}")

# %% [markdown]
# **What training shows.** The share of dropped slots falls fast in the first 100 steps,
# as the balance loss spreads the first choices, then stays nearly level (at factor 2.0 it
# creeps up from about 18% to 25%). Over the last 50 steps it is about 51% at factor 0.5
# (the floor computed above), 24.9-27.7% at factor 1.0 and 20.5-24.6% at factor 2.0. At
# factor 2.0 almost all of it is random routing: with second gates like those of section 5, about 37%
# of the second choices (100% - 63.3%), 18% of all slots, are never sent.
#
# The validation loss after 800 steps orders the factors the same way for both seeds:
# factor 0.5 is worst (1.525 and 1.514), 2.0 best (1.489 and 1.489), and 1.0 in between
# (1.498 and 1.506). Dropping half of the slots costs 0.025-0.036 nats per character
# (against factor 2.0); going from 1.0 to 2.0 gains 0.009-0.017, a small gain for twice
# the buffer memory and twice the padded expert compute. That is the trade-off behind GShard's design: with a balance loss
# keeping the first choices spread out, a capacity near the balanced load loses little: the
# overflow falls on second choices, after random routing has already skipped most of those
# with small weights. Two seeds on a toy corpus
# are thin evidence for differences of 0.01; the drop rates, on the other hand, follow
# directly from the capacity arithmetic and the router's balance. Lesson 04 (Switch
# Transformer) looks at the same trade-off for top-1 routing.
#
# ## Exercises
#
# 1. **Priority.** In the hand-made batch, swap tokens 0 and 4 (rows of `logits` and entries
#    of `u`). Which first choice is dropped now? Why does GShard serve all first choices
#    before any second choice, instead of serving tokens one at a time with both choices?
# 2. **No balance loss.** Train the `"gshard"` config with `aux_weight=0.0` in `layer_args`
#    and redo the capacity sweep of section 4. How many first choices overflow at capacity
#    factor 1 now?
# 3. **Group size.** The capacity is per group. Route the first 64 tokens of the validation
#    batch as their own group (capacity $\lceil 2 \cdot 64/8 \rceil = 16$ at factor 1) and
#    compare the drop rate with the 512-token group. Why do smaller groups drop more?
# 4. **The expected second load.** Show that with random routing the expected number of
#    second-choice slots sent is $\sum_s 2 g_{2,s}$, and compare it with the count in
#    section 5.
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 专家 | expert |
# | 门控网络 / 路由器 | gating network / router |
# | top-2 门控 | top-2 gating |
# | 专家容量 | expert capacity |
# | 容量因子 | capacity factor |
# | 溢出 / 丢弃的 token | overflow / dropped token |
# | 随机路由 | random routing |
# | 辅助损失 | auxiliary loss |
# | 负载均衡 | load balancing |
# | 分组 | group (of tokens sharing the capacity) |
# | 分发 / 合并 | dispatch / combine |
# | 残差连接 | residual connection |
