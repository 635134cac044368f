// plan.cu: the routing metadata of make_plan, as a counting sort on the GPU.
//
// make_plan (tinymoe/moe/dispatch.py, the spec) sorts the N*k (token, choice) slots by expert,
// stably; slot id = token * k + choice. A counting sort does it in three phases, one kernel each:
//
//   1. plan_count  cut the slots into tiles of 256; each warp counts its tile's slots per
//                  expert: table[e][t] (an E x T table stored expert-major, T = number of tiles).
//                  A dropped slot counts for no expert.
//   2. plan_scan   one block replaces the table by its exclusive prefix sums in that same
//                  expert-major order: table[e][t] = (counted slots of experts < e)
//                  + (slots of expert e in tiles < t) = where tile t's first expert-e slot goes.
//                  offsets[e] = table[e][0], offsets[E] = the total, counts[e] = their difference
//   3. plan_place  each warp walks its tile again: a slot's position is table[e][t] plus its
//                  rank among the earlier expert-e slots of the same tile
//
// Stable, because ranks inside a tile follow slot order and the tiles are in slot order.
// Deterministic: no atomics and no floating point, so every run gives the same plan (and the
// same as the NumPy walk-through in tinymoe/kernels/spec.py, which mirrors these phases).
//
// Capacity (GShard priority): phases 1 and 2 first run over the slots in choice-major order
// (all first choices in token order, then all second choices, ...), and plan_capacity_drop
// drops every slot whose rank inside its expert reaches the capacity C. Then the kept slots go
// through phases 1-3 in slot order, and expert e's rows start at e * C.
//
// No phase reads anything back to the host: every size is known before launch (N*k slots, an
// E x T table), so the CPU only queues kernels.
//
// Launch layout (plan_count, plan_capacity_drop, plan_place): blocks of 4 warps; warp w of
// block b owns tile t = 4 b + w, 256 consecutive positions of the walk, taken in 8 chunks of
// 32 (lane l takes the chunk's l-th position; in slot order the 32 loads are neighbours, in
// the priority walk they are k slots apart). Why a warp per tile: one __match_any_sync ranks
// a whole chunk at once, and a warp keeps its order without any block-wide barrier. Each warp
// counts in its own row of shared memory, so warps never wait for one another. Why 256: the
// table has E x N*k/256 entries, small enough for one block to scan, and a tile is 8 chunks
// of work for a warp, enough to hide the latency of its loads.
// Launch layout (plan_scan): one block of 1024 threads, each scanning a contiguous run.

#include "common.cuh"

#define PLAN_TILE 256              // positions of the walk per tile (= per warp)
#define PLAN_WARPS_PER_BLOCK 4
#define PLAN_MAX_EXPERTS 1024      // shared counters: 4 warps x 1024 x 4 bytes = 16 KiB
#define PLAN_SCAN_THREADS 1024

// The slot at position `item` of the walk: slot order (item = slot) or GShard's priority order
// (choice-major: item = choice * N + token).
__device__ __forceinline__ int slot_at(int item, int n_tokens, int k, int choice_major) {
    return choice_major ? (item % n_tokens) * k + item / n_tokens : item;
}

// The expert a slot counts for, or n_experts (one past the last) if it takes no place: dropped,
// or an id outside [0, E). A bad id is flagged in *invalid and never used as an address.
__device__ __forceinline__ int expert_of(int slot, const i64* ids, const bool* dropped, int n_experts,
                                         i64* invalid) {
    if (dropped[slot]) return n_experts;
    const i64 e = ids[slot];
    if (e < 0 || e >= n_experts) {
        *invalid = 1;  // every writer writes the same 1: no atomic needed
        return n_experts;
    }
    return (int)e;
}

// The stable rank of this lane's slot among the slots of its expert that the warp has seen so
// far in its tile. running[e] counts expert e's slots in the earlier chunks; inside the chunk,
// __match_any_sync gives the lanes that hold the same expert, and those at lower lanes (earlier
// positions) come first. Then the highest lane of each group adds the group's size to
// running[e]. A warp-wide step: all 32 lanes must call it. Returns -1 for a slot with no place.
__device__ __forceinline__ int rank_in_tile(int expert, int n_experts, int* running) {
    const int lane = threadIdx.x % 32;
    const unsigned peers = __match_any_sync(FULL_MASK, expert);      // lanes with my expert
    const int before = __popc(peers & ((1u << lane) - 1u));          // ... at lower lanes
    const int rank = expert < n_experts ? running[expert] + before : -1;
    __syncwarp();                                                    // all reads of running[] done
    if (expert < n_experts && (peers >> lane) == 1u) running[expert] += __popc(peers);  // last of group
    __syncwarp();                                                    // visible to the next chunk
    return rank;
}

// Set this warp's counters to zero; they live in its own row of shared memory.
__device__ __forceinline__ int* zeroed_counters(int (*counters)[PLAN_MAX_EXPERTS], int n_experts) {
    int* running = counters[threadIdx.x / 32];
    for (int e = threadIdx.x % 32; e < n_experts; e += 32) running[e] = 0;
    __syncwarp();
    return running;
}

// Phase 1: table[e][t] = how many slots of tile t count for expert e.
__global__ void __launch_bounds__(PLAN_WARPS_PER_BLOCK * 32)
plan_count(const i64* __restrict__ ids, const bool* __restrict__ dropped, int n_tokens, int k,
           int n_experts, int choice_major, int* __restrict__ table, i64* __restrict__ invalid) {
    __shared__ int counters[PLAN_WARPS_PER_BLOCK][PLAN_MAX_EXPERTS];
    const int n_slots = n_tokens * k, n_tiles = (n_slots + PLAN_TILE - 1) / PLAN_TILE;
    const int tile = blockIdx.x * PLAN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (tile >= n_tiles) return;  // the whole warp; this kernel has no block barrier
    int* running = zeroed_counters(counters, n_experts);
    for (int item = tile * PLAN_TILE + threadIdx.x % 32; item < (tile + 1) * PLAN_TILE; item += 32) {
        const int expert = item < n_slots
            ? expert_of(slot_at(item, n_tokens, k, choice_major), ids, dropped, n_experts, invalid)
            : n_experts;
        rank_in_tile(expert, n_experts, running);  // only the counting matters here
    }
    for (int e = threadIdx.x % 32; e < n_experts; e += 32) table[(i64)e * n_tiles + tile] = running[e];
}

// Phase 2: exclusive prefix sums of the E x T table, in place, expert-major; then the offsets
// and counts. Thread i owns a contiguous run of the table: it sums its run, the block scans the
// 1024 run sums (inside each warp with shuffles, then across the 32 warp totals), and each
// thread rewrites its run starting from its own prefix.
__global__ void __launch_bounds__(PLAN_SCAN_THREADS)
plan_scan(int* __restrict__ table, int n_experts, int n_tiles, i64* __restrict__ offsets,
          i64* __restrict__ counts) {
    __shared__ int warp_prefix[PLAN_SCAN_THREADS / 32];
    __shared__ int total;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const i64 length = (i64)n_experts * n_tiles;
    const i64 per_thread = (length + PLAN_SCAN_THREADS - 1) / PLAN_SCAN_THREADS;
    i64 begin = threadIdx.x * per_thread, end = begin + per_thread;
    if (begin > length) begin = length;
    if (end > length) end = length;

    int run_sum = 0;
    for (i64 i = begin; i < end; ++i) run_sum += table[i];

    int inclusive = run_sum;  // inclusive scan of the run sums inside the warp
    for (int offset = 1; offset < 32; offset *= 2) {
        const int other = __shfl_up_sync(FULL_MASK, inclusive, offset);
        if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_prefix[warp] = inclusive;  // the warp's total, for now
    __syncthreads();
    if (warp == 0) {  // scan the 32 warp totals the same way
        const int warp_total = warp_prefix[lane];
        int warps_inclusive = warp_total;
        for (int offset = 1; offset < 32; offset *= 2) {
            const int other = __shfl_up_sync(FULL_MASK, warps_inclusive, offset);
            if (lane >= offset) warps_inclusive += other;
        }
        warp_prefix[lane] = warps_inclusive - warp_total;  // slots in the warps before this one
        if (lane == 31) total = warps_inclusive;
    }
    __syncthreads();

    int running = warp_prefix[warp] + inclusive - run_sum;  // slots before this thread's run
    for (i64 i = begin; i < end; ++i) {
        const int count = table[i];
        table[i] = running;
        running += count;
    }
    __syncthreads();  // the whole table is scanned before anyone reads table[e][0]

    for (int e = threadIdx.x; e <= n_experts; e += PLAN_SCAN_THREADS) {
        const i64 start = e < n_experts ? table[(i64)e * n_tiles] : total;
        offsets[e] = start;
        if (e < n_experts) {
            const i64 next = e + 1 < n_experts ? table[(i64)(e + 1) * n_tiles] : total;
            counts[e] = next - start;
        }
    }
}

// Capacity, phase 3: walk in GShard's priority order; a slot's rank inside its expert is
// table[e][t] - offsets[e] + its rank in the tile; it is dropped once that reaches the capacity.
__global__ void __launch_bounds__(PLAN_WARPS_PER_BLOCK * 32)
plan_capacity_drop(const i64* __restrict__ ids, const bool* __restrict__ dropped_before, int n_tokens,
                   int k, int n_experts, int capacity, const int* __restrict__ table,
                   const i64* __restrict__ offsets, bool* __restrict__ dropped, i64* __restrict__ invalid) {
    __shared__ int counters[PLAN_WARPS_PER_BLOCK][PLAN_MAX_EXPERTS];
    const int n_slots = n_tokens * k, n_tiles = (n_slots + PLAN_TILE - 1) / PLAN_TILE;
    const int tile = blockIdx.x * PLAN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (tile >= n_tiles) return;
    int* running = zeroed_counters(counters, n_experts);
    for (int item = tile * PLAN_TILE + threadIdx.x % 32; item < (tile + 1) * PLAN_TILE; item += 32) {
        const int slot = item < n_slots ? slot_at(item, n_tokens, k, 1) : -1;
        const int expert = slot >= 0 ? expert_of(slot, ids, dropped_before, n_experts, invalid) : n_experts;
        const int rank = rank_in_tile(expert, n_experts, running);
        if (slot < 0) continue;
        dropped[slot] = expert == n_experts ||
                        table[(i64)expert * n_tiles + tile] - offsets[expert] + rank >= capacity;
    }
}

// Phase 3: every kept slot gets its buffer row; the walk is in slot order. position =
// table[e][t] + rank in tile is the slot's place in the expert-sorted list: the row of the
// dropless buffer, and order[position] = slot. With a capacity (capacity > 0) expert e's rows
// start at e * C instead: row = e * C + (position - offsets[e]). Dropped slots get row -1.
__global__ void __launch_bounds__(PLAN_WARPS_PER_BLOCK * 32)
plan_place(const i64* __restrict__ ids, const bool* __restrict__ dropped, int n_tokens, int k,
           int n_experts, int capacity, const int* __restrict__ table, const i64* __restrict__ offsets,
           i64* __restrict__ row, i64* __restrict__ order, i64* __restrict__ invalid) {
    __shared__ int counters[PLAN_WARPS_PER_BLOCK][PLAN_MAX_EXPERTS];
    const int n_slots = n_tokens * k, n_tiles = (n_slots + PLAN_TILE - 1) / PLAN_TILE;
    const int tile = blockIdx.x * PLAN_WARPS_PER_BLOCK + threadIdx.x / 32;
    if (tile >= n_tiles) return;
    int* running = zeroed_counters(counters, n_experts);
    for (int slot = tile * PLAN_TILE + threadIdx.x % 32; slot < (tile + 1) * PLAN_TILE; slot += 32) {
        const int expert = slot < n_slots ? expert_of(slot, ids, dropped, n_experts, invalid) : n_experts;
        const int rank = rank_in_tile(expert, n_experts, running);
        if (slot >= n_slots) continue;
        if (expert == n_experts) {
            row[slot] = -1;
            continue;
        }
        const i64 position = table[(i64)expert * n_tiles + tile] + rank;
        order[position] = slot;
        row[slot] = capacity > 0 ? (i64)expert * capacity + (position - offsets[expert]) : position;
    }
}
