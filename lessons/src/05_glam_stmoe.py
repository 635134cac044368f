# %% [markdown]
# # 05 · GPT 时代: GLaM and ST-MoE (2021-2022)
#
# **Papers.**
# - N. Du, Y. Huang, A. M. Dai, et al. (2021; ICML 2022), *GLaM: Efficient Scaling of
#   Language Models with Mixture-of-Experts*, arXiv 2112.06905.
# - B. Zoph, I. Bello, S. Kumar, N. Du, Y. Huang, J. Dean, N. Shazeer and W. Fedus (2022),
#   *ST-MoE: Designing Stable and Transferable Sparse Expert Models*, arXiv 2202.08906.
#
# **The idea in plain words.** After GPT-3 (2020), the large models were decoder-only
# language models (解码器语言模型) used with few-shot prompts. **GLaM** built such a model
# with MoE: every *other* transformer block has an MoE layer of 64 experts with GShard's
# top-2 gating (lesson 03), the blocks in between keep a dense FFN. The largest GLaM has
# 1.2 trillion parameters but uses only 96.6 billion (about 8%) for each token; its
# abstract reports better overall zero-, one- and few-shot results than GPT-3 on 29 tasks,
# for a third of GPT-3's training energy and half its computation per token at inference.
#
# Big sparse models also **diverge** (发散) more often than dense ones. **ST-MoE** studied
# many fixes and kept one that costs nothing in quality: the **router z-loss** (路由 z 损失),
# a small penalty on the size of the router's logits. Small logits make the exponentials
# of the softmax less sensitive to rounding in low precision.
#
# **What this lesson implements.** GLaM's every-other-layer layout, with its total and
# active parameter count; the router z-loss (the ST-MoE paper's eq. 5) by hand, its
# gradient against autograd, and why logit *size* matters in bfloat16; and an experiment
# that trains the same Switch model without and with the z-loss and watches the router's
# logits.

# %%
import dataclasses
import os
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import data, viz
from tinymoe import functional as F
from tinymoe import train as T
from tinymoe.moe import losses

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: short trainings
STEPS = 60 if FAST else 1000  # training steps of each run in section 4
CHUNK = 20 if FAST else 100  # look at the router's logits every CHUNK steps
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. GLaM: MoE in every other block
#
# GLaM's MoE layer is GShard's: for each token the router's softmax $p = \mathrm{softmax}(x W_r)$
# picks the two best experts, their weights $p_{i_1}, p_{i_2}$ are renormalised to sum
# to 1, and the layer outputs $y = g_1\,\mathrm{FFN}_{i_1}(x) + g_2\,\mathrm{FFN}_{i_2}(x)$,
# with GShard's balance loss. The layout: in a stack of $L$ blocks, block $\ell$
# (counting from 1) gets an MoE layer when $\ell$ is even, and a dense FFN otherwise. `TransformerLM(..., moe_every=2)` does this; the named config
# "glam" is a 4-block model with 8 experts per MoE layer:

# %%
cfg = T.get_config("glam")
corpus = data.load_corpus(cfg.corpus, cfg.corpus_chars)
glam = T.make_model(cfg, corpus.vocab_size)
print(f"moe_every = {cfg.moe_every}, n_layers = {cfg.n_layers}, experts = {cfg.n_experts}, top-{cfg.k}")
for number, block in enumerate(glam.blocks, start=1):
    ffn = block.ffn
    if hasattr(ffn, "experts"):
        print(f"block {number}: MoE   {type(ffn).__name__}: {ffn.experts.extra_repr()}, top-{cfg.k}")
    else:
        print(f"block {number}: dense FeedForward: {ffn.w1.d_in} -> {ffn.w1.d_out} -> {ffn.w2.d_out}, {ffn.activation!r}")
print()
print(glam.blocks[1])

# %% [markdown]
# Counting parameters: a token passes through every block, but inside an MoE layer it
# meets only the router and 2 of the 8 experts.

# %%
def count(module):
    return sum(p.data.size for p in module.parameters())


total = count(glam)
moe_layers = glam.moe_layers()
per_expert = count(moe_layers[0].experts) // cfg.n_experts
inactive = sum((moe.n_experts - cfg.k) * per_expert for moe in moe_layers)
print(f"total parameters            : {total:,}")
print(f"  in the experts            : {sum(count(moe.experts) for moe in moe_layers):,} "
      f"({len(moe_layers)} layers x {cfg.n_experts} experts x {per_expert:,})")
print(f"active per token (top-{cfg.k})    : {total - inactive:,} = {(total - inactive) / total:.0%} of the total")
print(f"GLaM 64B/64E (paper)        : 1.2T total, 96.6B active = {96.6 / 1200:.0%}")

# %% [markdown]
# Our "glam" stores 374,320 parameters, 262,144 of them in the 16 experts, and uses
# 177,712 (47%) for each token; GLaM uses 8%. The difference is the number of experts:
# a token here meets 2 of 8 experts (a quarter of the expert parameters), in GLaM 2 of
# 64 (3%); and at $d = 64$ attention and embeddings are a larger share of a model than at
# GLaM's size. (With GShard's random routing the second expert is used only with
# probability $2 g_2$ during training, so "2 experts" is an upper bound.) Keeping every
# other block dense halves the number of routers, and of the all-to-all exchanges that
# send tokens to experts on other devices, for a model of the same depth. GShard had
# already placed its MoE layers in every other block; GLaM kept that layout for a
# decoder-only language model.
#
# ## 2. The router z-loss
#
# For a batch of $B$ tokens and router logits $x^{(i)} \in \mathbb{R}^{E}$ (the paper's
# eq. 5):
#
# $$\mathcal{L}_z = \frac{1}{B} \sum_{i=1}^{B} \Big( \log \sum_{j=1}^{E} e^{x^{(i)}_j} \Big)^2 ,$$
#
# added to the training loss as $\mathcal{L} = \mathcal{L}_{CE} + c_B \mathcal{L}_B + c_z \mathcal{L}_z$
# with $c_z = 10^{-3}$. The quantity inside the square is the **log-partition function**
# $z = \mathrm{logsumexp}(x)$ (hence the name). It is *not* the mean of the squared logits:
#
# - softmax does not change when the same number is added to every logit, but $z$ does:
#   $z(x + c) = z(x) + c$. Among all shifts that give the same routing, the z-loss
#   prefers the one with $z = 0$;
# - with all logits equal to 0, $z = \log E$, so the z-loss is $(\log E)^2$, not 0;
# - since $\max_j x_j \le z \le \max_j x_j + \log E$, a small $z$ keeps the *largest*
#   logits, the ones that carry the probability, close to 0.

# %%
E = 8
rng = np.random.default_rng(0)
logits = tm.tensor((2 * rng.standard_normal((5, E))).astype(np.float64), requires_grad=True)


def logsumexp_np(z):
    m = z.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


lse = logsumexp_np(logits.data)
print("logsumexp per token         :", lse)
print("mean of logsumexp^2, by hand:", np.mean(lse**2))
print("losses.z_loss               :", losses.z_loss(logits).item())
print("mean of logits^2 (not it!)  :", np.mean(logits.data**2))
zeros = tm.tensor(np.zeros((1, E)))
print(f"\nall logits 0     : z-loss = {losses.z_loss(zeros).item():.4f} = (log E)^2 = {np.log(E) ** 2:.4f}")
print(f"all logits -log E: z-loss = {losses.z_loss(zeros - np.log(E)).item():.1e} (same softmax, z = 0)")
shifted = logits.data + 10
print(f"logits + 10      : z-loss = {losses.z_loss(tm.tensor(shifted)).item():.2f}, softmax unchanged: "
      f"{np.allclose(F.softmax(tm.tensor(shifted)).data, F.softmax(logits).data)}")

# %% [markdown]
# **Its gradient.** $\partial z / \partial x_j = \mathrm{softmax}(x)_j$, so
#
# $$\frac{\partial \mathcal{L}_z}{\partial x^{(i)}_j} = \frac{2}{B}\, z^{(i)}\, \mathrm{softmax}(x^{(i)})_j .$$
#
# When $z > 0$ every logit is pushed down, the likely experts hardest; when $z < 0$, up.
# Checked against autograd:

# %%
losses.z_loss(logits).backward()
p = np.exp(logits.data - lse[:, None])
by_hand = 2 / logits.shape[0] * lse[:, None] * p
print("largest difference, autograd vs 2/B z softmax:", np.abs(logits.grad - by_hand).max())

# %% [markdown]
# ## 3. Why the size of the logits matters in low precision
#
# Switch (lesson 04) already runs the router in float32, yet ST-MoE still saw
# instabilities at scale, and pointed at **roundoff** (舍入误差) in the exponentials:
# $e^{x + \delta} = e^x e^{\delta}$, so an absolute rounding error $\delta$ in a logit
# becomes a *relative* error $\delta$ in its weight, and in a format with a fixed number
# of significant bits $\delta$ grows with $|x|$. bfloat16 keeps 8 significant bits: near
# 1 its numbers are $2^{-7} \approx 0.008$ apart, near 100 they are 0.5 apart. NumPy has
# no bfloat16, so we round float32 numbers to it by hand (keep the top 16 bits, round to
# nearest even):

# %%
def to_bfloat16(a):
    """Round float32 values to the nearest bfloat16 (returned as float32)."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


for v in [1.0, 10.0, 100.0]:
    next_up = (to_bfloat16(v).view(np.uint32) + np.uint32(0x10000)).view(np.float32)  # add 1 to the last kept bit
    print(f"bfloat16: after {v:>5} the next number is {next_up}, a gap of {next_up - v:g}")


def softmax_np(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# %% [markdown]
# Now the same routing decision written with different shifts: logits $x + c$ give exactly
# the same softmax, but once they are stored in bfloat16 the error grows with $c$, while
# the z-loss grows as $(z + c)^2$:

# %%
x = rng.standard_normal((2000, E)).astype(np.float32)
exact = softmax_np(x.astype(np.float64))
print(f"{'shift c':>8}{'z-loss':>10}{'max |p_bf16 - p_exact|':>26}")
for c in [0.0, 4.0, 16.0, 64.0]:
    shifted = x + np.float32(c)
    err = np.abs(softmax_np(to_bfloat16(shifted).astype(np.float64)) - exact).max()
    print(f"{c:>8}{np.mean(logsumexp_np(shifted.astype(np.float64)) ** 2):>10.1f}{err:>26.4f}")

# %% [markdown]
# One routing decision, four ways to write it: stored in bfloat16, its probabilities are
# off by up to 0.0024 as drawn (mean $z^2$ = 6.4) and by 0.094 when shifted by 64 (mean
# $z^2$ = 4421). Nothing in the task loss prefers one form over another; the z-loss
# pushes the router towards the forms with small $z$.

# %% [markdown]
# ## 4. Experiment: what the z-loss does to the router's logits
#
# Three runs of the named "switch" config (2 blocks, top-1 of 8 experts, capacity factor
# 1.25, balance loss 0.01), identical except for the z-loss weight: 0 ("switch"), ST-MoE's
# $10^{-3}$ (the named "st-moe" config) and $10^{-2}$, ten times larger, to make the effect
# easy to see at our scale. During training, `tinymoe.train` records for every step and
# MoE layer the mean of $z^2$ over the batch (`history[step]["layers"][i]["z"]`). To see the
# logits themselves, we train in chunks of `CHUNK` steps: each chunk resumes from the
# checkpoint of the previous one, and after each chunk we run the model on the same 16
# validation windows and look at the router's logits. Resuming is exact: the "switch" run
# below ends with the same validation losses as lesson 04's "switch", trained in one go.

# %%
windows, _ = data.random_windows(corpus.val_ids, 16, 64, np.random.default_rng(7))


def look_at_logits(run):
    """For each MoE layer, on the fixed windows: max |logit|, largest logit, mean z^2, and the
    largest error of the router softmax if its logits were stored in bfloat16."""
    run.model.eval()
    with tm.no_grad():
        run.model(windows)
    run.model.train()
    rows = []
    for moe in run.model.moe_layers():
        x = moe.last_routing.logits.data.astype(np.float64)
        bf16_error = np.abs(softmax_np(to_bfloat16(x).astype(np.float64)) - softmax_np(x)).max()
        rows.append({"max_abs": np.abs(x).max(), "max": x.max(), "z2": np.mean(logsumexp_np(x) ** 2),
                     "bf16_error": bf16_error})
    return rows


def train_and_look(config):
    """Train ``config`` in chunks; returns the run and [(step, look_at_logits(run))]."""
    looks = []
    with tempfile.TemporaryDirectory() as folder:
        for stop in range(CHUNK, config.steps + 1, CHUNK):
            run = T.train(config, out_dir=folder, resume=stop > CHUNK, stop_after=stop, progress=False)
            looks.append((stop, look_at_logits(run)))
    return run, looks


common = dict(steps=STEPS, eval_every=CHUNK, checkpoint_every=CHUNK)
configs = [
    T.get_config("switch", **common),
    T.get_config("st-moe", **common),
    dataclasses.replace(T.get_config("st-moe", layer_args={"capacity_factor": 1.25, "z_weight": 1e-2}, **common),
                        name="z-loss 1e-2"),
]
results = {cfg.name: train_and_look(cfg) for cfg in configs}
print(f"validation loss every {CHUNK} steps:")
for name, (run, _) in results.items():
    print(f"{name:<12} (z_weight {run.config.layer_args.get('z_weight', 0.0):<5g})",
          " ".join(f"{e['val_loss']:.3f}" for e in run.evals))

# %%
fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
for name, (run, looks) in results.items():
    z2 = np.array([[layer["z"] for layer in h["layers"]] for h in run.history]).mean(axis=1)
    smooth = np.convolve(z2, np.ones(10) / 10, mode="valid")
    line, = axes[0].plot(np.arange(len(smooth)) + 10, smooth, label=name)
    steps = [step for step, _ in looks]
    axes[1].plot(steps, [max(layer["max_abs"] for layer in look) for _, look in looks], "o-",
                 color=line.get_color(), label=name)
    axes[2].plot(steps, [max(layer["max"] for layer in look) for _, look in looks], "o-",
                 color=line.get_color(), label=name)
axes[0].set(yscale="log", xlabel="step", ylabel="mean z² (training batches)",
            title="Router log-partition z: mean z²")
axes[1].set(xlabel="step", ylabel="max |logit| (validation windows)", title="Largest logit magnitude")
axes[2].set(xlabel="step", ylabel="max logit (validation windows)", title="Largest logit (signed)")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
print(f"{'run':<12}{'layer':>6}{'mean z²':>9}{'max |logit|':>13}{'max logit':>11}{'bf16 softmax error':>20}")
for name, (_, looks) in results.items():
    for i, layer in enumerate(looks[-1][1]):
        print(f"{name:<12}{i:>6}{layer['z2']:>9.3f}{layer['max_abs']:>13.2f}{layer['max']:>11.2f}"
              f"{layer['bf16_error']:>20.5f}")
print()
for run, _ in results.values():
    print(T.summary_table(run).splitlines()[-1])

# %%
fig = viz.loss_curves([run for run, _ in results.values()], title="Switch with and without the router z-loss")
fig.axes[0].set_ylim(top=max(e["val_loss"] for run, _ in results.values() for e in run.evals) + 0.1)  # zoom in
plt.show()

# %% [markdown]
# **What the z-loss does.** Without it the router's log-partition grows as training
# goes on: the mean of $z^2$ starts at $(\log 8)^2 = 4.3$ (all logits near 0) and ends at
# 6.9 and 7.2 in the two MoE layers (on the validation windows). ST-MoE's weight
# $10^{-3}$ reverses the trend: $z^2$ falls to 1.6 and 1.8. With $10^{-2}$ it drops within
# about 200 steps to around 0.1 and ends at 0.07 and 0.08. The **largest logit**
# follows: 5.47 and 4.55 without the z-loss, 4.60 and 3.37 with $10^{-3}$, 2.30 and 1.48
# with $10^{-2}$.
#
# **What it does not do.** It does not make *every* logit small. With $10^{-2}$ the
# largest *magnitude* is larger than without the z-loss (5.73 and 6.32 against 5.47
# and 4.55), and it is larger from the first look at step 100. To bring $z$ to 0 the
# router shifts all its logits down, and as the softmax ignores shifts, the unlikely
# experts end up with large *negative* logits (in layer 1 the largest logit is 1.48 and
# the largest magnitude 6.32, so some logit is -6.32). That is harmless: those experts have
# tiny probabilities, and a rounding error on a tiny probability changes little. What the
# z-loss controls are the largest logits, the ones that carry the probability, through
# $\max_j x_j \le z$. So for "max |logit|" the toy run says: smaller with $10^{-3}$ in
# layer 0 (4.60 against 5.47) but not in layer 1 (4.62 against 4.55), and larger with
# $10^{-2}$ in both.
#
# **Roundoff.** The last column stores each run's final logits in bfloat16 and measures
# the largest error in a routing probability: 0.0024 and 0.0021 without the z-loss, 0.0019
# in both layers with $10^{-3}$, 0.0019 and 0.0017 with $10^{-2}$: 9-22% smaller. Small in
# all runs, because our logits stay below 7 even without the z-loss (section 3 showed the
# error growing with the logits' size): at our scale nothing is close to breaking.
#
# **Loss and stability.** Final validation losses: 1.383 without the z-loss, 1.378 with
# $10^{-3}$, 1.379 with $10^{-2}$; with either weight the load is also more even (load CV
# 0.195 and 0.194 against 0.238, 2.1% and 2.3% of tokens dropped against 3.9%). These are
# single runs: gaps of 0.004-0.005 would need repeats over seeds before we believe them
# (exercise 4). No run diverged, with or without the z-loss. The instabilities ST-MoE
# fixed appeared in models with billions of parameters trained in bfloat16 for a long
# time; a model of 300,000 parameters trained in float32 for 1000 steps does not show
# them. So this notebook reproduces the *mechanism* (a small log-partition and small
# leading logits, at no cost in loss) but not the paper's main claim, stability at scale,
# which needs a model that is unstable without the fix.
#
# ## Exercises
#
# 1. **z-loss is not an L2 penalty.** For the logits $x = (0, -10, \dots, -10)$ of 8
#    experts (a router that is sure of expert 0), compute the z-loss and the mean of the
#    squared logits, and their gradients. Which penalty would make this router less
#    sure? Which one lets a router be confident as long as $z \approx 0$?
# 2. **Overflow margin.** In float16 (`np.float16`), for which logsumexp values does a
#    *naive* softmax (no max subtraction) overflow? How does a small $z$ help?
# 3. **GLaM's ratio.** For the "glam" config, how many experts per MoE layer would make the
#    active parameters 8% of the total, as in GLaM 64B/64E? Build it with
#    `T.get_config("glam", n_experts=...)` and count.
# 4. **Seeds and more z.** Repeat section 4 with `seed=1` and `seed=2` (a field of the
#    config): do the gaps in validation loss keep their sign? Then train "st-moe" with
#    `z_weight` 0.1 and 1.0. At what weight does the loss get worse, and what happens to
#    the load balance (`T.summary_table`)?
#
# ## 术语表 · Glossary
#
# | 中文 | English | here |
# | --- | --- | --- |
# | 解码器语言模型 | decoder-only language model | GPT-3, GLaM, our `TransformerLM` |
# | 隔层 MoE | MoE in every other layer | `moe_every=2` |
# | 激活参数 / 总参数 | active / total parameters | what one token uses / what the model stores |
# | 专家 | expert | one FFN of an MoE layer |
# | 路由器 | router | $W_r$ and its softmax |
# | 路由 z 损失 | router z-loss | mean of $\mathrm{logsumexp}(x)^2$ |
# | 对数配分函数 | log-partition function | $z = \log \sum_j e^{x_j}$ |
# | 训练不稳定 / 发散 | training instability / divergence | loss spikes, NaN |
# | 舍入误差 | roundoff error | rounding to the nearest representable number |
# | 半精度 (bfloat16) | half precision (bfloat16) | 8 significant bits, float32's range |
# | 辅助损失 | auxiliary loss | balance loss, z-loss |
