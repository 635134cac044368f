# %% [markdown]
# # 06 · DeepSeekMoE, V2, V3 (2024): 细粒度专家、共享专家与无辅助损失的负载均衡
#
# **Papers.**
# - D. Dai, C. Deng, C. Zhao, R. X. Xu, H. Gao, D. Chen, J. Li, W. Zeng, X. Yu, Y. Wu, Z. Xie,
#   Y. K. Li, P. Huang, F. Luo, C. Ruan, Z. Sui and W. Liang (2024), *DeepSeekMoE: Towards
#   Ultimate Expert Specialization in Mixture-of-Experts Language Models*, arXiv 2401.06066.
# - DeepSeek-AI (2024a), *DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts
#   Language Model*, arXiv 2405.04434.
# - DeepSeek-AI (2024b), *DeepSeek-V3 Technical Report*, arXiv 2412.19437; its balancing
#   method comes from L. Wang, H. Gao, C. Zhao, X. Sun and D. Dai (2024),
#   *Auxiliary-Loss-Free Load Balancing Strategy for Mixture-of-Experts*, arXiv 2408.15664.
#
# **The idea in plain words.** Three papers, three changes to the top-k MoE of lessons 03-05.
#
# 1. **DeepSeekMoE** cuts every expert into $m$ thinner ones and lets each token use $m$ times
#    as many (**fine-grained expert segmentation**, 细粒度专家切分): same parameters, same
#    compute, but far more ways to combine experts. It also keeps a few **shared experts**
#    (共享专家) that every token uses, so that common knowledge is not copied into every
#    routed expert.
# 2. **DeepSeek-V2** spreads the experts over devices and lets a token reach only the experts
#    on its $M$ best devices (**device-limited routing**, 设备受限路由), which caps the
#    communication per token; balance losses at the level of experts and of devices keep the
#    load even.
# 3. **DeepSeek-V3** drops the balance loss almost entirely. Each expert gets a **bias**
#    (偏置) that is added to its score *only when choosing* experts; after every step the bias of
#    an overloaded expert goes down and that of an idle expert goes up
#    (**auxiliary-loss-free load balancing**, 无辅助损失负载均衡). The combine weights never
#    see the bias, so balancing no longer pulls the model away from the task.
#
# **What this lesson implements.** The fine-grained and shared MoE layer with its parameter
# and combination counts; V2's device-limited routing and the expert- and device-level
# balance losses; V3's gate (eqs. 12-16 of the V3 report: sigmoid scores, selection on
# score + bias, weights from the unbiased scores, renormalised and scaled), the bias update,
# the group-limited selection and the sequence-wise loss (eqs. 17-20). All of it is
# `tm.moe.DeepSeekMoE` and `tm.moe.DeepSeekRouter`. The experiment trains the V3 layer with
# bias balancing against the same layer balanced by an auxiliary loss, and against no
# balancing at all.

# %%
import dataclasses
import math
import os

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe import backend, data, viz
from tinymoe import functional as F
from tinymoe import train as T
from tinymoe.moe import losses
from tinymoe.tensor import no_grad

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: short trainings
STEPS = 60 if FAST else 1000  # training steps of each model in section 5
EVAL_EVERY = 20 if FAST else 100
CONTROL_STEPS = 100 if FAST else 400  # iterations of the bias controller in section 4
np.set_printoptions(precision=3, suppress=True)


def n_params(module):
    return sum(p.data.size for p in module.parameters())


# %% [markdown]
# ## 1. Fine-grained experts and shared experts (DeepSeekMoE)
#
# A top-$K$ MoE with $N$ experts computes, for the input $u_t$ of token $t$,
#
# $$h_t = u_t + \sum_{i=1}^{N} g_{i,t}\,\mathrm{FFN}_i(u_t), \qquad
# g_{i,t} = \begin{cases} s_{i,t} & s_{i,t} \in \mathrm{TopK}(\{s_{j,t}\}_{j=1}^{N}, K)\\ 0 & \text{otherwise}\end{cases},
# \qquad s_{i,t} = \mathrm{softmax}_i(u_t^\top e_i).$$
#
# **Fine-grained segmentation.** Split each expert's hidden layer into $m$ slices: $mN$
# experts, each $1/m$ as wide, and route every token to $mK$ of them. Parameters and
# compute per token stay the same; what grows is the number of different expert sets a
# token can use, from $\binom{N}{K}$ to $\binom{mN}{mK}$.
#
# **Shared experts.** Set $K_s$ of the $mN$ experts aside and apply them to every token; the
# router picks the other $mK - K_s$ from the remaining $mN - K_s$:
#
# $$h_t = u_t + \sum_{i=1}^{K_s} \mathrm{FFN}_i(u_t) + \sum_{i=K_s+1}^{mN} g_{i,t}\,\mathrm{FFN}_i(u_t).$$
#
# In tinymoe, `DeepSeekMoE(d_model, d_hidden, n_routed, k, segments=m, n_shared=K_s)`
# builds `n_routed * m` routed experts of width `d_hidden / m`, routes to `k * m` of them, and
# adds `n_shared` shared experts of width `d_hidden / m` (held as one dense FFN: a sum of
# FFNs is one wider FFN). The residual $u_t$ belongs to the transformer block, not the
# layer. Let us count, for a width-64 model whose un-split layer has $N = 8$ SwiGLU experts of
# hidden width 128 and $K = 2$:

# %%
D, F_HIDDEN, N, K = 64, 128, 8, 2


def describe(name, layer, n_routed, k_routed, n_shared, width):
    expert = 3 * D * width  # SwiGLU: w1, w3 (d x f) and w2 (f x d)
    routed = n_params(layer.experts)
    shared = n_params(layer.shared) if layer.shared is not None else 0
    active = k_routed * expert + shared
    print(f"{name:<26}{n_routed:>4} x {width:<4}{k_routed:>7}{n_shared:>7}{routed + shared:>11,}"
          f"{active:>11,}{math.comb(n_routed, k_routed):>16,}")


print(f"{'layer':<26}{'routed x width':>14}{'active':>7}{'shared':>7}{'expert par.':>11}"
      f"{'active par.':>11}{'combinations':>16}")
describe("top-2 of 8 (m = 1)", tm.moe.DeepSeekMoE(D, F_HIDDEN, N, K, n_shared=0), 8, 2, 0, 128)
describe("m = 2", tm.moe.DeepSeekMoE(D, F_HIDDEN, N, K, n_shared=0, segments=2), 16, 4, 0, 64)
describe("m = 4", tm.moe.DeepSeekMoE(D, F_HIDDEN, N, K, n_shared=0, segments=4), 32, 8, 0, 32)
describe("m = 4, 1 shared (paper)", tm.moe.DeepSeekMoE(D, 32, 31, 7, n_shared=1), 31, 7, 1, 32)
print("\nthe paper's example: N = 16, K = 2 ->", f"{math.comb(16, 2):,}", "combinations;",
      "m = 4 ->", f"{math.comb(64, 8):,}")

# %% [markdown]
# Every row has the same expert parameters (196,608) and the same active parameters per
# token (49,152): fine-grained segmentation is free in parameters and FLOPs (the router
# grows a little, from $d \times 8$ to $d \times 32$). The number of expert sets grows from 28
# to over ten million. The paper's own example is printed under the table: 16 experts, top-2,
# give 120 combinations; cut into 64, top-8, they give 4,426,165,368. The table's last row
# follows the paper's recipe for shared experts: one of the 32 slices becomes shared, and the
# router picks 7 of the remaining 31, so the active count stays $mK = 8$ slices. `segments`
# always routes to a multiple of $m$ slices, so that row is built directly:
# `DeepSeekMoE(64, 32, 31, 7, n_shared=1)` (31 routed experts of width 32, 7 chosen, 1 shared).
#
# The layer's output is the routed sum plus the shared FFN. Check it against the dense oracle
# `experts.dense` (every expert on every token, weighted), on a layer with $m = 4$ and one
# shared expert added on top (8 routed slices + 1 shared per token):

# %%
tm.manual_seed(0)
layer = tm.moe.DeepSeekMoE(D, F_HIDDEN, N, K, n_shared=1, segments=4)
u = tm.tensor(np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32))
y, aux = layer(u)
r = layer.last_routing
tokens = F.reshape(u, (-1, D))
oracle = layer.experts.dense(tokens, r.expert_index, r.weight) + layer.shared(tokens)
print("routed experts:", layer.n_experts, " active per token:", r.k, " shared FFN width:", layer.shared.w1.weight.shape[1])
print("experts of token 0:", r.expert_index[0], " weights:", r.weight.data[0].round(3))
print("max |layer - (routed + shared)| =", float(np.abs(y.numpy().reshape(-1, D) - oracle.numpy()).max()))

# %% [markdown]
# ## 2. Device-limited routing (DeepSeek-V2)
#
# With expert parallelism (lesson 10), the experts live on $D$ devices, and a token whose $K$
# experts sit on $K$ different devices must be sent to all of them. V2 bounds that: for
# each token, first pick the $M$ devices holding its highest-scoring experts (each device
# scored by its best expert's $s_{i,t}$), then take the top $K$ among the experts on those
# $M$ devices only. Every other expert is **unreachable** for that token, however high its
# score. (V2 used $D = 8$ devices, $M = 3$.)
#
# In `DeepSeekRouter` the devices are `n_group` equal groups of consecutive experts, and
# `topk_group` is $M$. A hand-made token: 8 experts on 4 devices of 2, $K = 3$, $M = 2$. We set
# the router's weight to the identity so that the logits are exactly the token's entries.

# %%
def hand_router(score, n_group, topk_group, k=3, n_experts=8):
    router = tm.moe.DeepSeekRouter(n_experts, n_experts, k, score=score, n_group=n_group, topk_group=topk_group,
                                   normalize=False)
    router.w_gate.data = np.eye(n_experts, dtype=np.float32)  # logits = the token itself
    return router


token = tm.tensor(np.array([[2.0, 0.0, 1.9, 0.0, 1.8, 1.7, 0.0, 0.0]], np.float32))
plain = hand_router("softmax", n_group=1, topk_group=1)(token)
limited = hand_router("softmax", n_group=4, topk_group=2)(token)
s = plain.probs.numpy()[0]
print("scores s (softmax):      ", s.round(3))
print("device scores (max of 2):", s.reshape(4, 2).max(axis=1).round(3))
print("plain top-3:            experts", plain.expert_index[0])
print("device-limited (M = 2): experts", limited.expert_index[0])

# %% [markdown]
# The best devices are 0 (expert 0, $s = 0.25$) and 1 (expert 2, $0.23$); device 2's best
# expert scores $0.20$, so devices 2 and 3 are cut. Expert 4, the third best overall, is now
# unreachable, and the third slot goes to expert 1, which has one of the lowest scores.
#
# When does the limit change anything? The device of the $j$-th best expert is always among
# the $j$ best devices (a device scores as its best expert). So if $M \ge K$, every one of the
# top $K$ experts is on a kept device and nothing changes; only $M < K$ can move a token. For
# random tokens and a random router with 16 experts on 8 devices of 2 and $K = 4$:

# %%
x_random = tm.tensor(np.random.default_rng(1).standard_normal((4096, 16)).astype(np.float32))
tm.manual_seed(0)
free = tm.moe.DeepSeekRouter(16, 16, 4, score="softmax")
for m in (2, 3, 4, 8):
    capped = tm.moe.DeepSeekRouter(16, 16, 4, score="softmax", n_group=8, topk_group=m)
    capped.w_gate.data = free.w_gate.data  # the same router, now device-limited
    a, b = free(x_random).expert_index, capped(x_random).expert_index
    changed = np.mean(np.any(np.sort(a, axis=1) != np.sort(b, axis=1), axis=1))
    print(f"M = {m} of 8 devices: {changed:6.1%} of tokens get a different set of 4 experts")

# %% [markdown]
# For $M \ge K = 4$ nothing changes, as argued; for $M = 3$ a random router loses one of its
# top 4 for 55% of the tokens, for $M = 2$ almost always (97.8%). A random router spreads
# its favourites over all devices. V2 trains *with* the limit, so the router can adapt to
# it; the paper reports that with $M \ge 3$ (of 8 devices, $K = 6$ of 160 routed experts) the
# model performs roughly as well as with unrestricted top-$K$ routing.

# %% [markdown]
# ### The expert-level and device-level balance losses
#
# DeepSeekMoE and V2 balance with two auxiliary losses. With $N' = mN - K_s$ routed experts,
# $K' = mK - K_s$ chosen per token and $T$ tokens,
#
# $$\mathcal L_{\text{ExpBal}} = \alpha_1 \sum_{i=1}^{N'} f_i P_i, \qquad
# f_i = \frac{N'}{K' T}\sum_{t=1}^{T} \mathbb 1(\text{token } t \text{ chooses } i), \qquad
# P_i = \frac1T \sum_{t=1}^{T} s_{i,t},$$
#
# which is 1 at perfect balance (it is `losses.load_balancing_loss`, lesson 04's loss).
# Group the experts into $D$ devices $\mathcal E_1, \dots, \mathcal E_D$; the device-level
# loss averages $f$ and sums $P$ inside each device:
#
# $$\mathcal L_{\text{DevBal}} = \alpha_2 \sum_{d=1}^{D} f'_d P'_d, \qquad
# f'_d = \frac{1}{|\mathcal E_d|}\sum_{i \in \mathcal E_d} f_i, \qquad P'_d = \sum_{i \in \mathcal E_d} P_i .$$
#
# The device loss only cares about work per device: inside a device the experts may be as
# unequal as they like. A hand-made batch shows it: 8 tokens, 8 experts on 4 devices, $K = 1$,
# every token on the first expert of some device, two tokens per device.

# %%
index = np.array([[0], [0], [2], [2], [4], [4], [6], [6]])  # expert of each token
probs = tm.tensor(np.full((8, 8), 0.02, np.float32) + 0.84 * np.eye(8, dtype=np.float32)[index[:, 0]])  # rows sum to 1
f = 8 / (1 * 8) * np.bincount(index[:, 0], minlength=8)  # N'/(K'T) * count
P = probs.numpy().mean(axis=0)
print("f_i:", f, "  P_i:", P)
print(f"expert-level: by hand {np.sum(f * P):.3f}   library {losses.load_balancing_loss(probs, index, 8).item():.3f}")
f_dev, P_dev = f.reshape(4, 2).mean(axis=1), P.reshape(4, 2).sum(axis=1)
print(f"device-level: by hand {np.sum(f_dev * P_dev):.3f}   library "
      f"{losses.device_balance_loss(probs, index, 8, n_devices=4).item():.3f}")

# %% [markdown]
# The devices are perfectly balanced (device loss 1.00), while half the experts are idle
# (expert loss 1.84, where 1 is balance). DeepSeekMoE uses a small $\alpha_1$ (only to stop
# collapse) and a larger $\alpha_2$; V2 adds a third, communication-balance loss for the
# tokens each device receives (not implemented here). The named config `"deepseek-v2"` uses
# $\alpha_1 = \alpha_2 = 0.01$ with 16 fine-grained experts on 4 groups, $M = 2$.
#
# ## 3. The V3 gate: sigmoid scores, a bias for choosing, unbiased weights
#
# V3 computes each expert's affinity with a sigmoid instead of a softmax, adds a per-expert
# bias $b_i$ **only to choose** the top $K_r$, and weighs the chosen experts by their
# unbiased scores, renormalised (eqs. 15, 16 and 13 of the report):
#
# $$s_{i,t} = \sigma(u_t^\top e_i), \qquad
# g'_{i,t} = \begin{cases} s_{i,t} & s_{i,t} + b_i \in \mathrm{TopK}(\{s_{j,t} + b_j\}_{j=1}^{N_r}, K_r) \\ 0 & \text{otherwise}\end{cases},
# \qquad g_{i,t} = \gamma_{\text{scale}} \frac{g'_{i,t}}{\sum_j g'_{j,t}} .$$
#
# ($\gamma_{\text{scale}}$ is the released model's "routed scaling factor", 2.5, `routed_scale`
# here.) The bias is a buffer, not a parameter: no gradient ever reaches it. A token with
# 4 experts, $K_r = 2$:

# %%
router = tm.moe.DeepSeekRouter(4, 4, 2, score="sigmoid", routed_scale=2.5)
router.w_gate.data = np.eye(4, dtype=np.float32)
u_t = tm.tensor(np.array([[1.0, 0.8, 0.6, -1.0]], np.float32))


def show(router, title):
    r = router(u_t)
    print(f"{title}\n  bias {router.bias.data}  ->  experts {r.expert_index[0]}, weights {r.weight.data[0].round(4)}")
    return r


before = show(router, "no bias:")
s = before.probs.numpy()[0]
print("  scores s:", s.round(4), "  by hand:", (2.5 * s[:2] / s[:2].sum()).round(4))
router.bias.data = np.array([-0.1, 0.0, 0.1, 0.0], np.float32)
after = show(router, "bias lowers expert 0 and raises expert 2:")
print("  by hand:", (2.5 * s[[2, 1]] / s[[2, 1]].sum()).round(4), " (unbiased scores of experts 2 and 1)")
router.bias.data = np.array([0.05, 0.0, -0.05, 0.0], np.float32)
show(router, "a bias that does not change the choice:")
print("is the bias a parameter?", "bias" in dict(router.named_parameters()), "  a buffer?", "bias" in router.state_dict())

# %% [markdown]
# The bias moved the choice from experts {0, 1} to {2, 1}, but the weights of the chosen
# experts are computed from $s$ alone: expert 1 has $s = 0.690$ in both cases, and its weight
# only changed because its partner changed. A bias that leaves the choice alone leaves the
# weights exactly as they were. This is the point of the method: the bias steers tokens,
# it never scales an expert's output, and it puts no gradient into the model.
#
# ### Group-limited selection in V3
#
# V3 limits each token to $M = 4$ nodes, and scores a node by the **sum of its $K_r / M$
# highest scores** ($8 / 4 = 2$ in V3; in `DeepSeekRouter`, always the top 2 of the biased
# scores), not by its best one as V2 did. The same hand-made token as in section 2, now with
# sigmoid scores:

# %%
v3 = hand_router("sigmoid", n_group=4, topk_group=2)(token)
s3 = v3.probs.numpy()[0]
print("scores s (sigmoid):            ", s3.round(3))
print("V2-style device score (max):   ", s3.reshape(4, 2).max(axis=1).round(3))
print("V3 group score (sum of top 2): ", np.sort(s3.reshape(4, 2), axis=1)[:, -2:].sum(axis=1).round(3))
print("V2 keeps devices 0, 1 -> experts", limited.expert_index[0], ";  V3 keeps groups 2, 0 -> experts",
      v3.expert_index[0])

# %% [markdown]
# Group 2 has two good experts (4 and 5): its best one loses to groups 0 and 1, but its pair
# wins. When a token takes about two experts from each node it reaches, a node holding
# several good experts is worth more than a node with one star.
#
# ### The sequence-wise balance loss
#
# V3 keeps one tiny auxiliary loss as a safety net against extreme imbalance *inside one
# sequence* (eqs. 17-20), with $\alpha = 10^{-4}$ (the report calls it "extremely small"):
#
# $$\mathcal L_{\text{Bal}} = \alpha \sum_{i=1}^{N_r} f_i P_i, \qquad
# f_i = \frac{N_r}{K_r T} \sum_{t=1}^{T} \mathbb 1\big(s_{i,t} + b_i \in \mathrm{TopK}\big), \qquad
# s'_{i,t} = \frac{s_{i,t}}{\sum_j s_{j,t}}, \qquad P_i = \frac1T \sum_{t=1}^{T} s'_{i,t},$$
#
# for each sequence of $T$ tokens, averaged over the batch. The sigmoid scores are normalised
# per token ($s'$): without that, the loss could fall by pushing *all* scores towards 0
# instead of by balancing. Check it by hand on 2 sequences of 6 tokens:

# %%
tm.manual_seed(1)
layer = tm.moe.DeepSeekMoE(8, 16, 4, k=1, n_shared=0, segments=2)  # 8 experts, 2 chosen, sigmoid, alpha = 1e-4
x_seq = tm.tensor(np.random.default_rng(2).standard_normal((2, 6, 8)).astype(np.float32))
_, aux = layer(x_seq)
r = layer.last_routing
s_norm = (r.probs.numpy() / r.probs.numpy().sum(axis=1, keepdims=True)).reshape(2, 6, 8)
counts = np.zeros((12, 8))
np.put_along_axis(counts, r.expert_index, 1.0, axis=1)
f_seq = 8 / (2 * 6) * counts.reshape(2, 6, 8).sum(axis=1)
by_hand = np.mean(np.sum(f_seq * s_norm.mean(axis=1), axis=1))
print(f"sequence loss by hand {1e-4 * by_hand:.6f}   layer's aux['sequence'] {aux['sequence'].item():.6f}")

# %% [markdown]
# ## 4. The bias update: a controller, not a loss
#
# After every training step V3 counts how many tokens each expert received in the batch and
# moves each bias by a fixed step $\gamma$ (the report uses $\gamma = 0.001$ for most of
# training):
#
# $$b_i \leftarrow b_i + \gamma\, \mathrm{sign}\big(\bar c - c_i\big), \qquad \bar c = \frac1{N_r}\sum_j c_j ,$$
#
# so an overloaded expert ($c_i > \bar c$) becomes a little harder to choose and an idle one
# a little easier. `DeepSeekMoE.update_bias()` does this with the last batch's routing;
# `tinymoe.train` calls it after each optimiser step. To see the controller alone, freeze a
# router that is badly unbalanced (its inputs share a common direction, so some experts win
# for almost every token) and let only the bias move, with a large $\gamma = 0.01$:

# %%
tm.manual_seed(0)
frozen = tm.moe.DeepSeekMoE(16, 32, 8, k=1, n_shared=0, segments=2, bias_update=0.01)  # 16 experts, 2 chosen
rng = np.random.default_rng(3)
shift = rng.standard_normal(16).astype(np.float32)
cv, bias_path = [], []
for _ in range(CONTROL_STEPS):
    batch = tm.tensor(rng.standard_normal((512, 16)).astype(np.float32) + shift)  # a fresh batch each step
    with no_grad():
        frozen(batch)
    load = np.bincount(frozen.last_routing.expert_index.ravel(), minlength=16)
    cv.append(T.load_cv(load))
    frozen.update_bias()
    bias_path.append(frozen.router.bias.data.copy())
bias_path = np.array(bias_path)
print(f"load CV: step 0 {cv[0]:.2f}, step 50 {cv[50]:.2f}, last 50 steps {np.mean(cv[-50:]):.2f}")
print("final bias:", bias_path[-1])

fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
axes[0].plot(cv)
axes[0].set(xlabel="update", ylabel="CV of expert load", title="A frozen router balanced by its bias alone")
axes[1].plot(bias_path)
axes[1].set(xlabel="update", ylabel="bias $b_i$", title="The 16 biases ($\\gamma = 0.01$)")
fig.tight_layout()
plt.show()

# %% [markdown]
# No gradient and no loss: the biases alone take the load CV from 1.47 (a few experts get
# most of the tokens) to 0.15 within 50 updates, and it stays there (0.15 over the last 50).
# The final biases (from −0.21 to 0.57) are the router's preferences, measured and cancelled.
# Because every update moves every bias by exactly $\pm\gamma$, they never settle; they
# jitter around those values by about $\gamma$. The real $\gamma$ is small ($10^{-3}$), and V3
# sets it to 0 for the last 500B of its 14.8T training tokens. In a real model the router keeps learning
# while the biases chase it: that is the experiment below.
#
# ## 5. Experiment: bias balancing against an auxiliary loss
#
# The named config `"deepseek-v3"` is a 2-block transformer whose MoE layers have 16 routed
# experts of width 64 (8 experts split $m = 2$ ways), top-2, one shared expert, sigmoid
# scores, 4 groups with $M = 2$, $\gamma = 10^{-3}$ and the sequence loss at $\alpha = 10^{-4}$.
# We train four versions of it from the same seed (same initial weights, same batches):
#
# | run | bias update $\gamma$ | sequence loss | expert-level loss $\alpha_1$ |
# | --- | --- | --- | --- |
# | `v3-bias` (the named config) | $10^{-3}$ | $10^{-4}$ | 0 |
# | `aux-0.01` | 0 | 0 | 0.01 |
# | `aux-0.1` | 0 | 0 | 0.1 |
# | `no-balancing` | 0 | 0 | 0 |
#
# The expert-level loss on sigmoid scores uses the normalised $s'$, as the sequence loss does.
# `tinymoe.train` records each expert's share of every batch's assignments and the biases at
# every step (`history[step]["layers"][i]["load"]` and `["bias"]`).

# %%
v3_config = T.get_config("deepseek-v3", steps=STEPS, eval_every=EVAL_EVERY)
off = {**v3_config.layer_args, "bias_update": 0.0, "seq_aux_weight": 0.0}
configs = {
    "v3-bias": v3_config,
    "aux-0.01": dataclasses.replace(v3_config, layer_args={**off, "aux_weight": 0.01}),
    "aux-0.1": dataclasses.replace(v3_config, layer_args={**off, "aux_weight": 0.1}),
    "no-balancing": dataclasses.replace(v3_config, layer_args=off),
}
runs = {}
for name, config in configs.items():
    runs[name] = T.train(dataclasses.replace(config, name=name), progress=False)
    print(T.summary_table(runs[name]), "\n")

# %% [markdown]
# How uneven is a batch by chance alone? A router that picks 2 of 16 experts uniformly at
# random for the 1024 tokens of a batch still shows some spread; that is the floor of the
# per-batch CV:

# %%
sim = np.random.default_rng(0)
floor = np.mean([T.load_cv(np.bincount(np.argsort(sim.random((1024, 16)), axis=1)[:, :2].ravel(), minlength=16))
                 for _ in range(200)])
print(f"per-batch load CV of a uniformly random top-2 router: {floor:.3f}")


def smooth(values, window=25):
    return np.convolve(values, np.ones(window) / window, mode="valid") if len(values) > window else np.asarray(values)


fig, ax = plt.subplots(figsize=(8, 3.8))
part = STEPS // 5
print("mean per-batch load CV, steps:", "".join(f"{f'{i * part}-{(i + 1) * part}':>11}" for i in range(5)))
for name, run in runs.items():
    cv_steps = [np.mean([T.load_cv(layer["load"]) for layer in h["layers"]]) for h in run.history]
    print(f"{name:>30}", "".join(f"{np.mean(cv_steps[i * part : (i + 1) * part]):>11.3f}" for i in range(5)))
    ax.plot(smooth(cv_steps), label=name)
ax.axhline(floor, color="k", linestyle=":", label="random router (floor)")
ax.set(xlabel="training step", ylabel="CV of expert load (mean of 2 layers)",
       title="Load imbalance during training (moving average of 25 steps)")
ax.legend(loc="upper right", fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# The biases of the `v3-bias` run, step by step, in both MoE layers:

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3), sharey=True)
for i, ax in enumerate(axes):
    bias = np.array([h["layers"][i]["bias"] for h in runs["v3-bias"].history])
    ax.plot(bias, linewidth=1)
    ax.set(xlabel="training step", ylabel="bias $b_i$", title=f"v3-bias: the 16 biases of MoE layer {i}")
    print(f"MoE layer {i}: final biases from {bias[-1].min():.3f} to {bias[-1].max():.3f}")
fig.tight_layout()
plt.show()

# %%
for name in ("v3-bias", "aux-0.1", "no-balancing"):
    viz.expert_load_heatmap(runs[name], layer=0)
    plt.show()

# %% [markdown]
# Finally the model: validation loss (16 batches of 1024 characters, the same windows for
# every run), and the balance measured three ways: the per-batch CV and **MaxVio** (Wang et
# al. 2024: $\max_i c_i / \bar c - 1$, how much the busiest expert exceeds its fair share),
# averaged over the last 100 training steps, and the CV of the load over the whole validation
# set (6,000 characters, so sampling noise is small).

# %%
def validation_load(run, layer):
    """Each expert's share of the assignments of MoE layer `layer` over the whole validation set."""
    inputs, _ = data.sequential_windows(run.corpus.val_ids, run.config.context)
    counts = np.zeros(run.model.moe_layers()[layer].n_experts)
    run.model.eval()
    with no_grad():
        for start in range(0, len(inputs), 16):
            run.model(inputs[start : start + 16])
            counts += np.bincount(backend.to_numpy(run.model.moe_layers()[layer].last_routing.expert_index).ravel(),
                                  minlength=len(counts))
    run.model.train()
    return counts / counts.sum()


print(f"{'run':<14}{'val loss':>9}{'batch CV':>10}{'MaxVio':>8}{'val-set CV':>12}")
results = {}
for name, run in runs.items():
    val = T.evaluate(run.model, run.corpus, run.config, batches=16)["val_loss"]
    last = [layer["load"] for h in run.history[-100:] for layer in h["layers"]]
    batch_cv = np.mean([T.load_cv(load) for load in last])
    max_vio = np.mean([np.max(load) * len(load) - 1 for load in last])
    val_cv = np.mean([T.load_cv(validation_load(run, i)) for i in range(2)])
    results[name] = (val, batch_cv, max_vio, val_cv)
    print(f"{name:<14}{val:>9.4f}{batch_cv:>10.3f}{max_vio:>8.2f}{val_cv:>12.3f}")

viz.loss_curves(list(runs.values()), title="DeepSeek-V3 layer, four ways of balancing")
plt.show()

# %% [markdown]
# ## 6. What we see, and how it compares with the paper
#
# **Balance.** Without any balancing the load stays very uneven: over the last 100 steps
# the per-batch CV is 0.880 and MaxVio 2.43 (the busiest expert gets 3.4 times its fair
# share), and the validation set looks the same (CV 0.857). Every balanced run is far better,
# and in different ways:
#
# - *Over the whole validation set*, the bias gives the most even load: CV 0.078, against
#   0.099 for `aux-0.1` and 0.230 for `aux-0.01`. This is what V3 and Wang et al. (2024) claim:
#   bias balancing reaches a better balance than an auxiliary loss.
# - *Batch by batch*, the strong auxiliary loss is a little more even (CV 0.164, MaxVio 0.33)
#   than the bias (0.194, 0.37); both are above the floor of 0.082 that chance alone gives.
#   Batches differ in their mix of domains, and a bias that moves by 0.001 per step follows the
#   long-run load, not each batch; a loss acts on every token of every batch.
# - *Early in training*, the bias is slow: it starts at 0 and moves 0.001 per step, so over
#   the first 200 steps the per-batch CV of `v3-bias` is 0.84, hardly better than no balancing
#   (1.07), while `aux-0.1` is at 0.52 from the start. The heatmaps show it: in `v3-bias` one
#   expert of layer 0 takes up to a third of the tokens for the first ~200 steps, until its
#   bias has fallen far enough; in `no-balancing` the same expert stays the busiest to the
#   end, and a few others stay nearly idle. After 1000 steps the biases span −0.241 to 0.319
#   (layer 0) and −0.375 to 0.296 (layer 1), large next to sigmoid scores between 0 and 1, and
#   built up one step of $\gamma$ at a time.
#
# **The model.** Validation losses (16 batches, the same windows for every run): `v3-bias`
# 1.4261, `no-balancing` 1.4275, `aux-0.1` 1.4304, `aux-0.01` 1.4314. The bias run is the
# lowest and both auxiliary-loss runs are above the two runs without a loss, the direction
# the papers argue for; but the two auxiliary losses are not in the order of their strength
# (the weaker one, 0.01, ends higher than 0.1). The whole spread is 0.005 nats, from one
# seed per run; we have not shown that it is larger than the difference between two seeds
# of the same run (exercise 1), so at this scale the honest reading is *bias balancing
# balances as well as an auxiliary loss (better over the whole set) at no visible cost*, not
# *it gives a better model*. The V3 report's ablations, on models of billions of parameters
# trained on hundreds of billions of tokens, find the auxiliary-loss-free model better on most
# benchmarks.
#
# **Why the toy cannot show more.** In tinymoe a layer is dropless and runs in one process:
# an unbalanced layer loses no tokens and wastes no device, so imbalance costs nothing here,
# and even the unbalanced run has no dead expert. The reasons balance matters in practice
# (capacity limits, devices waiting for the busiest one) are absent, and what remains to
# compare is the price each method makes the model pay, which is tiny for both.
#
# ## Exercises
#
# 1. **Is the loss difference real?** Train `v3-bias` and `no-balancing` again with `seed=1`
#    (and 2). How large is the spread of the validation loss between seeds, compared with the
#    differences in section 5?
# 2. **The step size.** Train `v3-bias` with `bias_update` $= 10^{-2}$ and $10^{-4}$. Which one
#    balances faster? With a sign update the biases never settle: each step moves every bias
#    by exactly $\pm\gamma$. What does that mean for the smallest imbalance a large $\gamma$ can
#    reach?
# 3. **Device limits.** Train `"deepseek-v2"` with `topk_group` 1, 2 and 4 (of `n_group=4`).
#    Does limiting the groups cost validation loss at this scale? Use section 2's counting
#    code on the trained router to see how many tokens the limit actually moves.
# 4. **Fine-grained experts.** Train `"deepseek-v1"` with `segments` 1, 2 and 4, keeping
#    `k * segments` active slices of width `d_hidden / segments` (same active parameters).
#    Does the larger number of combinations lower the validation loss?
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 专家 / 路由专家 / 共享专家 | expert / routed expert / shared expert |
# | 细粒度专家切分 | fine-grained expert segmentation |
# | 组合数 | number of combinations |
# | 亲和度分数 | affinity score ($s_{i,t}$) |
# | 门控值 | gating value ($g_{i,t}$) |
# | 设备受限路由 / 节点受限路由 | device-limited routing / node-limited routing |
# | 专家级 / 设备级负载均衡损失 | expert-level / device-level balance loss |
# | 辅助损失 | auxiliary loss |
# | 无辅助损失负载均衡 | auxiliary-loss-free load balancing |
# | 偏置项 | bias term |
# | 序列级均衡损失 | sequence-wise balance loss |
# | 负载 / 负载均衡 | load / load balancing |
# | 变异系数 | coefficient of variation (CV) |
# | 专家专业化 | expert specialization |
