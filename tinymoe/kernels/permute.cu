// permute.cu: token rows into the expert-grouped buffer, and back (the backward).
//
//   permute_rows       xs[row[n, j]] = x[n]                  for every kept choice j of token n
//   zero_padding_rows  xs[e * C + c] = 0                     for c >= counts[e] (capacity mode)
//   permute_backward   dx[n] = sum over kept j of dxs[row[n, j]]
//
// row (N, k) is make_plan's buffer row of each slot, -1 where the slot was dropped. The spec
// is Permute in tinymoe/moe/dispatch.py.
//
// Launch layout (permute_rows, permute_backward): one block per token, grid = N. The block's
// threads stride over the row in Packs of P elements (16 bytes when the row width allows, see
// common.cuh); blockDim = the number of packs rounded up to a whole warp, at most 256. Thread
// i touches bytes 16 i .. 16 i + 15, so a warp reads or writes 512 contiguous bytes in one
// instruction: fully coalesced. permute_rows loads each pack of x[n] once into registers and
// stores it k times, so a token row is read from memory once, however many experts it visits.
// No atomics anywhere: each buffer row belongs to one slot, and in the backward each token
// sums only its own rows (at most k of them), in fp32.
//
// A copy does not care what its bytes mean, so permute_rows and zero_padding_rows are
// instantiated per element size (unsigned short / int / long long for 2, 4, 8 bytes), while
// permute_backward adds numbers and is instantiated per storage type.

#include "common.cuh"

#define PERMUTE_MAX_THREADS 256

template <typename Word, int P>
__global__ void __launch_bounds__(PERMUTE_MAX_THREADS)
permute_rows(const Word* __restrict__ x, const i64* __restrict__ row, Word* __restrict__ xs, int k, int d) {
    typedef Pack<Word, P> Packed;
    const int token = blockIdx.x;
    const int packs = d / P;
    const Packed* source = reinterpret_cast<const Packed*>(x + (i64)token * d);
    for (int p = threadIdx.x; p < packs; p += blockDim.x) {
        const Packed value = source[p];  // the one read of these bytes of x[n]
        for (int j = 0; j < k; ++j) {
            const i64 r = row[(i64)token * k + j];  // same address for the whole block: one broadcast
            if (r >= 0) reinterpret_cast<Packed*>(xs + r * d)[p] = value;
        }
    }
}

// Capacity mode: expert e owns rows e*C .. e*C + C - 1 of the buffer and fills the first
// counts[e]; the rest are padding, which the experts also multiply, so they must be zero.
// One block per buffer row (grid = E * C); the blocks of filled rows return at once. Cheaper
// than zeroing the whole buffer first: each byte is written once.
template <typename Word, int P>
__global__ void __launch_bounds__(PERMUTE_MAX_THREADS)
zero_padding_rows(Word* __restrict__ buffer, const i64* __restrict__ counts, int capacity, int d) {
    typedef Pack<Word, P> Packed;
    const i64 r = blockIdx.x;
    if (r % capacity < counts[r / capacity]) return;  // a filled row: not ours to touch
    Packed zero;
#pragma unroll
    for (int q = 0; q < P; ++q) zero.v[q] = Word(0);
    Packed* out = reinterpret_cast<Packed*>(buffer + r * d);
    for (int p = threadIdx.x; p < d / P; p += blockDim.x) out[p] = zero;
}

template <typename T, int P>
__global__ void __launch_bounds__(PERMUTE_MAX_THREADS)
permute_backward(const T* __restrict__ grad_xs, const i64* __restrict__ row, T* __restrict__ grad_x,
                 int k, int d) {
    // each token sums the gradients of its kept copies; every element of dx is written once
    gather_sum_row<T, P>(grad_xs, row, nullptr, grad_x + (i64)blockIdx.x * d, blockIdx.x, k, d);
}
