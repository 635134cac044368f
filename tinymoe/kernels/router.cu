// router.cu: the fused router. One warp (32 threads) per token.
//
//   forward   scores = softmax(logits) or sigmoid(logits)                       (N, E)
//             index  = the k largest of scores + bias, best first, ties to the lowest expert (N, k)
//             weight = scores[index], divided by (their sum + eps) if normalize, times scale (N, k)
//   backward  d logits from d weight (N, E)
//
// The bias only chooses (DeepSeek-V3's load-balancing bias); the weights use the unbiased
// scores. Routers without a bias pass zeros. The NumPy spec, line for line:
// tinymoe/kernels/spec.py (router_topk, router_topk_backward).
//
// Launch layout: blocks of 128 threads = 4 warps, warp w of block b routes token 4 b + w;
// grid = ceil(N / 4). Lane l holds experts l, l + 32, l + 64, ... in registers (at most 8 each,
// so E <= 256). Why a warp: a router row is short (E numbers), too short to keep a block of
// threads busy, and too long for one thread to reduce quickly. In a warp the row's max and sum
// (softmax) and each round of the top-k search are 5 register shuffles, the loads are
// coalesced (lanes 0..31 read 32 neighbouring logits), and no shared memory or block-wide
// barrier is needed.

#include "common.cuh"

#define ROUTER_WARPS_PER_BLOCK 4
#define ROUTER_EXPERTS_PER_LANE 8  // E <= 32 * 8 = 256
#define ROUTER_MAX_K 32            // lane r keeps the r-th choice, so k <= 32

__device__ __forceinline__ float exp_of(float x) { return expf(x); }  // accurate expf, not __expf
__device__ __forceinline__ double exp_of(double x) { return exp(x); }

__device__ __forceinline__ float minus_infinity(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double minus_infinity(double) { return __longlong_as_double(0xfff0000000000000ll); }

// A candidate of the top-k search: its selection value (score + bias), its score, its expert.
template <typename T>
struct Candidate {
    T choose;
    T score;
    int expert;  // -1: no candidate
};

// a beats b if its selection value is larger, or equal with a lower expert id: the tie rule
// of the CPU path (a stable sort of -choose keeps equal values in index order).
template <typename T>
__device__ __forceinline__ bool beats(const Candidate<T>& a, const Candidate<T>& b) {
    if (a.expert < 0) return false;
    if (b.expert < 0) return true;
    return a.choose > b.choose || (a.choose == b.choose && a.expert < b.expert);
}

template <typename T>
__device__ __forceinline__ Candidate<T> shuffle_xor(const Candidate<T>& c, int offset) {
    Candidate<T> other;
    other.choose = __shfl_xor_sync(FULL_MASK, c.choose, offset);
    other.score = __shfl_xor_sync(FULL_MASK, c.score, offset);
    other.expert = __shfl_xor_sync(FULL_MASK, c.expert, offset);
    return other;
}

template <typename T>
__global__ void __launch_bounds__(ROUTER_WARPS_PER_BLOCK * 32)
router_topk(const T* __restrict__ logits, const T* __restrict__ bias, T* __restrict__ scores,
            i64* __restrict__ index, T* __restrict__ weight, int n_tokens, int n_experts, int k,
            int use_sigmoid, int normalize, T scale, T eps) {
    const int lane = threadIdx.x % 32;
    const int token = blockIdx.x * ROUTER_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (token >= n_tokens) return;  // the whole warp leaves together; there is no block barrier
    const T* x = logits + (i64)token * n_experts;
    const T NEG_INF = minus_infinity(T(0));

    // 1. Scores. Lane l holds experts e = l + 32 i; slots past E hold -inf (they never win).
    T score[ROUTER_EXPERTS_PER_LANE];
    T logit[ROUTER_EXPERTS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        logit[i] = e < n_experts ? x[e] : NEG_INF;
    }
    if (use_sigmoid) {
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) score[i] = T(1) / (T(1) + exp_of(-logit[i]));
    } else {  // softmax, as the CPU computes it: exp(x - max) / sum
        T row_max = NEG_INF;
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) row_max = logit[i] > row_max ? logit[i] : row_max;
        row_max = warp_max(row_max);
        T total = T(0);
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
            score[i] = lane + 32 * i < n_experts ? exp_of(logit[i] - row_max) : T(0);
            total += score[i];
        }
        total = warp_sum(total);
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) score[i] = score[i] / total;
    }
#pragma unroll
    for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        if (e < n_experts) scores[(i64)token * n_experts + e] = score[i];
    }

    // 2. Top-k: k rounds of a warp-wide argmax. Each lane proposes its best expert not yet
    // taken; 5 shuffles give every lane the best proposal; its owner marks it taken.
    T choose[ROUTER_EXPERTS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        choose[i] = e < n_experts ? score[i] + bias[e] : NEG_INF;
        if (choose[i] != choose[i]) choose[i] = NEG_INF;  // a NaN never wins (NumPy sorts it last)
    }
    unsigned taken = 0;  // bit i: expert lane + 32 i is already chosen
    Candidate<T> mine = {T(0), T(0), -1};  // lane r keeps the choice of round r
    for (int r = 0; r < k; ++r) {
        Candidate<T> best = {T(0), T(0), -1};
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
            const Candidate<T> c = {choose[i], score[i], lane + 32 * i};
            if (c.expert < n_experts && !((taken >> i) & 1u) && beats(c, best)) best = c;
        }
        for (int offset = 16; offset > 0; offset /= 2) {
            const Candidate<T> other = shuffle_xor(best, offset);
            if (beats(other, best)) best = other;
        }
        // every lane now holds the same winner (beats is a strict total order on experts)
        if (best.expert >= 0 && best.expert % 32 == lane) taken |= 1u << (best.expert / 32);
        if (lane == r) mine = best;
    }

    // 3. Weights: lanes 0..k-1 hold the k chosen scores.
    const T chosen_sum = warp_sum(lane < k ? mine.score : T(0));
    if (lane < k) {
        const T w = normalize ? mine.score / (chosen_sum + eps) : mine.score;
        index[(i64)token * k + lane] = mine.expert;
        weight[(i64)token * k + lane] = w * scale;
    }
}

// Backward. With s the scores, e_r the chosen experts and g_r = dL/d weight_r:
//
//   u_r = dL/d s_{e_r} = scale * g_r                                     (not normalised)
//       = scale * (g_r - sum_j g_j s_{e_j} / D) / D,  D = sum_j s_{e_j} + eps   (normalised)
//   softmax: dL/d logit_e = s_e (u(e) - sum_r u_r s_{e_r}),  u(e) = u_r if e = e_r, else 0
//   sigmoid: dL/d logit_e = u(e) s_e (1 - s_e)
//
// Same layout as the forward: lane r < k holds choice r, lane l writes experts l + 32 i.
// Every element of d logits is written (zeros included): no zero-initialisation pass.
template <typename T>
__global__ void __launch_bounds__(ROUTER_WARPS_PER_BLOCK * 32)
router_topk_backward(const T* __restrict__ scores, const i64* __restrict__ index,
                     const T* __restrict__ grad_weight, T* __restrict__ grad_logits, int n_tokens,
                     int n_experts, int k, int use_sigmoid, int normalize, T scale, T eps) {
    const int lane = threadIdx.x % 32;
    const int token = blockIdx.x * ROUTER_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (token >= n_tokens) return;
    const T* s = scores + (i64)token * n_experts;

    int my_expert = -1;
    T my_score = T(0), my_grad = T(0);
    if (lane < k) {
        my_expert = (int)index[(i64)token * k + lane];
        my_score = s[my_expert];
        my_grad = grad_weight[(i64)token * k + lane];
    }
    T u = scale * my_grad;  // dL/d s at the expert this lane chose
    if (normalize) {
        const T denom = warp_sum(my_score) + eps;
        const T c = warp_sum(my_grad * my_score) / denom;
        u = lane < k ? scale * (my_grad - c) / denom : T(0);
    }

    // u(e) in the lane-holds-expert layout: broadcast each choice from its lane.
    T du[ROUTER_EXPERTS_PER_LANE];
#pragma unroll
    for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) du[i] = T(0);
    for (int r = 0; r < k; ++r) {
        const int e = __shfl_sync(FULL_MASK, my_expert, r);
        const T ur = __shfl_sync(FULL_MASK, u, r);
#pragma unroll
        for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i)
            if (lane + 32 * i == e) du[i] = ur;
    }

    const T dot = warp_sum(lane < k ? u * my_score : T(0));  // sum_r u_r s_{e_r} (softmax only)
    T* gx = grad_logits + (i64)token * n_experts;
#pragma unroll
    for (int i = 0; i < ROUTER_EXPERTS_PER_LANE; ++i) {
        const int e = lane + 32 * i;
        if (e >= n_experts) continue;
        const T p = s[e];
        gx[e] = use_sigmoid ? du[i] * p * (T(1) - p) : p * (du[i] - dot);
    }
}
