# %% [markdown]
# # 09 · GPU 上的分发路径 · The dispatch path on a GPU
#
# **The question.** An MoE layer does two kinds of work. The experts multiply matrices:
# many arithmetic operations per byte, which GPUs are built for (cuBLAS does them for us,
# through `cupy.matmul`). Everything around the experts, that is routing, sorting tokens by
# expert, copying them into the experts' buffers and adding the answers back, does almost no
# arithmetic: it **moves bytes**. Written with generic array operations it takes many passes
# over memory and an atomic add per element; purpose-built **kernels** (核函数) can do each
# step in one pass. How close that comes to the speed at which the GPU copies memory is a
# measurement, which `benchmarks/gpu_dispatch.py` makes on a GPU.
#
# This lesson opens the four kernels of `tinymoe/kernels/` (CUDA C, compiled at run time by
# CuPy) and their NumPy **specs**, the readable twins the tests compare them with:
#
# | kernel | what it does | NumPy spec |
# | --- | --- | --- |
# | `router.cu` | softmax (or sigmoid) + top-k + renormalise + scale, and the backward | `tinymoe.kernels.spec.router_topk` |
# | `plan.cu` | `make_plan` as a counting sort: histogram, scan, ranks; capacity drops | `tinymoe.moe.make_plan` |
# | `permute.cu` | copy each token row into its k expert slots (16-byte accesses) | `tinymoe.moe.dispatch.Permute` |
# | `combine.cu` | $y_n = \sum_j w_{nj}\, ys_{\mathrm{row}(n,j)}$, one block per token, no atomics | `tinymoe.moe.dispatch.Unpermute` |
#
# By the end you will have: run the top-k of a warp lane by lane, walked the counting sort
# of the routing metadata step by step, counted the bytes each kernel must move for real
# model shapes, and placed the kernels on a **roofline** (屋顶线模型) next to the expert
# matmuls. Everything here runs on a CPU with the NumPy specs; on a machine with CuPy and a
# GPU the last section also runs the real kernels.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import tinymoe as tm
from tinymoe.kernels import registry, spec
from tinymoe.moe import TopKRouter, dispatch, make_plan

FAST = os.environ.get("TINYMOE_FAST") == "1"  # fast mode: smaller random checks
ON_GPU = tm.cuda_available()
np.set_printoptions(precision=3, suppress=True, linewidth=110)
print("GPU with CuPy here:", ON_GPU, "| the kernels' sources:", ", ".join(registry.SOURCES))


def show_kernel(file, start, lines):
    """Print `lines` lines of a kernel file, from the first line that contains `start`."""
    text = (registry.KERNEL_DIR / file).read_text().splitlines()
    first = next(i for i, line in enumerate(text) if start in line)
    print(f"--- {file}, line {first + 1} ---")
    print("\n".join(text[first: first + lines]))


# %% [markdown]
# ## 1. How a GPU runs a kernel, in four sentences
#
# A kernel is one function that thousands of **threads** (线程) run at once, each with its
# own index. Threads come in groups of 32 called **warps** (线程束), which execute one
# instruction together; a warp's threads (its **lanes**, 车道) can pass registers to each
# other directly (`__shfl_xor_sync`). Warps are grouped into **blocks** (线程块) that share a
# small fast **shared memory** (共享内存) and can wait for each other (`__syncthreads`).
# Memory is fastest when the 32 lanes of a warp touch 32 neighbouring addresses at once
# (**coalesced** access, 合并访存): then one transaction serves the whole warp.
#
# The design question of every kernel below is therefore the **launch layout**: which thread
# does which piece of work, so that loads are coalesced, no two threads write the same
# place (which would need slow **atomic** operations, 原子操作), and waiting is rare.
#
# ## 2. The router as one kernel: a warp per token
#
# The router of a Mixtral-style layer computes, for token $n$ with logits $x_n \in \mathbb{R}^E$,
#
# $$s_n = \mathrm{softmax}(x_n), \qquad \mathcal{T}_n = \mathrm{top}_k(s_n + b), \qquad
#   w_{nj} = \alpha\, \frac{s_{n,e_j}}{\sum_{i \in \mathcal{T}_n} s_{n,i} + \varepsilon}\quad (e_j \in \mathcal{T}_n),$$
#
# with the bias $b = 0$, scale $\alpha = 1$ and $\varepsilon = 0$ for Mixtral, and DeepSeek-V3's
# sigmoid scores, balancing bias $b$ and scale $\alpha = 2.5$ as the other case. The library's
# CPU routers do it in four autograd ops (softmax, top-k, sum, divide), each a full pass over
# memory. `router.cu` does it in one: **one warp per token**, lane $l$ holding experts
# $l, l + 32, l + 64, \dots$ in registers (up to 8 each, so $E \le 256$). The row max and sum
# of the softmax are warp reductions; the top-k is $k$ rounds of a warp-wide **argmax**.
#
# Its NumPy spec says the same in array language, operation for operation:

# %%
print(inspect.getsource(spec.router_topk))

# %% [markdown]
# First check that the spec *is* the library's router on the CPU: same probabilities,
# same experts, same weights, for a `TopKRouter` with random weights.

# %%
tm.manual_seed(0)
router = TopKRouter(d_model=16, n_experts=8, k=2)
x = tm.tensor(np.random.default_rng(0).standard_normal((1000, 16)).astype(np.float32))
routing = router(x)
scores, index, weight = spec.router_topk(routing.logits.data, 2, "softmax", normalize=True)
print("same experts for all 1000 tokens:", bool((index == routing.expert_index).all()))
print("largest weight difference       :", float(np.abs(weight - routing.weight.data).max()))

# %% [markdown]
# **The warp's argmax, lane by lane.** Each round, every lane proposes its best expert not
# yet chosen. Then five exchanges: lane $l$ compares its candidate with lane $l \oplus 16$'s
# (bitwise xor), keeps the better one, then with lane $l \oplus 8$, $\oplus 4$, $\oplus 2$,
# $\oplus 1$. After the five steps every lane holds the same winner: a **butterfly**
# reduction. "Better" means a larger value, or an equal value and a *lower expert id*: the
# CPU path's tie rule (a stable sort keeps equal values in index order), which the GPU must
# reproduce exactly or the two would route differently. The function below does what the
# warp does, with a NumPy array standing for the 32 lanes:

# %%
def beats(a, b):
    """(value, expert) a beats b: larger value, or equal value and lower expert id."""
    return a[1] >= 0 and (b[1] < 0 or a[0] > b[0] or (a[0] == b[0] and a[1] < b[1]))


def warp_top_k(choose, k, trace=False):
    """router.cu's top-k for one token: 32 lanes, lane l holding experts l, l + 32, ..."""
    n_experts = len(choose)
    taken = np.zeros(n_experts, bool)
    chosen = []
    for r in range(k):
        lanes = []
        for lane in range(32):  # each lane's proposal: its best untaken expert
            best = (0.0, -1)
            for e in range(lane, n_experts, 32):
                if not taken[e] and beats((choose[e], e), best):
                    best = (choose[e], e)
            lanes.append(best)
        for offset in (16, 8, 4, 2, 1):  # the butterfly: five register exchanges
            lanes = [max_of(lanes[lane], lanes[lane ^ offset]) for lane in range(32)]
            if trace and r == 0:
                print(f"after the exchange with lane l ^ {offset:2d}: {len(set(lanes))} distinct candidates")
        assert len(set(lanes)) == 1  # every lane agrees
        taken[lanes[0][1]] = True
        chosen.append(lanes[0][1])
    return chosen


def max_of(a, b):
    return a if beats(a, b) else b


logits = np.round(np.random.default_rng(1).standard_normal(40), 1)  # rounded: some exact ties
logits[[5, 37]] = logits.max()  # copy the largest logit: a tie for first place
probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
print("experts with the largest logit:", np.flatnonzero(logits == logits.max()).tolist())
print("warp top-4 :", warp_top_k(probs, 4, trace=True))
print("spec top-4 :", spec.router_topk(logits[None], 4, "softmax")[1][0].tolist())

# %% [markdown]
# Thirty-two proposals become one in five steps: 16, 8, 4, 2, then 1 distinct candidate
# (after the step with offset $m$, lanes $l$ and $l \oplus m$ hold the same candidate).
# Experts 5, 30 and 37 share the largest logit (30 had it; we copied it to 5 and 37), and
# both the warp and the spec list them in index order, 5, 30, 37, before expert 33. With
# $E = 40$, lanes 0-7 hold two experts each; the kernel keeps 8 register slots per lane
# whatever $E$ is, and slots past $E$ never win.
#
# The kernel itself, the round loop (`Candidate` carries the selection value, the unbiased
# score and the expert id through the shuffles):

# %%
show_kernel("router.cu", "unsigned taken = 0;", 18)

# %% [markdown]
# **Backward.** The router's gradient reaches the logits through the weights. With
# $u_r = \partial L / \partial s_{e_r}$ (for $\alpha s/(\sum s + \varepsilon)$:
# $u_r = \alpha\,(g_r - \sum_j g_j s_{e_j}/D)/D$, $D = \sum_j s_{e_j} + \varepsilon$),
# the softmax backward gives $\partial L/\partial x_e = s_e\,(u(e) - \sum_r u_r s_{e_r})$,
# where $u(e) = u_r$ if $e = e_r$ and 0 otherwise; for sigmoid scores it is
# $u(e)\, s_e (1 - s_e)$. The same warp computes it: lane $r < k$ holds choice $r$, and one
# shuffle per choice broadcasts $u_r$ to the lane that holds expert $e_r$. The spec and the
# library's autograd agree:

# %%
g = np.random.default_rng(2).standard_normal((1000, 2)).astype(np.float32)
routing = router(x)
routing.logits.retain_grad()
routing.weight.backward(g)
by_spec = spec.router_topk_backward(scores, index, g, "softmax", normalize=True)
print("largest d logits difference, spec vs autograd:", float(np.abs(by_spec - routing.logits.grad).max()))

# %% [markdown]
# ## 3. The routing metadata: a counting sort in three phases
#
# `make_plan` sorts the $N k$ **slots** (token $n$, choice $j$; slot id $nk + j$) by expert,
# **stably**, so that inside an expert the rows keep slot order. With few distinct keys
# ($E$ experts), the right sort is a **counting sort** (计数排序): count each key, take the
# running sum of the counts (a **prefix sum** or **scan**, 前缀和) to know where each key's
# rows start, then put each item at its key's start plus its **rank** among the earlier items
# with the same key.
#
# On a GPU, "earlier items" is the hard part: thousands of threads run at once. `plan.cu`
# cuts the slots into **tiles** (256 slots, one warp each) and runs three kernels:
#
# 1. **count**: each warp counts its tile per expert: a table $H[e, t]$ (expert $e$, tile $t$);
# 2. **scan**: one block takes the exclusive prefix sum of the table read **expert-major**
#    ($H[0, 0], H[0, 1], \dots, H[1, 0], \dots$). Entry $(e, t)$ of the result is the number of
#    slots of experts before $e$ plus the slots of expert $e$ in tiles before $t$: exactly
#    where tile $t$'s first expert-$e$ slot goes;
# 3. **place**: each warp walks its tile again, 32 slots at a time; a slot's position is the
#    scanned entry plus its rank inside the tile. Lanes find the other lanes holding the same
#    expert with one instruction (`__match_any_sync`) and count those at lower lanes.
#
# No atomics, no floating point: the plan is the same on every run, and the same as the
# CPU's. `tinymoe.kernels.spec.counting_sort_plan` performs the same phases in NumPy and
# keeps every intermediate table. Here it is on the five-token example of
# `tests/moe/test_dispatch.py`, with tiles of 4 slots so that there is more than one:

# %%
INDEX = np.array([[1, 0], [0, 1], [2, 1], [1, 0], [1, 0]])  # 5 tokens, top-2 of 3 experts
walk = spec.counting_sort_plan(INDEX, n_experts=3, tile=4)
print("slot             :", np.arange(10))
print("expert (key)     :", walk["keys"])
print("tile             :", np.arange(10) // 4)
print("histogram H[e, t] (rows: experts 0-2, columns: tiles 0-2):\n", walk["table"])
print("scanned, expert-major:\n", walk["scanned"])
print("rank in tile     :", walk["rank_in_tile"])
print("position         :", walk["position"])
print("order (slot of each buffer row):", walk["order"])
print("offsets          :", walk["offsets"])

# %% [markdown]
# Read the tables with slot 7 (token 3's second choice, expert 0, tile 1). The histogram
# says tile 0 holds 2 slots of expert 0, so the scanned entry $(0, 1)$ is 2: tile 1's expert-0
# slots start at row 2. Slot 7 is the first expert-0 slot in its tile (rank 0), so its row is
# 2, and `order[2] = 7`. Slot 4 (expert 2, tile 1): the scanned entry $(2, 1)$ is 9, because
# 4 + 5 slots of experts 0 and 1 come first and tile 0 has no expert-2 slot. The result is
# exactly `make_plan`'s:

# %%
plan = make_plan(INDEX, 3)
print("make_plan order:", plan.order, "| same as the walk:", bool((plan.order == walk["order"]).all()))

# %% [markdown]
# **Capacity.** With a capacity $C$ per expert (GShard), the first choices of all tokens are
# served before any second choice. The kernels simply run the count and scan phases a first
# time over the slots in that **priority order** (choice-major: all first choices in token
# order, then all second choices); a slot whose rank inside its expert reaches $C$ is dropped.
# Then the kept slots are placed as above, expert $e$'s rows starting at $eC$:

# %%
walk = spec.counting_sort_plan(INDEX, n_experts=3, capacity=2, tile=4)
print("priority walk, slot at each step:", (np.arange(10) % 5) * 2 + np.arange(10) // 5)
print("rank inside its expert          :", walk["priority_rank_in_expert"])
print("dropped (token x choice):\n", walk["dropped"].astype(int))
print("row (token x choice, -1 dropped):\n", walk["row"])
plan = make_plan(INDEX, 3, capacity=2)
print("same as make_plan:", all(bool((walk[name] == getattr(plan, name)).all())
                                 for name in ("order", "counts", "offsets", "row", "dropped")))

# %% [markdown]
# Expert 1 is wanted by tokens 0, 3 and 4 as a first choice (ranks 0, 1, 2 in the priority
# walk) and by tokens 1 and 2 as a second choice (ranks 3, 4): with $C = 2$, only tokens 0 and
# 3 keep it. Token 4 loses both of its experts; the residual connection carries it.
#
# Now a larger check against `make_plan`, with the choices of a real (untrained) router, and
# a picture of phase 1's table.

# %%
n_tokens = 2048 if FAST else 16384
rng = np.random.default_rng(3)
tm.manual_seed(3)
router = TopKRouter(d_model=32, n_experts=16, k=2)
routed = router(tm.tensor(rng.standard_normal((n_tokens, 32)).astype(np.float32)))
walk = spec.counting_sort_plan(routed.expert_index, 16, capacity=None)
plan = make_plan(routed.expert_index, 16)
print(f"{n_tokens} tokens, E = 16, k = 2: identical to make_plan:",
      all(bool((walk[name] == getattr(plan, name)).all()) for name in ("order", "counts", "offsets", "row")))
print("table:", walk["table"].shape, "(experts x tiles); slots per expert:", walk["counts"])

fig, ax = plt.subplots(figsize=(11, 3.6))
image = ax.imshow(walk["table"], aspect="auto", cmap="viridis")
ax.set(xlabel="tile t (256 consecutive slots, one warp)", ylabel="expert e",
       title="Phase 1 of plan.cu: slots of expert e in tile t (random router at initialisation)")
fig.colorbar(image, ax=ax, label="slots")
plt.show()

# %% [markdown]
# A router at initialisation is far from uniform: of the 32768 slots, expert 9 gets 2987 and
# expert 11 only 527 (the rows of the picture), and inside a row the count changes from tile
# to tile around the expert's mean (its total over the 128 tiles). The scan turns the 16 x 128
# table into each tile's starting positions in one pass; phase 3 never needs to look at
# another tile.

# %% [markdown]
# ## 4. Permute and combine: one block per token
#
# **Permute** copies token $n$'s row into the buffer rows of its kept slots,
# $xs_{\mathrm{row}(n,j)} = x_n$. **Unpermute + combine** adds the experts' answers back,
# $y_n = \sum_j w_{nj}\, ys_{\mathrm{row}(n,j)}$. Both kernels give **one block to each token**:
# the block's threads stride over the row, each handling 16 contiguous bytes (a `Pack`: 4
# float32 or 8 bfloat16 values, moved by one vector instruction), so a warp touches 512
# contiguous bytes at a time.
#
# - `permute_rows` loads each pack of $x_n$ **once** into registers and stores it $k$ times.
# - `unpermute_combine` keeps the running sum of its columns in float32 registers over the
#   $k$ choices and stores $y_n$ once. Because one block owns one output row, no two threads
#   ever add into the same place: **no atomics**, and no pass that sets $y$ to zero first (a
#   token whose slots were all dropped stores zeros).
#
# The usual array-library way, `y = zeros(...)` then `scatter_add(y, token_of_row, w * ys)`,
# writes $y$ twice and makes every add an atomic one (several rows of the buffer belong to
# the same token). The kernel `unpermute_combine` is one call to this device function (in
# `common.cuh`), which `permute_backward` calls too, with no weights (each weight 1):

# %%
show_kernel("common.cuh", "__device__ __forceinline__ void gather_sum_row(", 24)

# %% [markdown]
# The backward kernels have the same layout: `permute_backward` sums a token's $k$ copies'
# gradients (the same gather-sum, again no atomics), and `unpermute_backward` writes
# $\partial ys_{\mathrm{row}(n,j)} = w_{nj}\, \partial y_n$ and computes the router's signal
# $\partial w_{nj} = \langle \partial y_n, ys_{\mathrm{row}(n,j)} \rangle$ as a block-wide sum.
# Their spec is `Permute`/`Unpermute` in `tinymoe/moe/dispatch.py`, the code the CPU runs;
# on CuPy arrays the same `Function`s call the kernels instead:

# %%
print(inspect.getsource(dispatch.Unpermute.forward))

# %% [markdown]
# ## 5. Bytes moved: what each kernel cannot avoid
#
# None of these kernels computes much, so the floor under their running time is the bytes
# they must move, at the memory bandwidth. Counting each input read once and each output
# written once, for $T$ tokens of width $d$, $E$ experts, $k$ choices, element size $b$ bytes,
# 8-byte indices and float32 router math:
#
# | kernel | bytes moved |
# | --- | --- |
# | router | $4TE$ (logits) $+ 4TE$ (scores) $+ 12Tk$ (index, weight) |
# | routing metadata | $8Tk$ (ids) $+ Tk$ (drop mask) $+ 16Tk$ (row, order) $+ 8(2E+1)$ |
# | permute | $bTd$ (read once) $+ bTkd$ (k copies) $+ 8Tk$ |
# | unpermute + combine | $bTkd + bTd + bTk + 8Tk$ |
# | unpermute backward | $bTd + 2\,bTkd + 2\,bTk + 8Tk$ |
#
# For the shapes of `benchmarks/gpu_dispatch.py`, in bfloat16 ($b = 2$), next to the floating
# point operations of SwiGLU experts with hidden width $f$ (three matmuls of $2\,Tk\,d\,f$
# operations each, forward only). The "dispatch" and "experts" columns divide by an H100
# SXM's **spec-sheet** figures, 3.35 TB/s of memory bandwidth and 989 TFLOP/s of dense
# bfloat16 matmul: they are illustrative lower bounds from arithmetic, not measurements.

# %%
HBM_BYTES_PER_S = 3.35e12  # H100 SXM spec sheet: HBM3 bandwidth (illustrative, not measured)
BF16_FLOP_PER_S = 989e12  # H100 SXM spec sheet: dense BF16 tensor-core throughput (illustrative)
FP32_FLOP_PER_S = 67e12  # H100 SXM spec sheet: FP32 without tensor cores (illustrative)


def kernel_bytes(t, d, e, k, b):
    """Bytes each dispatch kernel must move (inputs read once, outputs written once)."""
    return {
        "router": 8 * t * e + 12 * t * k,
        "routing metadata": 25 * t * k + 8 * (2 * e + 1),
        "permute": b * t * d * (1 + k) + 8 * t * k,
        "unpermute + combine": b * (t * k * d + t * d + t * k) + 8 * t * k,
        "unpermute backward": b * (t * d + 2 * t * k * d + 2 * t * k) + 8 * t * k,
    }


def expert_cost(t, d, e, k, f, b):
    """FLOPs and least bytes of the SwiGLU experts' forward matmuls: weights + rows in and out."""
    return 3 * 2 * t * k * d * f, b * (3 * e * d * f + 2 * t * k * d)


SHAPES = {(8192, 1024, 8, 2): 2048, (16384, 4096, 8, 2): 14336, (4096, 2048, 128, 8): 512, (4096, 7168, 256, 8): 2048}
print(f"{'T, d, E, k':<21}{'f':>6}{'router':>8}{'metadata':>9}{'permute':>9}{'combine':>9}{'comb.bwd':>9}"
      f"{'dispatch':>10}{'experts':>9}  {'experts bound by':<17}{'rows/expert':>11}{'ratio':>9}")
for (t, d, e, k), f in SHAPES.items():
    moved = kernel_bytes(t, d, e, k, b=2)
    forward = ("router", "routing metadata", "permute", "unpermute + combine")
    dispatch_us = 1e6 * sum(moved[name] for name in forward) / HBM_BYTES_PER_S
    expert_flops, expert_bytes = expert_cost(t, d, e, k, f, b=2)
    compute_us, memory_us = 1e6 * expert_flops / BF16_FLOP_PER_S, 1e6 * expert_bytes / HBM_BYTES_PER_S
    mb = [v / 1e6 for v in moved.values()]
    print(f"{str((t, d, e, k)):<21}{f:>6}{mb[0]:>7.1f}M{mb[1]:>8.1f}M{mb[2]:>8.0f}M{mb[3]:>8.0f}M{mb[4]:>8.0f}M"
          f"{dispatch_us:>8.0f}µs{max(compute_us, memory_us):>7.0f}µs  "
          f"{'weights (memory)' if memory_us > compute_us else 'FLOPs (compute)':<17}{t * k // e:>11}"
          f"{dispatch_us / max(compute_us, memory_us):>9.0%}")

# %% [markdown]
# M = megabytes. "dispatch" adds the bytes of the forward kernels (router, metadata, permute,
# combine) at 3.35 TB/s; "experts" is the larger of the forward matmuls' FLOPs at 989 TFLOP/s
# and their bytes (the weights, the rows in and out) at 3.35 TB/s; "ratio" is the first over
# the second. All of it is spec-sheet arithmetic, not a timing.
#
# Three things stand out. The router and the metadata are small, under 9 MB against hundreds
# of megabytes for the rows, so they matter only if they are slow for some other reason (many
# small launches, a host synchronisation). Permute and combine grow with $k$: at $k = 8$ each
# token row is written or read 8 times. And the ratio depends on how many rows each expert
# gets. With 8 large experts (first two rows) an expert gets 2048 or 4096 rows, its matmuls
# are bound by their FLOPs, and the dispatch's floor is 15% and 2% of theirs. With many small
# experts an expert gets only 256 or 128 rows, so its matmuls are bound by reading its own
# weights, and the dispatch's floor grows to 29% of the experts' for $E = 128$, $f = 512$
# (5% for the last row, whose experts are four times wider): fine-grained experts
# (DeepSeekMoE, lesson 06) make the dispatch path matter. It is worth
# writing well, if it runs near the memory bandwidth; that is what
# `benchmarks/gpu_dispatch.py` measures, as each kernel's bandwidth divided by the bandwidth
# of a device-to-device copy timed in the same run.
#
# ## 6. The roofline: where each kernel can be at best
#
# The **arithmetic intensity** (算术强度) $I$ of a kernel is its floating-point operations per
# byte moved. At intensity $I$ no kernel can exceed $\min(P, I \cdot B)$ operations per
# second, with $P$ the peak arithmetic throughput and $B$ the memory bandwidth: the
# **roofline**. Below the ridge point $P/B$ a kernel is **memory-bound** (its time is its
# bytes divided by $B$); above it, **compute-bound**. Counting one operation per multiply,
# add, exp or comparison: the combine does $2k$ operations per output element, the router
# about 5 per logit (max, subtract, exp, add, divide), permute and the counting sort none at
# all.

# %%
t, d, e, k, f, b = 4096, 7168, 256, 8, 2048, 2  # DeepSeek-V3-like layer, bfloat16
moved = kernel_bytes(t, d, e, k, b)
flops = {
    "router": 5 * t * e,
    "unpermute + combine": 2 * t * k * d,
    "unpermute backward": 4 * t * k * d,
}
points = {name: flops[name] / moved[name] for name in flops}
expert_flops, expert_bytes = expert_cost(t, d, e, k, f, b)
points[f"experts, {t * k // e} rows each"] = expert_flops / expert_bytes
expert_flops, expert_bytes = expert_cost(16384, 4096, 8, 2, 14336, b)  # a Mixtral-like layer, for contrast
points[f"experts, {16384 * 2 // 8} rows each"] = expert_flops / expert_bytes

intensity = np.logspace(-2, 4, 200)
fig, ax = plt.subplots(figsize=(9, 5.5))
for peak, label in [(BF16_FLOP_PER_S, "BF16 tensor cores, 989 TFLOP/s"), (FP32_FLOP_PER_S, "FP32 CUDA cores, 67 TFLOP/s")]:
    ax.loglog(intensity, np.minimum(peak, intensity * HBM_BYTES_PER_S) / 1e12, label=f"roof: {label}")
label_offsets = {"router": (10, -30), "unpermute + combine": (-150, 12), "unpermute backward": (12, 2)}
for name, ai in points.items():
    roof = min(BF16_FLOP_PER_S if name.startswith("experts") else FP32_FLOP_PER_S, ai * HBM_BYTES_PER_S)
    ax.plot(ai, roof / 1e12, "o", ms=8)
    ax.annotate(f"{name}\nI = {ai:.2f}" if ai < 10 else f"{name}\nI = {ai:.0f}", (ai, roof / 1e12),
                textcoords="offset points", xytext=label_offsets.get(name, (8, -26)),
                arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.6})
ax.axvline(0.011, color="grey", ls=":")
ax.annotate("permute, counting sort:\n0 FLOP (pure data movement)", (0.011, 0.08), xytext=(6, 0),
            textcoords="offset points", color="grey")
ax.set(xlabel="arithmetic intensity I (FLOP per byte moved)", ylabel="attainable throughput (TFLOP/s)",
       title="Roofline of an H100-like GPU: illustrative spec-sheet numbers, not measurements\n"
             f"(3.35 TB/s HBM3; dispatch kernels of the T={t}, d={d}, E={e}, k={k} layer, bfloat16)",
       ylim=(0.03, 3000))
ax.legend(loc="upper left")
plt.show()
for name, ai in points.items():
    print(f"{name:<26} intensity {ai:8.2f} FLOP/byte")
print(f"ridge points: {FP32_FLOP_PER_S / HBM_BYTES_PER_S:.0f} (FP32) and {BF16_FLOP_PER_S / HBM_BYTES_PER_S:.0f} "
      "(BF16 tensor cores) FLOP/byte")

# %% [markdown]
# The dispatch kernels sit far left of the ridge points (20 and 295 operations per byte):
# 0.60 for the router, 0.89 and 0.94 for the combine and its backward, where the roof is the
# memory line. Doing their arithmetic faster would change nothing; only moving fewer bytes,
# or moving them closer to the full bandwidth, helps. So the kernels are designed around
# memory traffic: read each token row once (permute), fuse the router's four passes into
# one, sum in registers and write each output once (combine).
#
# The two expert points repeat the table's lesson. A matmul whose bytes are mostly weights
# does about one multiply-add per weight per row, so its intensity is close to its number of
# rows per expert: 123 for the DeepSeek-V3-like layer (128 rows each), left of the bfloat16
# ridge point and therefore limited by memory too; 3441 for the Mixtral-like layer (4096 rows
# each), far into the compute-bound region where the tensor cores set the limit.
#
# ## 7. On a GPU: the real kernels
#
# With CuPy and a GPU, the dispatch path uses the kernels by itself (the arrays are CuPy
# arrays). The cell below checks them against the specs on random inputs and times them
# with CUDA events. Without a GPU it says so and does nothing: every number above came from
# the NumPy specs, and no GPU number appears in this lesson unless this cell measured it.

# %%
if not ON_GPU:
    print("No GPU with CuPy here: the kernels were not run. On a GPU machine this cell checks router.cu, "
          "plan.cu, permute.cu and combine.cu against their specs and prints their measured times.")
else:
    import cupy as cp

    from tinymoe import kernels

    def gpu_ms(fn, repeats=50):
        for _ in range(5):
            fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return float(np.median(times))

    t, d, e, k = (1024, 512, 8, 2) if FAST else (8192, 1024, 8, 2)
    logits_np = np.random.default_rng(4).standard_normal((t, e)).astype(np.float32)
    x_np = np.random.default_rng(5).standard_normal((t, d)).astype(np.float32)
    logits, x_gpu = cp.asarray(logits_np), cp.asarray(x_np)
    s, idx, w = kernels.router_topk(logits, k)
    s_ref, idx_ref, w_ref = spec.router_topk(logits_np, k)
    print("router: same experts as the spec:", bool((idx.get() == idx_ref).all()),
          "| max weight difference:", float(np.abs(w.get() - w_ref).max()))
    gpu_plan = kernels.make_plan(idx, e)
    cpu_plan = make_plan(idx_ref, e)
    print("plan: same rows as make_plan:", bool((gpu_plan.row.get() == cpu_plan.row).all()))
    xs = kernels.permute(x_gpu, gpu_plan.row, t * k)
    print("permute: same buffer as the spec:", bool((xs.get() == dispatch.Permute(cpu_plan).forward(x_np)).all()))
    y = kernels.unpermute(xs, gpu_plan.row, w)
    y_ref = dispatch.Unpermute(cpu_plan).forward(dispatch.Permute(cpu_plan).forward(x_np), w_ref)
    print("combine: max difference from the spec:", float(np.abs(y.get() - y_ref).max()))
    print(f"measured on this GPU, T={t}, d={d}, E={e}, k={k}, float32, median of 50 (ms):")
    for name, fn in [("router", lambda: kernels.router_topk(logits, k)),
                     ("routing metadata", lambda: kernels.make_plan(idx, e)),
                     ("permute", lambda: kernels.permute(x_gpu, gpu_plan.row, t * k)),
                     ("unpermute + combine", lambda: kernels.unpermute(xs, gpu_plan.row, w))]:
        print(f"  {name:<22}{gpu_ms(fn):8.3f}")

# %% [markdown]
# **Summary.** The dispatch path of an MoE layer is data movement: a router, a sort by
# expert, a copy out and a weighted sum back. On a GPU each becomes one kernel whose launch
# layout serves the memory system: a warp per token for the router (registers and shuffles,
# ties broken exactly as on the CPU), tiles and a scan for the counting sort (deterministic,
# no atomics, no host synchronisation), and a block per token with 16-byte accesses for
# permute and combine (each row read or written once, sums in float32 registers). Each has a
# NumPy spec that it must match exactly (the plan, the copies) or to rounding (the sums), and
# the tests check that on random shapes. Whether they run near the copy bandwidth is a
# measurement: `python benchmarks/gpu_dispatch.py` on a GPU.
#
# ## Exercises
#
# 1. **Ties.** Change `beats` above so that ties go to the *highest* expert id, and run
#    `warp_top_k` on a row of equal logits. Which experts does it choose, and which test in
#    `tests/kernels/test_kernels.py` would catch the same change in `router.cu`?
# 2. **A different tile.** Run `spec.counting_sort_plan` on the 5-token example with
#    `tile=2` and with `tile=256`. The plan does not change: why not? How many entries does
#    the table of phase 1 have for $T = 16384$, $k = 2$, $E = 8$ and tiles of 256, and how many
#    for $E = 256$, $k = 8$, $T = 4096$?
# 3. **Capacity by hand.** For the 5-token example with $C = 1$, write down the priority walk,
#    each slot's rank inside its expert and the drop mask, then check with
#    `make_plan(INDEX, 3, capacity=1)`.
# 4. **Bytes in float32.** Recompute the table of section 5 with $b = 4$. Which kernels double
#    their bytes and which do not? For the last shape, what fraction of the experts' ideal
#    time (now at 67 TFLOP/s without tensor cores, or 495 TFLOP/s with TF32) does the dispatch
#    take?
#
# ## 术语表 · Glossary
#
# | 中文 | English |
# | --- | --- |
# | 核函数 | kernel |
# | 线程 / 线程束 / 线程块 | thread / warp (32 threads) / block |
# | 车道 | lane (a thread's index inside its warp) |
# | 寄存器 / 共享内存 | register / shared memory |
# | 合并访存 | coalesced memory access |
# | 原子操作 | atomic operation |
# | 计数排序 | counting sort |
# | 稳定排序 | stable sort |
# | 直方图 | histogram |
# | 前缀和 (扫描) | prefix sum (scan) |
# | 秩 (名次) | rank |
# | 置换 / 逆置换 | permute / unpermute |
# | 加权合并 | weighted combine |
# | 带宽 | bandwidth |
# | 算术强度 | arithmetic intensity |
# | 屋顶线模型 | roofline model |
# | 访存受限 / 计算受限 | memory-bound / compute-bound |
# | 主机同步 | host synchronisation |
