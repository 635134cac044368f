// combine.cu: unpermute + weighted combine, and its backward.
//
//   unpermute_combine   y[n] = sum over kept j of w[n, j] * ys[row[n, j]]
//   unpermute_backward  dys[row[n, j]] = w[n, j] * dy[n]
//                       dw[n, j]       = <dy[n], ys[row[n, j]]>      (0 for a dropped slot)
//
// row (N, k) is make_plan's buffer row of each slot, -1 where it was dropped. The spec is
// Unpermute in tinymoe/moe/dispatch.py.
//
// Launch layout: one block per token, grid = N; the block's threads stride over the row in
// 16-byte Packs (as in permute.cu), blockDim = packs rounded up to a warp, at most 256.
// Forward: each thread adds its columns over the k choices in fp32 registers and stores
// y[n] once. One block owns one output row, so there are no atomics, and no pass that zeroes
// y first (a token whose slots were all dropped stores zeros).
// Backward: each thread loads a pack of dy[n] once and, for every kept choice, stores w * dy
// into that slot's buffer row (each row belongs to one slot: again no atomics) and adds
// dy * ys to a partial dot product. The k dot products are summed over the block: a warp
// shuffle sum, then one thread per choice adds the warps' sums from shared memory. Choices are
// taken 8 at a time, so the partial sums stay in registers for any k.

#include "common.cuh"

#define COMBINE_MAX_THREADS 256
#define COMBINE_CHOICES_AT_ONCE 8

template <typename T, int P>
__global__ void __launch_bounds__(COMBINE_MAX_THREADS)
unpermute_combine(const T* __restrict__ ys, const i64* __restrict__ row, const T* __restrict__ weight,
                  T* __restrict__ y, int k, int d) {
    gather_sum_row<T, P>(ys, row, weight, y + (i64)blockIdx.x * d, blockIdx.x, k, d);
}

template <typename T, int P>
__global__ void __launch_bounds__(COMBINE_MAX_THREADS)
unpermute_backward(const T* __restrict__ grad_y, const T* __restrict__ ys, const i64* __restrict__ row,
                   const T* __restrict__ weight, T* __restrict__ grad_ys, T* __restrict__ grad_weight,
                   int k, int d) {
    typedef Pack<T, P> Packed;
    typedef typename Acc<T>::type A;
    __shared__ A warp_sums[COMBINE_MAX_THREADS / 32][COMBINE_CHOICES_AT_ONCE];
    const int token = blockIdx.x;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
    const Packed* g = reinterpret_cast<const Packed*>(grad_y + (i64)token * d);

    for (int first = 0; first < k; first += COMBINE_CHOICES_AT_ONCE) {  // same for every thread
        const int width = k - first < COMBINE_CHOICES_AT_ONCE ? k - first : COMBINE_CHOICES_AT_ONCE;
        A dot[COMBINE_CHOICES_AT_ONCE];  // this thread's part of <dy[n], ys[row]> for choice first + c
#pragma unroll
        for (int c = 0; c < COMBINE_CHOICES_AT_ONCE; ++c) dot[c] = A(0);

        for (int p = threadIdx.x; p < d / P; p += blockDim.x) {
            const Packed gp = g[p];  // one read of this pack of dy[n] for all the choices
#pragma unroll
            for (int c = 0; c < COMBINE_CHOICES_AT_ONCE; ++c) {
                if (c >= width) break;
                const i64 slot = (i64)token * k + first + c;
                const i64 r = row[slot];
                if (r < 0) continue;
                const A w = to_acc(weight[slot]);
                const Packed v = reinterpret_cast<const Packed*>(ys + r * d)[p];
                Packed out;
#pragma unroll
                for (int q = 0; q < P; ++q) {
                    const A gq = to_acc(gp.v[q]);
                    out.v[q] = from_acc<T>(w * gq);
                    dot[c] += gq * to_acc(v.v[q]);
                }
                reinterpret_cast<Packed*>(grad_ys + r * d)[p] = out;
            }
        }

        // Sum each dot product over the block: across the warp, then across the warps.
#pragma unroll
        for (int c = 0; c < COMBINE_CHOICES_AT_ONCE; ++c) {
            const A s = warp_sum(dot[c]);
            if (lane == 0) warp_sums[warp][c] = s;
        }
        __syncthreads();
        if (threadIdx.x < width) {
            const i64 slot = (i64)token * k + first + threadIdx.x;
            A total = A(0);
            for (int w = 0; w < n_warps; ++w) total += warp_sums[w][threadIdx.x];
            grad_weight[slot] = from_acc<T>(row[slot] >= 0 ? total : A(0));
        }
        __syncthreads();  // warp_sums is reused by the next group of choices
    }
}
