# %% [markdown]
# # 02 · 架构形成 / RNN 时代: Outrageously Large Neural Networks (2017)
#
# **Paper.** N. Shazeer, A. Mirhoseini, K. Maziarz, A. Davis, Q. Le, G. Hinton and J. Dean
# (2017), *Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts
# Layer*, ICLR 2017 (arXiv:1701.06538).
#
# **The idea in plain words.** Lesson 01's gate was *dense*: every expert ran on every
# input and the gate blended their answers. That costs $E$ times the compute of one expert.
# Shazeer et al. make the gate **sparse** (稀疏): for each token it keeps only the $k$ best
# experts (say 2 of thousands) and gives every other expert a weight of exactly zero, so those
# experts need not run at all. The parameter count grows with the number of experts, the
# compute per token does not: this is **conditional computation** (条件计算).
#
# Two problems come with it, and the paper solves both:
#
# 1. *Which* $k$? A hard top-$k$ is a discrete choice: gradients reach the $k$ kept logits,
#    never the choice itself. Before taking the top $k$ they add Gaussian noise with a learned
#    scale to the gate logits (**noisy top-k gating**, 带噪声的 top-k 门控). The paper says the
#    noise helps balance the load, and Appendix A uses it to make the load differentiable.
# 2. The rich get richer: experts that are chosen early train faster, get chosen more, and the
#    rest starve (**expert collapse**, 专家坍塌). Two **auxiliary losses** (辅助损失) push the
#    gate towards balance: an *importance* loss and a *load* loss.
#
# **What this lesson implements.** Eqs. 1 and 3-5 (the noisy top-k gate), eqs. 6-7 (the
# importance loss) and Appendix A's eqs. 8-11 (the smooth load estimator and the load loss),
# with `tm.moe.NoisyTopKRouter` and `tm.moe.losses`; then the paper's language model
# (embedding → LSTM → MoE → LSTM → softmax, `tinymoe.models.LSTMMoELM`) trained with and
# without the losses, the toy version of their Table 6.

# %%
import dataclasses
import os

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import data, train, viz
from tinymoe import functional as F
from tinymoe.models import LSTMMoELM
from tinymoe.moe import losses

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: short trainings
STEPS = 60 if FAST else 800
SEEDS = [0] if FAST else [0, 1]  # a second seed for the validation-loss comparison
np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## 1. The sparse gate: eqs. 1 and 3-5
#
# An MoE layer with experts $E_1,\dots,E_n$ and gate $G$ outputs (eq. 1)
#
# $$y = \sum_{i=1}^{n} G(x)_i\, E_i(x),$$
#
# and wherever $G(x)_i = 0$ expert $i$ is skipped. The noisy top-k gate is
#
# $$H(x)_i = (x W_g)_i + \varepsilon_i \cdot \mathrm{softplus}\big((x W_{noise})_i\big),\quad \varepsilon_i \sim \mathcal N(0,1) \qquad \text{(eq. 4)}$$
#
# $$\mathrm{KeepTopK}(v, k)_i = \begin{cases} v_i & \text{if } v_i \text{ is among the } k \text{ largest of } v\\ -\infty & \text{otherwise}\end{cases} \qquad \text{(eq. 5)}$$
#
# $$G(x) = \mathrm{softmax}\big(\mathrm{KeepTopK}(H(x), k)\big). \qquad \text{(eq. 3)}$$
#
# The softmax of $-\infty$ is exactly 0, so $G$ has $k$ non-zero entries that sum to 1.
# The noise has a *learned* scale per expert and per input, $\mathrm{softplus}((xW_{noise})_i)$,
# and is switched off at evaluation time.
#
# The paper starts $W_g$ and $W_{noise}$ at **zero**. Let us look at a router in that state:
# 6 tokens of width 4, 4 experts, $k = 2$. Randomness is an argument of the router
# (`noise=`, a standard-normal array of shape (tokens, experts)), so we can pass our own
# draw and repeat it exactly.

# %%
N, D, E, K = 6, 4, 4, 2
rng = np.random.default_rng(0)
x = tm.tensor(rng.standard_normal((N, D)).astype(np.float32))
noise = rng.standard_normal((N, E))  # the eps of eq. 4, one per token and expert

router = tm.moe.NoisyTopKRouter(D, E, K)
routing = router(x, noise=noise)
print("W_g is zero:", not router.w_gate.data.any(), "  W_noise is zero:", not router.w_noise.data.any())
print("clean logits x W_g:\n", routing.extras["clean_logits"].numpy())
print("noise scale softplus(x W_noise) = ln 2 everywhere:\n", routing.extras["noise_std"].numpy())
print("chosen experts (best first):\n", routing.expert_index)

# %% [markdown]
# With zero weights there is **no signal and some noise**: every clean logit is 0 and the
# noise scale is $\mathrm{softplus}(0) = \ln 2 \approx 0.693$, so at the start each token goes
# to 2 experts drawn at random. That is the balanced state the paper wants to begin in.
#
# To see the gate do real work, give it some weights (as if it had been trained for a
# while), then compute eq. 4 by hand and compare with the router:

# %%
router.w_gate.data = (0.5 * rng.standard_normal((D, E))).astype(np.float32)
router.w_noise.data = (0.3 * rng.standard_normal((D, E))).astype(np.float32)

xs = x.numpy()
clean = xs @ router.w_gate.data
std = np.log1p(np.exp(xs @ router.w_noise.data))  # softplus
H = clean + noise * std  # eq. 4

routing = router(x, noise=noise)
print("H(x) by hand:\n", H)
print("max |router's noisy logits - H| =", np.abs(routing.logits.numpy() - H).max())

# %% [markdown]
# Now eqs. 5 and 3: keep the 2 largest entries of each row, set the rest to $-\infty$, softmax.

# %%
kth_largest = np.sort(H, axis=1)[:, -K][:, None]
kept = np.where(H >= kth_largest, H, -np.inf)  # KeepTopK (eq. 5)
G = np.exp(kept - kept.max(axis=1, keepdims=True))
G /= G.sum(axis=1, keepdims=True)  # softmax (eq. 3)
print("G(x) by hand:\n", G)
print("max |routing.probs - G| =", np.abs(routing.probs.numpy() - G).max())
print("routing.expert_index:\n", routing.expert_index, "\nrouting.weight (the two non-zero gates):\n",
      routing.weight.numpy())

# %% [markdown]
# The same `noise` gives the same decision every time; in evaluation mode (`router.eval()`)
# there is no noise at all, and the choice follows the clean logits $xW_g$ alone:

# %%
again = router(x, noise=noise)
print("same noise, same experts:", bool((again.expert_index == routing.expert_index).all()))
router.eval()
print("evaluation mode (no noise), experts:\n", router(x).expert_index)
router.train()

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
panels = [(clean, "clean logits $xW_g$"), (H, "noisy logits $H(x)$ (eq. 4)"), (G, "gates $G(x)$ (eqs. 3, 5)")]
for ax, (values, title) in zip(axes, panels, strict=True):
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="w")
    ax.set(xlabel="expert", ylabel="token", title=title, xticks=range(E))
    fig.colorbar(image, ax=ax)
fig.suptitle("Noisy top-2 gating of 6 tokens over 4 experts")
fig.tight_layout()
plt.show()

# %% [markdown]
# The noise changes the decision for some tokens: compare the clean and noisy panels
# (token 1's best clean logit belongs to expert 3, but its noisy logits pick experts 1 and
# 3). Gradients reach $W_g$ and $W_{noise}$ through the $k$ kept logits; the noise lets the
# gate try experts it would not pick on the clean logits alone.
#
# ## 2. The importance loss: eqs. 6-7
#
# The **importance** of an expert over a batch $X$ is the sum of its gate values (eq. 6),
# and the loss is the squared **coefficient of variation** (变异系数, std / mean) of those
# sums, times a weight (eq. 7):
#
# $$\mathrm{Importance}(X) = \sum_{x \in X} G(x), \qquad L_{importance} = w_{importance}\cdot \mathrm{CV}\big(\mathrm{Importance}(X)\big)^2 .$$
#
# It is 0 when every expert receives the same total gate weight. $G$ is differentiable in
# $W_g$ and $W_{noise}$, so this loss trains the gate directly.

# %%
importance = routing.probs.numpy().sum(axis=0)
print("Importance per expert:", importance)
print("CV^2 by hand:", importance.var() / importance.mean() ** 2)
print("losses.importance_loss:", losses.importance_loss(routing.probs).item())

# %% [markdown]
# ## 3. The load loss and the smooth estimator: eqs. 8-11
#
# Equal importance is not equal work. One expert can get a few tokens with large gates and
# another many tokens with small gates: same importance, very different **load** (负载, the
# number of tokens an expert must process). Load is what fills memory and decides the
# speed of a distributed step. The obvious load is a count:

# %%
counts = np.bincount(routing.expert_index.ravel(), minlength=E)
print("tokens per expert:", counts, " type:", type(counts).__name__, counts.dtype)

# %% [markdown]
# A count is a step function of the logits: a tiny change of $W_g$ either changes nothing or
# makes a token jump to another expert. Its gradient is zero almost everywhere, so a loss
# on counts cannot teach the gate anything (in tinymoe the indices are plain integer arrays
# with no gradient at all). Appendix A replaces the count by a **smooth estimator** (平滑估计).
#
# Take token $x$ and expert $i$. Keep every other expert's noisy logit fixed and ask: if only
# $\varepsilon_i$ were drawn again, what is the probability that expert $i$ lands in the top $k$?
# It must beat the $k$-th largest noisy logit *among the other experts*, written
# $\mathrm{kth\_excluding}(H(x), k, i)$:
#
# $$P(x, i) = \Pr\Big((xW_g)_i + \varepsilon\cdot\mathrm{softplus}((xW_{noise})_i) > \mathrm{kth\_excluding}(H(x), k, i)\Big) \qquad\text{(eq. 8)}$$
#
# $$\phantom{P(x, i)} = \Phi\left(\frac{(xW_g)_i - \mathrm{kth\_excluding}(H(x), k, i)}{\mathrm{softplus}((xW_{noise})_i)}\right) \qquad\text{(eq. 9)}$$
#
# $$\mathrm{Load}(X)_i = \sum_{x\in X} P(x, i) \quad\text{(eq. 10)}, \qquad L_{load} = w_{load}\cdot\mathrm{CV}\big(\mathrm{Load}(X)\big)^2 \quad\text{(eq. 11)},$$
#
# with $\Phi$ the standard normal CDF. $P$ is smooth in $W_g$ and $W_{noise}$: the noise has
# turned a yes/no event into a probability. The threshold is simple to find: if $i$ is in
# the top $k$, removing it moves the $(k+1)$-th largest logit up to $k$-th place; if not, it is
# the $k$-th largest.

# %%
threshold = losses.kth_excluding(routing.logits, K).numpy()
print("noisy logits H:\n", H)
print("kth_excluding(H, k=2, i):\n", threshold)

# %% [markdown]
# Row 0: $H = (0.93, 0.27, -0.86, -0.91)$. Experts 0 and 1 are in the top 2; without
# expert 0 the second best of the others is $-0.86$, and the same holds for expert 1
# (the others are $0.93, -0.86, -0.91$). Experts 2 and 3 are out; to get in, each must beat
# the second largest of the others, $0.27$. Now eq. 9 and the load:

# %%
P = F.normal_cdf(tm.tensor((clean - threshold) / std)).numpy()  # eq. 9
load = P.sum(axis=0)  # eq. 10
print("P(x, i):\n", P)
print("smooth Load:", load, "   hard counts:", counts)
print("CV^2 of Load by hand:", load.var() / load.mean() ** 2)
extras = routing.extras
load_loss = losses.load_loss(extras["clean_logits"], extras["noisy_logits"], extras["noise_std"], K)
print("losses.load_loss:    ", load_loss.item())

# %% [markdown]
# Is $P$ really that probability? Check it by simulation: for each expert $i$, draw
# $\varepsilon_i$ again 20,000 times (all other noisy logits fixed) and count how often $i$
# lands in the top 2.

# %%
draws = 20_000
simulated = np.zeros((N, E))
for i in range(E):
    H_again = np.repeat(H[None], draws, axis=0)
    H_again[:, :, i] = clean[:, i] + rng.standard_normal((draws, N)) * std[:, i]
    second_best = np.sort(H_again, axis=2)[:, :, -K]
    simulated[:, i] = (H_again[:, :, i] >= second_best).mean(axis=0)
print("simulated:\n", simulated)
print("max |simulated - P| =", np.abs(simulated - P).max())

# %% [markdown]
# And unlike the counts, the load loss has a gradient that reaches the gate's weights:

# %%
router.zero_grad()
load_loss.backward()
print("d L_load / d W_g:\n", router.w_gate.grad)
print("d L_load / d W_noise:\n", router.w_noise.grad)

# %% [markdown]
# ## 4. The LSTM-MoE language model
#
# In the paper's language models the MoE sits between two LSTM layers and is applied to the
# output of every time step independently (each (sequence, time) position is one token for
# the router):
#
# $$\text{embedding} \to \text{LSTM} \to \text{MoE} \to \text{LSTM} \to \text{softmax}.$$
#
# `tinymoe.models.LSTMMoELM` builds exactly that; the residual $h + \mathrm{MoE}(h)$ is added
# inside the model. `tm.moe.NoisyTopKMoE` is the router above plus a bank of ReLU feed-forward
# experts and the two losses with $w_{importance} = w_{load} = 0.1$, the weights used in the
# paper's language-model experiments. Our data is the synthetic multi-domain character corpus
# (arithmetic, brackets, invented English-like words, DNA).

# %%
corpus = data.load_corpus("multi_domain", 60_000)
tm.manual_seed(0)
model = LSTMMoELM(corpus.vocab_size, 32, lambda: tm.moe.NoisyTopKMoE(32, 64, n_experts=8, k=2))
ids, targets = data.random_windows(corpus.train_ids, 4, 16, np.random.default_rng(0))
ce, aux = model.loss(ids, targets)
print("vocabulary:", corpus.vocab_size, "characters;  ids:", ids.shape)
print("cross-entropy:", round(ce.item(), 3), " (ln V =", round(np.log(corpus.vocab_size), 3), "at a uniform guess)")
print("auxiliary losses (already weighted):", {name: round(v.item(), 4) for name, v in aux.items()})
print("router saw", model.moe.last_routing.expert_index.shape[0], "tokens (4 sequences x 16 steps)")

# %% [markdown]
# ## 5. Experiment: collapse without the losses, balance with them
#
# The named config `"noisy-topk"` in `tinymoe.train` is this model with 8 experts, top-2.
# We make it smaller (width 32, experts of hidden width 64, windows of 32 characters, 16
# windows per step: 512 tokens per batch) and train it twice from the **same seed** (same
# initial weights, same batches):
#
# - `no-losses`: $w_{importance} = w_{load} = 0$,
# - `losses-0.1`: $w_{importance} = w_{load} = 0.1$, as in the paper.
#
# At every step `train` records each expert's share of the batch's (token, choice)
# assignments (`history[step]["layers"][0]["load"]`); `train.load_cv` is its coefficient of
# variation (0 = perfectly balanced; one expert taking everything gives $\sqrt{E-1} \approx 2.65$).

# %%
base = train.get_config("noisy-topk", steps=STEPS, d_model=32, d_hidden=64, context=32,
                        eval_every=max(STEPS // 8, 1), eval_batches=16)
settings = {"no-losses": 0.0, "losses-0.1": 0.1}
runs = {}
for name, w in settings.items():
    config = dataclasses.replace(base, name=name,
                                 layer_args={**base.layer_args, "w_importance": w, "w_load": w})
    runs[name] = train.train(config, progress=False)
    print(train.summary_table(runs[name]), "\n")

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, run in runs.items():
    cv = [train.load_cv(h["layers"][0]["load"]) for h in run.history]
    ax.plot(cv, alpha=0.25)
    window = min(25, len(cv))
    ax.plot(np.arange(window - 1, len(cv)), np.convolve(cv, np.ones(window) / window, "valid"),
            color=ax.lines[-1].get_color(), label=f"{name} (moving average)")
ax.set(xlabel="training step", ylabel="CV of expert load", title="Expert load imbalance during training")
ax.legend()
fig.tight_layout()
plt.show()
for name, run in runs.items():
    cv = [train.load_cv(h["layers"][0]["load"]) for h in run.history]
    print(f"{name:>10}: load CV, mean of the first 25 steps {np.mean(cv[:25]):.3f}, of the last 25 {np.mean(cv[-25:]):.3f}")
random_pairs = [np.argsort(rng.random((512, 8)), axis=1)[:, :2] for _ in range(200)]  # 2 distinct experts per token
chance = np.mean([train.load_cv(np.bincount(pairs.ravel(), minlength=8)) for pairs in random_pairs])
print(f"for comparison, 512 tokens each sent to 2 experts drawn at random: load CV {chance:.3f} on average")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
final_load = {}
for ax, (name, run) in zip(axes, runs.items(), strict=True):
    final_load[name] = np.mean([h["layers"][0]["load"] for h in run.history[-50:]], axis=0)
    ax.bar(range(8), final_load[name])
    ax.axhline(1 / 8, color="k", linestyle="--", label="balanced (1/8)")
    ax.set(xlabel="expert", ylabel="share of assignments", title=f"{name}: load over the last 50 steps")
    ax.legend(loc="upper left")
axes[0].set_ylim(0, 1.25 * max(load.max() for load in final_load.values()))  # room for the legend
fig.tight_layout()
plt.show()
for name, load in final_load.items():
    print(f"{name:>10}: load = {np.round(load, 3)}   CV = {train.load_cv(load):.3f}   "
          f"max/mean = {load.max() * 8:.2f}")

# %% [markdown]
# How the imbalance grows, expert by expert, in the run without the losses:

# %%
viz.expert_load_heatmap(runs["no-losses"])
plt.show()
viz.loss_curves(list(runs.values()), title="LSTM-MoE on the multi-domain corpus")
plt.show()

# %% [markdown]
# One run per setting is one sample. To see how much the validation loss moves by chance,
# train both settings again with a second seed (new initial weights, new batches and a new
# draw of the corpus):

# %%
results = {(name, 0): run for name, run in runs.items()}
for seed in SEEDS[1:]:
    for name, w in settings.items():
        config = dataclasses.replace(base, name=name, seed=seed,
                                     layer_args={**base.layer_args, "w_importance": w, "w_load": w})
        results[name, seed] = train.train(config, progress=False)

print(f"{'run':>10} {'seed':>5} {'val loss':>9} {'perplexity':>11} {'load CV (last 50 steps)':>24}")
for (name, seed), run in sorted(results.items(), key=lambda item: item[0][1]):
    last = run.evals[-1]
    load = np.mean([h["layers"][0]["load"] for h in run.history[-50:]], axis=0)
    print(f"{name:>10} {seed:>5} {last['val_loss']:>9.3f} {last['perplexity']:>11.3f} {train.load_cv(load):>24.3f}")

# %% [markdown]
# ## 6. What we see, and how it compares with the paper
#
# **Collapse without the losses.** Both runs start at a load CV below 0.08 (0.079 and 0.071
# over the first 25 steps). With $W_g = 0$ the router is pure noise, and noise spreads the
# tokens evenly: a batch of 512 tokens sent to 2 random experts each has a CV of about 0.07
# by chance alone (printed under the plot). Without the losses the CV climbs steadily and
# levels off around 0.7 after about 500 steps (0.714 over the last 25 steps). The final
# histogram shows the rich-get-richer pattern: experts 1, 2, 5 and 7 take 17-24% of the
# assignments each, while experts 0, 3, 4 and 6 are left with 1.7-6.0%; the busiest expert
# does 1.89 times the mean load (CV 0.680 for the load averaged over the last 50 steps).
# With $w_{importance} = w_{load} = 0.1$ the CV stays near 0.07 for the whole run, the
# level of chance for one batch, and the load averaged over the last 50 steps is flat
# (CV 0.006, max/mean 1.01).
#
# **Validation loss.** With seed 0, 1.697 nats per character without the losses
# (perplexity 5.46) and 1.712 with them (5.54); with seed 1, 1.746 and 1.743. The order flips
# between seeds and both differences (0.015 and 0.003) are small: at our scale the balance
# losses neither help nor hurt the loss measurably, even though seed 1 collapses further
# without them (load CV 1.000). Shazeer et al.'s Table 6 shows a clear gain instead: test perplexity 39.8
# without the losses against about 35.6 with either or both of them. The reasons for the
# gap are scale and task:
#
# - their models had up to thousands of experts and read billions of words; an expert that
#   starves is capacity the model paid for and never uses, and with a fixed per-expert batch
#   on many devices an overloaded expert also runs out of memory. Our 8 experts on a 60,000-character
#   synthetic corpus are more than the task needs: here a model that leans on four experts
#   does as well as one that uses all eight;
# - our collapse is partial (in the seed-0 run every expert still receives tokens in
#   evaluation: "dead 0" in its summary table), so little capacity is actually lost;
# - the losses are a constraint on the router: on a task this small, the freedom to send
#   most tokens to the experts it likes costs nothing, and forcing balance brings no gain.
#
# What does reproduce is the mechanism: without an auxiliary loss the noisy top-k router
# drifts into a strongly unbalanced state, and the two losses of eqs. 7 and 11 hold it
# at balance, at a cost in loss (if any) too small for two seeds to measure.
#
# ## Exercises
#
# 1. **Only one loss.** Train with $w_{importance} = 0.1, w_{load} = 0$ and with
#    $w_{importance} = 0, w_{load} = 0.1$ (the paper's Table 6 has both). Does either loss on its
#    own keep the load CV low? Which of the two quantities (importance or load) does each one
#    balance best?
# 2. **No noise.** `tm.moe.NoisyTopKRouter(d, E, k, noisy=False)` is plain top-k of $xW_g$.
#    Why does the load loss need the noise (look at the denominator of eq. 9)? What does
#    `NoisyTopKMoE.aux_losses` do when there are no noisy logits?
# 3. **Same importance, different load.** Write down gate values $G$ for 4 tokens and 3
#    experts (a $4\times 3$ array with two non-zero entries per row, each row summing to 1)
#    such that every expert has importance $4/3$ but expert 0 serves all 4 tokens and the
#    others 2 each. Compute `losses.importance_loss` on it (as a `tm.tensor`) and the CV$^2$
#    of the counts. What would the load loss see that the importance loss cannot?
# 4. **More experts.** Train both settings with `n_experts=32` (and `k=2`). Does the load
#    CV without the losses climb higher or faster than with 8 experts? How many experts end
#    up with less than 1% of the assignments?
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 专家 | expert |
# | 门控网络 | gating network (gate) |
# | 稀疏门控 | sparse gating |
# | 带噪声的 top-k 门控 | noisy top-k gating |
# | 条件计算 | conditional computation |
# | 重要性损失 | importance loss |
# | 负载 / 负载损失 | load / load loss |
# | 平滑估计 | smooth estimator |
# | 变异系数 | coefficient of variation (CV) |
# | 负载均衡 | load balancing |
# | 辅助损失 | auxiliary loss |
# | 专家坍塌 | expert collapse |
# | 困惑度 | perplexity |
