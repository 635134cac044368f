// common.cuh: what every kernel file of tinymoe shares.
//
//   - the storage types: float32, float64, float16 and bfloat16, with float32 arithmetic
//     for the 16-bit ones (float64 stays float64);
//   - Pack<T, P>: P elements read or written as one 16-byte access;
//   - sums and maxima across a warp (32 threads) with register shuffles.
//
// The sources include no CUDA header on purpose: the same text compiles with NVRTC (what
// CuPy uses at run time, which has no include path) and with nvcc (the compile test).
#ifndef TINYMOE_COMMON_CUH
#define TINYMOE_COMMON_CUH

typedef long long i64;  // buffer rows, slot ids, counts: int64 like NumPy's intp

#define FULL_MASK 0xffffffffu  // all 32 lanes of a warp take part in a shuffle

// ----------------------------------------------------------------------------- storage types
// float16 and bfloat16 are spelled as 16-bit patterns of our own (no cuda_fp16.h): a kernel
// loads the bits, widens them to float32, computes, and rounds back only when it stores.
struct half_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

// Acc<T>::type is the type a kernel adds in: float32 for every storage type but float64.
template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

// bfloat16 is the top half of a float32: widening is a shift.
__device__ __forceinline__ float to_acc(bf16_t x) { return __uint_as_float((unsigned int)x.bits << 16); }

#ifndef TINYMOE_CPU_EMULATION
// float16 <-> float32: one PTX instruction each way (cvt), round to nearest even.
__device__ __forceinline__ float to_acc(half_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
__device__ __forceinline__ unsigned short float_to_half_bits(float x) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
#else
// tests/kernels/emulator runs these sources on CPU threads, where PTX does not exist.
__device__ __forceinline__ float to_acc(half_t x) { return emulated_half_to_float(x.bits); }
__device__ __forceinline__ unsigned short float_to_half_bits(float x) { return emulated_float_to_half(x); }
#endif

// from_acc<T>(x): round an accumulator back to the storage type.
template <typename T> __device__ __forceinline__ T from_acc(typename Acc<T>::type x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }
template <> __device__ __forceinline__ half_t from_acc<half_t>(float x) {
    half_t h;
    h.bits = float_to_half_bits(x);
    return h;
}
template <> __device__ __forceinline__ bf16_t from_acc<bf16_t>(float x) {
    // Round to nearest, ties to even: add 0x7fff plus the lowest kept bit, then drop 16 bits.
    unsigned int u = __float_as_uint(x);
    bf16_t b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN: rounding could make it inf
        b.bits = (unsigned short)((u >> 16) | 0x0040u);
        return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.bits = (unsigned short)(u >> 16);
    return b;
}

// ----------------------------------------------------------------------------- 16-byte packs
// A Pack is P neighbouring elements with the alignment of its whole size, so that the
// compiler reads or writes it with one vector instruction (ld.global.v4 / st.global.v4 for
// 16 bytes). The launchers choose P = 16 / sizeof(T) when the row width d is a multiple
// of it (every row then starts on a 16-byte boundary), else P = 1.
template <typename T, int P>
struct alignas(sizeof(T) * P) Pack {
    T v[P];
};

// ----------------------------------------------------------------------------- warp reductions
// Butterfly: after 5 exchanges (offsets 16, 8, 4, 2, 1) every lane holds the total.
template <typename T>
__device__ __forceinline__ T warp_sum(T x) {
    for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

template <typename T>
__device__ __forceinline__ T warp_max(T x) {
    for (int offset = 16; offset > 0; offset /= 2) {
        const T other = __shfl_xor_sync(FULL_MASK, x, offset);
        x = other > x ? other : x;
    }
    return x;
}

// ----------------------------------------------------------------------------- gather-sum
// out[:] = sum over the kept choices j of token of w[token, j] * rows[row[token, j], :], in fp32
// registers, stored once (zeros when every choice was dropped). weight == nullptr means w = 1.
// One block owns the token; its threads stride over the row in Packs. Shared by the weighted
// combine (combine.cu) and permute's backward, where a token sums the gradients of its copies.
template <typename T, int P>
__device__ __forceinline__ void gather_sum_row(const T* __restrict__ rows, const i64* __restrict__ row,
                                               const T* __restrict__ weight, T* __restrict__ out_row,
                                               int token, int k, int d) {
    typedef Pack<T, P> Packed;
    typedef typename Acc<T>::type A;
    Packed* out = reinterpret_cast<Packed*>(out_row);
    for (int p = threadIdx.x; p < d / P; p += blockDim.x) {
        A sum[P];
#pragma unroll
        for (int q = 0; q < P; ++q) sum[q] = A(0);
        for (int j = 0; j < k; ++j) {
            const i64 r = row[(i64)token * k + j];
            if (r < 0) continue;  // a dropped slot adds exactly nothing (its weight is not read)
            const A w = weight ? to_acc(weight[(i64)token * k + j]) : A(1);
            const Packed v = reinterpret_cast<const Packed*>(rows + r * d)[p];
#pragma unroll
            for (int q = 0; q < P; ++q) sum[q] += w * to_acc(v.v[q]);
        }
        Packed result;
#pragma unroll
        for (int q = 0; q < P; ++q) result.v[q] = from_acc<T>(sum[q]);
        out[p] = result;
    }
}

#endif  // TINYMOE_COMMON_CUH
