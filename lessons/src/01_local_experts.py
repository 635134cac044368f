# %% [markdown]
# # 01 · 奠基工作: Adaptive Mixtures of Local Experts (1991)
#
# **Paper.** R. A. Jacobs, M. I. Jordan, S. J. Nowlan and G. E. Hinton (1991), *Adaptive
# mixtures of local experts*, Neural Computation 3(1), 79-87. Data: G. E. Peterson and
# H. L. Barney (1952), *Control methods used in a study of the vowels*, JASA 24(2).
#
# **The idea in plain words.** Instead of one network that must learn everything, train
# several small networks, the **experts** (专家), and a **gating network** (门控网络) that looks at
# the input and decides how much to trust each expert. If the training signal is chosen
# well, each expert becomes responsible for one region of the input space ("local"), and
# the gate learns the borders: divide and conquer (分而治之), learned end to end. Every
# MoE layer of the later lessons, up to DeepSeek-V3, is this picture with a sparse gate.
#
# **What this lesson implements.** The cooperative loss (the paper's eq. 1), the
# competitive loss (eq. 3, the one used in their simulations), the gradients of both
# (derived by hand and checked against autograd), and the vowel experiment behind the
# paper's Table 1, at our scale.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import functional as F
from tinymoe import viz
from tinymoe.data import jacobs_1991_vowels
from tinymoe.models.vowel import SYSTEMS, VowelMixture, accuracy, jacobs_experiment, train_to_criterion
from tinymoe.moe import losses

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: 1 run per system, short trainings
N_RUNS = 1 if FAST else 10  # the paper used 25 runs per system
MAX_EPOCHS = 1500 if FAST else 3000
LONG_EPOCHS = 500 if FAST else 3000  # training past the criterion (section 6)
SEEDS = [0] if FAST else [0, 1, 2, 3, 4]
np.set_printoptions(precision=4, suppress=True)

# %% [markdown]
# ## 1. The model and the two losses
#
# For one training case with input $x$ and target vector $d$, expert $i$ outputs $o_i$
# (here a linear map, $o_i = x W_i + b_i$) and the gate outputs mixing proportions
#
# $$p_i = \frac{e^{u_i}}{\sum_j e^{u_j}}, \qquad u = x W_g + b_g \quad\text{(the gate logits).}$$
#
# **Cooperative loss (eq. 1).** Blend the experts, then compare with the target:
#
# $$E^{\text{coop}} = \Big\lVert d - \bar y \Big\rVert^2, \qquad \bar y = \sum_i p_i o_i .$$
#
# **Competitive loss (eq. 3).** Treat the gate as choosing *one* expert at random with
# probabilities $p_i$, and each expert as a Gaussian guess around $o_i$; minimise the
# negative log-likelihood of $d$:
#
# $$E^{\text{comp}} = -\log \sum_i p_i\, e^{-\frac12 \lVert d - o_i \rVert^2}.$$
#
# (The paper's eq. 2, $\sum_i p_i \lVert d - o_i\rVert^2$, is the step in between; exercise 2.)
# Both are in `tinymoe.moe.losses`, averaged over the $N$ cases of a batch:

# %%
print(inspect.getsource(losses.cooperative_loss))
print(inspect.getsource(losses.competitive_loss))

# %% [markdown]
# The code is the two equations with two guards. `_mean_over_tokens` is the mean over the
# $N$ cases (and 0 for an empty batch, not 0/0). The competitive loss first computes
# $m = \log \sum_i p_i e^{f_i}$, with $f_i = -\frac12 \lVert d - o_i \rVert^2$ (`fit`), as a
# plain number without gradient (`_log_mixture`), and returns
# $E = -\big(m + \log \sum_i p_i e^{f_i - m}\big)$: the same value and the same gradients
# (holding $m$ constant changes no gradient: the shift cancels), but the sum is now 1, so it cannot underflow to $\log 0$ when every
# expert is far off, and $p_i$ enters linearly, not through $\log p_i$, so a gate of
# exactly 0 still gets a finite gradient.
#
# ## 2. Their gradients, by hand
#
# **Cooperative.** $\bar y$ is linear in each $o_i$ with coefficient $p_i$, so
#
# $$\frac{\partial E^{\text{coop}}}{\partial o_i} = -2\, p_i\, (d - \bar y).$$
#
# Every expert is pushed along the **same** residual $d - \bar y$: whatever the others get
# wrong, expert $i$ tries to fix. The experts are coupled, and none of them is pushed to
# be right on its own. For the gate, $\partial E/\partial p_i = -2 (d - \bar y)\cdot o_i$, and the
# softmax Jacobian $\partial p_j / \partial u_i = p_j(\delta_{ij} - p_i)$ gives
#
# $$\frac{\partial E^{\text{coop}}}{\partial u_i} = -2\, p_i\, (d - \bar y)\cdot(o_i - \bar y).$$
#
# **Competitive.** Write $g_i = e^{-\frac12\lVert d - o_i\rVert^2}$ and define the
# **posterior** (后验概率)
#
# $$h_i = \frac{p_i\, g_i}{\sum_j p_j\, g_j},$$
#
# the probability that expert $i$ produced $d$, given the gate's prior $p$ and how close
# each expert came. Then $\partial g_i / \partial o_i = g_i (d - o_i)$ and
#
# $$\frac{\partial E^{\text{comp}}}{\partial o_i} = -h_i\, (d - o_i).$$
#
# Each expert sees only **its own** error, weighted by how responsible it is: an expert
# that is far off for this case (small $h_i$) is hardly changed, so it stays good at
# the cases it already owns. For the gate, $E^{\text{comp}} = -\log \sum_j e^{u_j} g_j + \log \sum_j e^{u_j}$, so
#
# $$\frac{\partial E^{\text{comp}}}{\partial u_i} = p_i - h_i:$$
#
# the gate is pulled towards the posterior. It learns to predict, from $x$ alone, which
# expert will be right.
#
# ## 3. Checking the derivations against autograd
#
# Random experts' outputs $o$ (N cases, E experts, 4 outputs), gate logits $u$ and targets
# $d$, in float64. The library's losses are means over the $N$ cases, so autograd returns
# $\frac1N$ times the per-case formulas above.

# %%
rng = np.random.default_rng(0)
N, E, O = 6, 3, 4
d = tm.tensor(rng.standard_normal((N, O)))  # float64
o = tm.tensor(rng.standard_normal((N, E, O)), requires_grad=True)
u = tm.tensor(rng.standard_normal((N, E)), requires_grad=True)


def max_error(autograd, by_hand):
    return np.abs(N * autograd - by_hand).max()


# cooperative, eq. 1
losses.cooperative_loss(d, o, F.softmax(u, axis=-1)).backward()
p = F.softmax(u, axis=-1).data
y_bar = (p[..., None] * o.data).sum(axis=1)  # (N, O)
residual = d.data - y_bar
coop_o = -2 * p[..., None] * residual[:, None, :]
coop_u = -2 * p * np.einsum("neo,no->ne", o.data - y_bar[:, None, :], residual)
print(f"cooperative  dE/do_i = -2 p_i (d - y_bar)          max |autograd - by hand| = {max_error(o.grad, coop_o):.1e}")
print(f"cooperative  dE/du_i = -2 p_i (d - y_bar).(o_i - y_bar) max |autograd - by hand| = {max_error(u.grad, coop_u):.1e}")

# competitive, eq. 3
o.grad = u.grad = None
losses.competitive_loss(d, o, F.softmax(u, axis=-1)).backward()
g = np.exp(-0.5 * ((d.data[:, None, :] - o.data) ** 2).sum(axis=-1))
h = p * g / (p * g).sum(axis=1, keepdims=True)  # the posterior, by hand
comp_o = -h[..., None] * (d.data[:, None, :] - o.data)
print(f"posterior    h_i by hand vs losses.posterior      max difference = "
      f"{np.abs(h - losses.posterior(d, o, F.softmax(u, axis=-1)).data).max():.1e}")
print(f"competitive  dE/do_i = -h_i (d - o_i)              max |autograd - by hand| = {max_error(o.grad, comp_o):.1e}")
print(f"competitive  dE/du_i = p_i - h_i                   max |autograd - by hand| = {max_error(u.grad, p - h):.1e}")

# %% [markdown]
# And the library's own losses against central finite differences (`tm.gradcheck`, from
# lesson 00), through the softmax gate:

# %%
for name, loss_fn in (("cooperative", losses.cooperative_loss), ("competitive", losses.competitive_loss)):
    ok = tm.gradcheck(lambda o, u, loss_fn=loss_fn: loss_fn(d, o, F.softmax(u, axis=-1)), {"o": o, "u": u})
    print(f"gradcheck {name} loss: {ok}")

# %% [markdown]
# **One case, two experts: who learns what?** Target $d = (1, 0)$. Expert A is nearly
# right, $o_A = (0.9, 0.1)$; expert B is wrong, $o_B = (0, 1)$; the gate is undecided,
# $p = (0.5, 0.5)$. The direction each expert moves in is minus its gradient:

# %%
d1 = tm.tensor(np.array([[1.0, 0.0]]))
o1 = tm.tensor(np.array([[[0.9, 0.1], [0.0, 1.0]]]), requires_grad=True)  # experts A, B
u1 = tm.tensor(np.zeros((1, 2)), requires_grad=True)  # p = (0.5, 0.5)
for name, loss_fn in (("cooperative", losses.cooperative_loss), ("competitive", losses.competitive_loss)):
    o1.grad = u1.grad = None
    loss_fn(d1, o1, F.softmax(u1, axis=-1)).backward()
    print(f"{name:<12} A moves {-o1.grad[0, 0]}, B moves {-o1.grad[0, 1]}, gate logits move {-u1.grad[0]}")
print("posterior h =", losses.posterior(d1, o1, F.softmax(u1, axis=-1)).data[0])

# %% [markdown]
# Cooperative: the blend is $\bar y = (0.45, 0.55)$, so **both** experts are pushed along
# the same residual, $(0.55, -0.55)$. A, already nearly right, is told to overshoot, to
# (1.45, -0.45) for a unit step, to make up for B. Competitive: the posterior gives A
# most of the responsibility ($h_A = 0.73$), and A moves only by $0.73 \times$ its own small
# error $(0.1, -0.1)$, straight towards $d$; B moves by $0.27\times$ its own error; and the gate
# logits move towards A by $h_A - p_A = 0.23$. As A improves, $h_A$ grows and B's share of
# this case shrinks further: repeated over many cases, this feedback is what makes the
# experts local.
#
# ## 4. The task: four vowels from two formants
#
# Peterson and Barney (1952) recorded 76 speakers (men, women, children) saying ten
# vowels twice and measured the formants, the resonances of the vocal tract. Jacobs et al.
# kept four vowels that overlap badly: [i] (heed), [ɪ] (hid), [ɑ] (hod), [ʌ] (hud), with
# only the first two formants F1 and F2 (in kHz) as inputs, 50 speakers for training and
# 25 for testing. `tinymoe.data.jacobs_1991_vowels` makes that split (the paper's list of
# speakers is not published, so ours is a deterministic choice with men, women and
# children in both halves; see its docstring).

# %%
x_train, y_train, x_test, y_test, classes = jacobs_1991_vowels()
print("classes:", classes)
print(f"train {x_train.shape} per class {np.bincount(y_train)} | test {x_test.shape} per class {np.bincount(y_test)}")

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, sharey=True)
for ax, (x, y, split) in zip(axes, ((x_train, y_train, "training (50 speakers)"), (x_test, y_test, "test (25 speakers)")), strict=True):
    for c, name in enumerate(classes):
        ax.scatter(*x[y == c].T, s=12, label=f"[{name}]")
    ax.set(xlabel="F1 (kHz)", ylabel="F2 (kHz)", title=f"Peterson & Barney vowels, {split}")
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The front vowels [i] and [ɪ] have a high F2, the back vowels [ɑ] and [ʌ] a low one; inside
# each pair the classes overlap, and the spread between speakers (a child's [ɪ] sits near a
# man's [i]) makes the task hard: no model in this lesson gets above 95% on the test speakers.
#
# ## 5. Table 1 at our scale: mixtures against backprop networks
#
# The systems (`tinymoe.models.vowel`): `VowelMixture(E)`, E linear experts (2 formants to
# 4 class scores) with a softmax gate, trained with the competitive loss on one-hot
# targets; and `BackpropNet(H)`, the paper's baseline, one hidden layer of H logistic
# units trained on squared error. `jacobs_experiment` trains each system from several
# seeds, full batch, one gradient step per epoch, until the **training accuracy reaches
# 88%**, and reports the epochs it took:

# %%
print(inspect.getsource(train_to_criterion))

# %% [markdown]
# The recipe is ours, not the paper's, and the numbers below depend on it:
# `jacobs_experiment` **standardises** the two formants (subtracts the training mean,
# divides by the training standard deviation; the paper fed the formants in kHz), trains
# every system with momentum 0.9 and learning rate 0.02, and we run 10 seeds instead of
# the paper's 25. We also add the two mixtures trained with the cooperative loss, which
# Table 1 does not have.

# %%
systems = {
    **SYSTEMS,
    "4 experts, cooperative": lambda: VowelMixture(4, loss="cooperative"),
    "8 experts, cooperative": lambda: VowelMixture(8, loss="cooperative"),
}
rows = jacobs_experiment(n_runs=N_RUNS, max_epochs=MAX_EPOCHS, systems=systems)

print(f"{'system':<24} {'reached':>7} {'epochs: mean':>12} {'sd':>6} {'se':>6} {'train':>6} {'test':>6} {'experts >1%':>11}")
for r in rows:
    se = r["epochs_sd"] / np.sqrt(r["reached"])
    in_use = "" if r["experts_in_use"] is None else f"{r['experts_in_use']:.1f}"
    print(f"{r['system']:<24} {r['reached']:>4}/{r['runs']:<2} {r['epochs_mean']:>12.0f} {r['epochs_sd']:>6.0f} {se:>6.0f} "
          f"{r['train_acc']:>6.1%} {r['test_acc']:>6.1%} {in_use:>11}")

# %%
paper = {"4 experts": (1124, 23), "8 experts": (1083, 12), "BP 6 hidden": (2209, 83), "BP 12 hidden": (2435, 124)}
ours = {r["system"]: r for r in rows}
names = list(paper)
pos = np.arange(len(names))
fig, ax = plt.subplots(figsize=(7, 4))
ax.bar(pos - 0.2, [paper[n][0] for n in names], 0.4, yerr=[paper[n][1] for n in names], capsize=3,
       label="Jacobs et al. 1991 (25 runs, raw formants)")
ax.bar(pos + 0.2, [ours[n]["epochs_mean"] for n in names], 0.4, yerr=[ours[n]["epochs_sd"] for n in names], capsize=3,
       label=f"tinymoe ({N_RUNS} runs, standardised, momentum; error bar = sd)")
ax.set_xticks(pos, names)
ax.set(ylabel="epochs to 88% training accuracy", title="Table 1: epochs to criterion")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# **The paper's Table 1 beside ours.** The paper's number in parentheses is the spread of
# its 25 runs; its caption, as we read it, calls it the standard error of the mean
# (sd / 5 for 25 runs), so we print our standard deviation and our standard error (se).
#
# | system | paper: train / test | paper: epochs to criterion | ours: train / test | ours: epochs, mean (sd; se), 10 runs |
# | --- | --- | --- | --- | --- |
# | 4 experts | 88% / 90% | 1124 (23) | 88.0% / 89.9% | 344 (126; 40) |
# | 8 experts | 88% / 90% | 1083 (12) | 88.0% / 90.5% | 423 (177; 56) |
# | backprop, 6 hidden | 88% / 90% | 2209 (83) | 88.0% / 92.0% | 1147 (302; 96) |
# | backprop, 12 hidden | 88% / 90% | 2435 (124) | 88.0% / 91.5% | 1275 (178; 56) |
# | 4 experts, cooperative | - | - | 88.0% / 91.0% | 141 (29; 9) |
# | 8 experts, cooperative | - | - | 88.0% / 90.7% | 243 (102; 32) |
#
# **What reproduces.** Every run of every system reached the criterion, and the test
# accuracies are all near 90%, as in the paper. The mixtures get there much faster than
# the backprop nets: 4 experts in 344 epochs against 1147 for 6 hidden units, a factor of
# 3.3 (the paper: 1124 against 2209, a factor of 2.0); 8 experts 2.7 times faster. The
# bigger backprop net is the slowest, as in the paper.
#
# **What does not, and why.** (1) All our epoch counts are smaller, the mixtures' about 3
# times and the backprop nets' about 2 times: we standardise the inputs and use momentum
# 0.9 (which multiplies the effective step size by up to 10), and our learning rate and
# initialisation are not the paper's. "Epochs to criterion" measures an optimiser as much
# as a model, so only the ratios are comparable. (2) In the paper 8 experts are slightly
# faster than 4; in ours they are slower (423 against 344), but the difference is within
# about one combined standard error of our 10 runs. (3) Our runs spread more (sd 126 for 4 experts): with 10
# runs instead of 25, a different speaker split (the paper's list is not published) and
# different initial weights, we cannot say more. (4) Our backprop nets generalise slightly
# better at the criterion (92.0% against 89.9% on the test speakers). (5) At the
# criterion, every mixture still gives every expert more than 1% of the gate
# ("experts >1%" = 4.0 and 8.0): the paper's "only 2-3 experts keep non-zero mixing
# proportions" is about fully trained systems, which is section 6.
#
# The cooperative mixtures, not in Table 1, are the fastest of all (141 epochs for 4
# experts). The paper prefers the competitive loss for what it does to the experts, not
# for speed; the next two sections show the difference.
#
# ## 6. Past the criterion: the gate switches experts off
#
# The experts-in-use column above is measured at the moment a mixture reaches 88%, a few
# hundred epochs in, when the gate has not finished sorting out its experts. The paper's
# remark is about trained systems, so we keep training: the same recipe (standardised
# inputs, full batch, SGD with momentum 0.9, learning rate 0.02) for a fixed number of
# epochs, recording each expert's **mixing proportion** (混合比例), its gate value
# averaged over the training set.

# %%
mean, std = x_train.mean(axis=0), x_train.std(axis=0)
X_train = tm.tensor((x_train - mean) / std)
X_test = tm.tensor((x_test - mean) / std)


def train_mixture(n_experts, loss, seed, epochs, lr=0.02):
    """One mixture, trained for a fixed number of epochs; returns it and its mixing proportions per epoch."""
    tm.manual_seed(seed)
    model = VowelMixture(n_experts, loss=loss)
    optimizer = tm.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    proportions = []
    for _ in range(epochs):
        optimizer.zero_grad()
        model.loss(X_train, y_train).backward()
        optimizer.step()
        with tm.no_grad():
            proportions.append(model.mixing_proportions(X_train))
    return model, np.array(proportions)


def gates(model, x):
    with tm.no_grad():
        return model.mixture.gates(x).data


runs = {}
for loss in ("competitive", "cooperative"):
    for n_experts in (4, 8):
        runs[loss, n_experts] = [train_mixture(n_experts, loss, seed, LONG_EPOCHS) for seed in SEEDS]

print(f"after {LONG_EPOCHS} epochs, {len(SEEDS)} seed(s) each")
print(f"{'loss':<12} {'E':>2} {'experts >1% (per seed)':>24} {'>5%':>12} {'mean max gate':>14} {'train':>6} {'test':>6}")
for (loss, n_experts), results in runs.items():
    above1 = [int((props[-1] > 0.01).sum()) for _, props in results]
    above5 = [int((props[-1] > 0.05).sum()) for _, props in results]
    max_gate = np.mean([gates(model, X_train).max(axis=-1).mean() for model, _ in results])
    train_acc = np.mean([accuracy(model, X_train, y_train) for model, _ in results])
    test_acc = np.mean([accuracy(model, X_test, y_test) for model, _ in results])
    print(f"{loss:<12} {n_experts:>2} {str(above1):>24} {str(above5):>12} {max_gate:>14.3f} {train_acc:>6.1%} {test_acc:>6.1%}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, loss in zip(axes, ("competitive", "cooperative"), strict=True):
    _, props = runs[loss, 8][0]
    for e in range(props.shape[1]):
        ax.semilogy(np.arange(1, len(props) + 1), props[:, e], label=f"expert {e}")
    ax.axhline(0.01, color="k", linestyle=":", linewidth=1)
    ax.set(xlabel="epoch", ylabel="mixing proportion (mean gate value)", title=f"8 experts, {loss} loss (seed {SEEDS[0]})")
axes[1].legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()

_, props = runs["competitive", 8][0]
below = {e: int(np.argmax(props[:, e] < 0.01)) + 1 for e in range(8) if props[-1, e] < 0.01}
print("competitive, 8 experts: epoch at which each losing expert fell below 1%:", below)

# %% [markdown]
# **The paper's "only 2-3 experts" reproduces.** After 3000 epochs with the competitive
# loss, every 4-expert mixture (5 seeds) gives more than 1% of the gate to exactly 2
# experts, and the 8-expert mixtures to 2, 2, 3, 2 and 2 experts. In the left plot (8
# experts, seed 0) two experts climb to about half of the cases each, and the other six
# fall below 1% one after the other, between epoch 887 and epoch 1767. The gate makes
# nearly hard decisions: its largest value averages 0.987 (4 experts) and 0.967 (8).
#
# The cooperative loss behaves differently: every expert keeps more than 1% (all 4 of
# 4, all 8 of 8, in every seed; 3 or 4 of them above 5%), and the gate blends, its
# largest value averaging only 0.75 (4 experts) and 0.72 (8). Nothing in eq. 1 rewards an
# expert for being right on its own, so the experts share the work. Both losses end
# at about the same accuracy (92.0-92.6% train, 93.5-94.1% test), so the difference is in
# *how* the problem is split, which the next plots show. (Note the accuracies are higher
# than in Table 1: these systems trained 3000 epochs instead of stopping at 88%.)
#
# ## 7. Where the experts work: decision regions and the gate's favourite expert
#
# `tinymoe.viz.decision_regions` colours the (F1, F2) plane by the predicted vowel (left)
# and by the expert with the largest gate value (right). The models take standardised
# inputs, so the prediction functions standardise the grid first; the axes stay in kHz.

# %%
def show_regions(model, title):
    def predicted_vowel(grid):  # grid: (n, 2) points in kHz
        with tm.no_grad():
            return model(tm.tensor((grid - mean) / std)).data.argmax(axis=-1)

    def favourite_expert(grid):
        return gates(model, tm.tensor((grid - mean) / std)).argmax(axis=-1)

    fig = viz.decision_regions(predicted_vowel, x_train, y_train, [f"[{c}]" for c in classes],
                               gate=favourite_expert, title=title)
    region_names = ([f"predicted [{c}]" for c in classes], [f"expert {e}" for e in range(model.mixture.n_experts)])
    for ax, names in zip(fig.axes, region_names, strict=True):  # a legend for the shaded regions too
        points_legend = ax.get_legend()
        handles, _ = ax.collections[0].legend_elements()  # one patch per colour band of the contour plot
        ax.legend(handles, names[: len(handles)], fontsize=7, loc="lower right")
        if points_legend is not None:
            ax.add_artist(points_legend)
    plt.show()


def expert_by_vowel(model):
    """Share of each vowel's training cases whose largest gate value is expert e."""
    favourite = gates(model, X_train).argmax(axis=-1)
    return np.array([[np.mean(favourite[y_train == c] == e) for e in range(model.mixture.n_experts)]
                     for c in range(len(classes))])


competitive_model = runs["competitive", 4][0][0]
show_regions(competitive_model, "4 experts, competitive")
print("rows: vowels", [f"[{c}]" for c in classes], "| columns: experts 0-3")
print(expert_by_vowel(competitive_model).round(2))

# %%
cooperative_model = runs["cooperative", 4][0][0]
show_regions(cooperative_model, "4 experts, cooperative")
print("rows: vowels", [f"[{c}]" for c in classes], "| columns: experts 0-3")
print(expert_by_vowel(cooperative_model).round(2))

# %% [markdown]
# **Competitive: two local experts, front and back vowels.** The gate splits the plane
# with one line between the two clusters: expert 3 takes 100% of the training cases of
# [i] and [ɪ] (the front vowels, high F2) and expert 0 takes 100% of [ɑ] and [ʌ] (the back
# vowels). Each expert then only has to separate one pair, which a linear map can do,
# and the class boundary is each expert's own straight line inside its region (left).
# One four-class problem became two two-class problems: this is the paper's point, that
# the procedure divides the task into subtasks simple enough for a linear expert. Experts
# 1 and 2 are left without data (expert 2 only owns an empty corner of the plane).
#
# **Cooperative: blended experts.** The gate's regions cut through the classes: [ɪ] is
# split 77% / 23% between experts 3 and 2, [ʌ] 72% / 28% between experts 0 and 2, and
# expert 2's band runs across the middle of the plane. The class boundaries (left) come
# from blends of several experts and are curved. The cooperative mixture is as accurate,
# but it is not a set of local experts: no expert can be read on its own.
#
# **Summary.** With our own autograd we derived and checked both losses' gradients, and
# at toy scale reproduced the paper's three findings on the vowel task: mixtures reach the
# criterion faster than backprop nets (3.3 times for 4 experts, the paper 2.0), only 2-3
# experts survive, and the competitive loss makes them local. The next lesson keeps the
# gate but makes it sparse (only the top k experts run), which is what lets MoE grow to
# thousands of experts.
#
# ## Exercises
#
# 1. **Raw formants.** Train `VowelMixture(4)` and `BackpropNet(6)` on the raw kHz inputs
#    (no standardisation) with the same recipe. How many epochs to 88% now, and at which
#    learning rates does each system stay stable? What does this say about comparing
#    "epochs to criterion" across papers?
# 2. **The paper's eq. 2.** Write $E = \sum_i p_i \lVert d - o_i\rVert^2$ with `tm.F` ops,
#    derive $\partial E/\partial o_i$ and $\partial E/\partial u_i$ by hand, check them with
#    `tm.gradcheck`, and train a 4-expert mixture with it. Is it as local as eq. 3 (mean
#    max gate, experts above 1%)?
# 3. **Where is the criterion?** Repeat section 5 with a criterion of 90% training
#    accuracy and `max_epochs=5000`. Which systems still reach it, and how do the epochs change?
# 4. **Noisy gate, sparse gate.** Keep only the top-1 gate value per case when *predicting*
#    with the trained competitive mixture (zero the other experts). How much accuracy does
#    that cost? This is the step towards the sparse MoE of lesson 02.
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 专家 | expert |
# | 局部专家 | local expert |
# | 门控网络 | gating network (gate) |
# | 混合比例 | mixing proportion |
# | 后验概率 | posterior probability ($h_i$) |
# | 合作损失 | cooperative loss (eq. 1) |
# | 竞争损失 | competitive loss (eq. 3) |
# | 负对数似然 | negative log-likelihood |
# | 分而治之 | divide and conquer |
# | 元音 / 共振峰 | vowel / formant (F1, F2) |
# | 反向传播网络 | backpropagation network |
# | 达标 (训练准则) | criterion (88% training accuracy) |
# | 决策区域 | decision region |
# | 标准化 | standardisation |
