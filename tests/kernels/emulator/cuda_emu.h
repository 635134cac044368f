// cuda_emu.h: just enough of CUDA's execution model to run tinymoe's kernels on a CPU.
//
// Not a GPU and not fast: a test device. Every CUDA thread of a block is a fiber (its own
// stack) on one OS thread; a scheduler resumes them one at a time, and a fiber runs until
// it waits at a barrier or finishes. The grid's blocks run one after another, so a `static`
// array is exactly a block's shared memory. __syncthreads is a barrier over the block's
// threads; a warp's collectives (shuffles, __match_any_sync, __syncwarp) are barriers over
// its 32 threads with an exchange buffer.
//
// Races: launches alternate between two schedules (seeded, so a failure repeats): rounds
// over all threads in a shuffled order, and "warp priority", where the runnable thread of the
// highest-priority warp always goes next, so that one warp runs as far ahead of the others
// as the barriers allow; a missing barrier then shows up as a wrong result. A barrier that
// some thread never reaches (a divergent __syncthreads, a shuffle in a branch only part of
// the warp takes) is reported as a deadlock instead of hanging.
//
// A fiber starts with makecontext/swapcontext; after that, switches are _setjmp/_longjmp
// (swapcontext makes a system call per switch: 20 times slower).
//
// Compiled with the kernel sources by tests/kernels/emulated.py (g++ -std=c++20).
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#define TINYMOE_CPU_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct Barrier {
    unsigned expected, arrived = 0, generation = 0;
};

struct Warp {
    Barrier barrier{32};
    unsigned long long slot[2][32];  // double-buffered: one barrier per exchange suffices
};

struct Fiber {
    ucontext_t start;  // used once, to enter the fiber on its own stack
    jmp_buf resume;    // where the fiber waits
    std::unique_ptr<char[]> stack;
    dim3 thread;
    unsigned exchanges = 0;  // collectives this thread has done (picks the exchange buffer)
    bool started = false, done = false;
    const struct Barrier* waiting = nullptr;  // the barrier it waits at, and that barrier's
    unsigned wait_generation = 0;             // generation then: it may go on once that changes

    bool runnable() const { return !done && (waiting == nullptr || waiting_over()); }
    bool waiting_over() const;
};

inline dim3 blockIdx, blockDim, gridDim;
inline Fiber* current = nullptr;
inline jmp_buf scheduler;      // where the scheduler waits while a fiber runs
inline ucontext_t launcher;    // scratch for the first swapcontext into a fiber
inline Barrier* block_barrier = nullptr;
inline std::vector<Warp>* warps = nullptr;
inline unsigned long long launches = 0;  // picks the schedule and seeds its randomness

inline bool Fiber::waiting_over() const { return waiting->generation != wait_generation; }

#define threadIdx (current->thread)

inline void arrive_and_wait(Barrier& b) {
    if (++b.arrived == b.expected) {  // the last to arrive opens the barrier for the others
        b.arrived = 0;
        ++b.generation;
        return;
    }
    current->waiting = &b;
    current->wait_generation = b.generation;
    if (!_setjmp(current->resume)) _longjmp(scheduler, 1);  // the scheduler resumes us once it opens
    current->waiting = nullptr;
}

inline Warp& my_warp() { return (*warps)[threadIdx.x / 32]; }
inline unsigned my_lane() { return threadIdx.x % 32; }

inline void __syncthreads() { arrive_and_wait(*block_barrier); }
inline void __syncwarp(unsigned = 0xffffffffu) { arrive_and_wait(my_warp().barrier); }

// Every lane publishes its value, waits for the warp, then reads lane `source`'s value. The
// buffer alternates, so nobody overwrites a value before its readers have passed the next barrier.
template <typename T>
T exchange(T value, unsigned source) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    Warp& w = my_warp();
    auto& slots = w.slot[current->exchanges++ % 2];
    slots[my_lane()] = 0;
    std::memcpy(&slots[my_lane()], &value, sizeof(T));
    arrive_and_wait(w.barrier);
    T out;
    std::memcpy(&out, &slots[source], sizeof(T));
    return out;
}

template <typename T> T __shfl_sync(unsigned, T v, int lane) { return exchange(v, (unsigned)lane % 32); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int mask) { return exchange(v, my_lane() ^ (unsigned)mask); }
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned delta) {
    return exchange(v, my_lane() >= delta ? my_lane() - delta : my_lane());
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned delta) {
    return exchange(v, my_lane() + delta < 32 ? my_lane() + delta : my_lane());
}

template <typename T>
unsigned __match_any_sync(unsigned, T key) {
    Warp& w = my_warp();
    auto& slots = w.slot[current->exchanges++ % 2];
    unsigned long long mine = 0;
    std::memcpy(&mine, &key, sizeof(T));
    slots[my_lane()] = mine;
    arrive_and_wait(w.barrier);
    unsigned peers = 0;
    for (unsigned l = 0; l < 32; ++l)
        if (slots[l] == mine) peers |= 1u << l;
    return peers;
}

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, 8); return d; }

// float16 conversions (PTX cvt on the GPU): GCC's _Float16 rounds to nearest even too.
inline float emulated_half_to_float(unsigned short bits) { _Float16 h; std::memcpy(&h, &bits, 2); return (float)h; }
inline unsigned short emulated_float_to_half(float x) {
    _Float16 h = (_Float16)x;
    unsigned short bits;
    std::memcpy(&bits, &h, 2);
    return bits;
}

// ----------------------------------------------------------------------------- launching
// A kernel's arguments arrive as void* pointers to their values (as cuLaunchKernel takes them).
template <typename... A, std::size_t... I>
void call_with(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
}

inline void (*fiber_body)() = nullptr;  // what every fiber of the current block runs

inline void fiber_main() {
    fiber_body();
    current->done = true;
    _longjmp(scheduler, 1);  // never return: the context we came from is long gone
}

inline void resume(Fiber& f) {  // run f until it waits or finishes, then come back here
    current = &f;
    if (!_setjmp(scheduler)) {
        if (f.started) _longjmp(f.resume, 1);
        f.started = true;
        swapcontext(&launcher, &f.start);
    }
}

// Returns 0, or 1 if a block deadlocked (the message says where).
template <typename... A>
int run_grid(void (*kernel)(A...), unsigned grid, unsigned block, void** args) {
    static void (*the_kernel)(A...);
    static void** the_args;
    the_kernel = kernel;
    the_args = args;
    fiber_body = [] { call_with(the_kernel, the_args, std::index_sequence_for<A...>{}); };
    blockDim = dim3{block, 1, 1};
    gridDim = dim3{grid, 1, 1};
    const std::size_t stack_size = 64 * 1024;
    std::vector<Fiber> fibers(block);
    for (auto& f : fibers) f.stack.reset(new char[stack_size]);
    const bool warp_priority = launches % 2 == 1;
    std::mt19937 random(12345u + (unsigned)launches++);
    std::vector<unsigned> turn(block);  // round order, or priority order (warps, then lanes)
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = dim3{b, 1, 1};
        Barrier block_wide{block};
        std::vector<Warp> block_warps(block / 32);
        block_barrier = &block_wide;
        warps = &block_warps;
        for (unsigned t = 0; t < block; ++t) {
            Fiber& f = fibers[t];
            f.thread = dim3{t, 1, 1};
            f.exchanges = 0;
            f.started = f.done = false;
            f.waiting = nullptr;
            getcontext(&f.start);
            f.start.uc_stack.ss_sp = f.stack.get();
            f.start.uc_stack.ss_size = stack_size;
            f.start.uc_link = nullptr;
            makecontext(&f.start, fiber_main, 0);
        }
        std::vector<unsigned> warp_order(block / 32);
        for (unsigned w = 0; w < block / 32; ++w) warp_order[w] = w;
        std::shuffle(warp_order.begin(), warp_order.end(), random);
        for (unsigned i = 0; i < block; ++i) turn[i] = warp_order[i / 32] * 32 + i % 32;
        while (true) {
            bool ran = false;
            if (!warp_priority) std::shuffle(turn.begin(), turn.end(), random);
            for (unsigned t : turn) {
                if (!fibers[t].runnable()) continue;
                resume(fibers[t]);
                ran = true;
                if (warp_priority) break;  // start again from the highest priority
            }
            if (ran) continue;
            for (auto& f : fibers) {
                if (!f.done) {
                    std::fprintf(stderr, "deadlock in block %u: threads wait at a barrier that others never reach\n", b);
                    return 1;
                }
            }
            break;  // every thread finished
        }
    }
    current = nullptr;
    return 0;
}
