// Data-parallel training across processes: MPI launches and bootstraps, NCCL moves the GPU backend's gradients,
// MPI the CPU backend's.
//
//   dist_init           MPI_Init (when built with USE_MPI and started by mpirun), the rank, the world size and the
//                       node-local rank; any fatal() on any rank then aborts every rank (MPI_Abort: no hang)
//   dist_init_device    GPU backend: the GPU of the node-local rank, and (USE_NCCL) the NCCL communicator, its
//                       unique id broadcast by MPI from rank 0
//   dist_sum            in-place sum over the ranks of a buffer in device memory (NCCL on the GPU backend, MPI on
//                       the CPU backend, where device memory is host memory); floatS or floatX elements
//   dist_sum_start/wait the same, overlapped with the work queued after it (GPU: NCCL on a communication stream)
//   dist_allgather      every rank's block of a device buffer, in rank order, on every rank
//   dist_sum_host       in-place sum over the ranks of host doubles / ints (metrics, counts)
//   dist_gather_host    rank 0 receives every rank's equally sized host block, in rank order
//   dist_allgather_host the same on every rank
//   dist_check_same     every rank must hold the same lines (e.g. of the configuration); a difference is named
//   dist_finish         MPI_Finalize
//
// Global batch slots are interleaved: rank r holds the global slots r, r + W, r + 2W, ... (W ranks), so slot
// b of a rank is global slot r + b * W. Every random number keyed by a slot uses the global slot, and the loss
// is normalised by the global batch size, so the summed gradient, and the run, do not depend on W.
// Built without MPI (NO_USE_MPI=1, or no mpicxx) everything here is the single-process identity.
#pragma once
#include <stdint.h>
#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>
#include "device.h"
#include "rand.h"
#include "utils.h"
#ifdef USE_MPI
#define OMPI_SKIP_MPICXX 1           // the C API only (OpenMPI's C++ bindings do not compile warning-free)
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#endif
#if defined(USE_NCCL) && defined(__CUDACC__)
#include <nccl.h>
#endif

typedef struct {
    int rank, world, local_rank;
#if defined(USE_NCCL) && defined(__CUDACC__)
    ncclComm_t nccl;
#endif
} Dist;

inline Dist& dist() { static Dist d = {0, 1, 0}; return d; }

#ifdef USE_MPI
#define mpiCheck(call) do { int err_ = (call); if (err_ != MPI_SUCCESS) fatal("MPI error %d in %s at %s:%d", err_, #call, __FILE__, __LINE__); } while (0)
inline void dist_abort_all() { MPI_Abort(MPI_COMM_WORLD, 1); }
#endif

inline void dist_init(int* argc, char*** argv) {
#ifdef USE_MPI
    Dist& d = dist();
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &d.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d.world);
    MPI_Comm local;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, d.rank, MPI_INFO_NULL, &local);
    MPI_Comm_rank(local, &d.local_rank);
    MPI_Comm_free(&local);
    if (d.world > 1) fatal_hook() = dist_abort_all;     // one rank's error stops them all
#else
    (void)argc; (void)argv;
#endif
}

inline void dist_finish() {
#ifdef USE_MPI
    MPI_Finalize();
#endif
}

// GPU backend: GPU = node-local rank; the NCCL communicator. Returns the GPU's name.
inline std::string dist_init_device() {
    Dist& d = dist();
#ifdef __CUDACC__
    int count = 0;
    if (cudaGetDeviceCount(&count) == cudaSuccess && d.local_rank >= count)
        fatal("rank %d is node-local rank %d but this node has %d GPU(s): start at most %d processes per node",
              d.rank, d.local_rank, count, count);
#endif
    const std::string name = device_init(d.local_rank);
#if defined(USE_NCCL) && defined(__CUDACC__)
    if (d.world > 1) {
        ncclUniqueId id;
        if (d.rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) fatal("ncclGetUniqueId failed");
        mpiCheck(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, MPI_COMM_WORLD));
        ncclResult_t r = ncclCommInitRank(&d.nccl, d.world, id, d.rank);
        if (r != ncclSuccess) fatal("rank %d: ncclCommInitRank failed: %s", d.rank, ncclGetErrorString(r));
    }
#elif defined(__CUDACC__)
    if (d.world > 1) fatal("%d processes, but this GPU build has no NCCL (built with NO_MULTI_GPU=1 or without nccl.h)", d.world);
#endif
    return name;
}

template <typename T> inline void dist_sum(T* buf, size_t n, Stream st) {
#if defined(__CUDACC__)
    static_assert(std::is_same<T, float>::value || std::is_same<T, __nv_bfloat16>::value,
                  "dist_sum on the GPU sums float or bf16 buffers (NCCL's ncclFloat / ncclBfloat16)");
#endif
    if (dist().world == 1 || n == 0) return;
#if defined(__CUDACC__)
#if defined(USE_NCCL)
    const ncclDataType_t type = std::is_same<T, float>::value ? ncclFloat : ncclBfloat16;
    ncclResult_t r = ncclAllReduce(buf, buf, n, type, ncclSum, dist().nccl, st);
    if (r != ncclSuccess) fatal("ncclAllReduce of %zu elements failed: %s", n, ncclGetErrorString(r));
#endif
#elif defined(USE_MPI)
    static_assert(std::is_same<T, float>::value || std::is_same<T, double>::value, "MPI sums float or double buffers");
    (void)st;
    // MPI counts are int: sum in pieces of at most 2^30 elements
    for (size_t off = 0; off < n; off += (size_t)1 << 30) {
        const int count = (int)std::min(n - off, (size_t)1 << 30);
        mpiCheck(MPI_Allreduce(MPI_IN_PLACE, buf + off, count, std::is_same<T, float>::value ? MPI_FLOAT : MPI_DOUBLE,
                               MPI_SUM, MPI_COMM_WORLD));
    }
#endif
}

// all (W * n, in rank order) = every rank's n elements of `local`, on every rank; device memory.
template <typename T> inline void dist_allgather(T* all, const T* local, size_t n, Stream st) {
    if (dist().world == 1) {
        copy_on_device(all, local, n * sizeof(T));
        return;
    }
#if defined(__CUDACC__)
#if defined(USE_NCCL)
    ncclResult_t r = ncclAllGather(local, all, n * sizeof(T), ncclUint8, dist().nccl, st);
    if (r != ncclSuccess) fatal("ncclAllGather of %zu bytes failed: %s", n * sizeof(T), ncclGetErrorString(r));
#endif
#elif defined(USE_MPI)
    (void)st;
    mpiCheck(MPI_Allgather(local, (int)(n * sizeof(T)), MPI_BYTE, all, (int)(n * sizeof(T)), MPI_BYTE, MPI_COMM_WORLD));
#endif
}

// The same sum, started so that it overlaps the work queued after it: on the GPU backend NCCL runs on a
// communication stream once the work queued so far on `st` is done, and dist_sum_wait(st) makes `st` wait for
// it; on the CPU backend the sum is done at once.
#if defined(__CUDACC__) && defined(USE_NCCL)
struct DistOverlap {
    cudaStream_t stream = nullptr;
    cudaEvent_t ready = nullptr, done = nullptr;
};
inline DistOverlap& dist_overlap() {
    static DistOverlap o;
    if (!o.stream) {
        cudaCheck(cudaStreamCreateWithFlags(&o.stream, cudaStreamNonBlocking));   // not ordered by the legacy stream
        cudaCheck(cudaEventCreateWithFlags(&o.ready, cudaEventDisableTiming));
        cudaCheck(cudaEventCreateWithFlags(&o.done, cudaEventDisableTiming));
    }
    return o;
}
#endif
template <typename T> inline void dist_sum_start(T* buf, size_t n, Stream st) {
#if defined(__CUDACC__) && defined(USE_NCCL)
    if (dist().world == 1 || n == 0) return;
    DistOverlap& o = dist_overlap();
    cudaCheck(cudaEventRecord(o.ready, st));
    cudaCheck(cudaStreamWaitEvent(o.stream, o.ready, 0));
    dist_sum(buf, n, o.stream);
    cudaCheck(cudaEventRecord(o.done, o.stream));
#else
    dist_sum(buf, n, st);
#endif
}
inline void dist_sum_wait(Stream st) {
#if defined(__CUDACC__) && defined(USE_NCCL)
    if (dist().world > 1) cudaCheck(cudaStreamWaitEvent(st, dist_overlap().done, 0));
#else
    (void)st;
#endif
}

inline void dist_sum_host(double* v, int n) {
#ifdef USE_MPI
    if (dist().world > 1) mpiCheck(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
#else
    (void)v; (void)n;
#endif
}
inline void dist_sum_host(int* v, int n) {
#ifdef USE_MPI
    if (dist().world > 1) mpiCheck(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
#else
    (void)v; (void)n;
#endif
}

// Every rank's `bytes` of `local`, concatenated in rank order, on rank 0 (others get an empty vector).
inline std::vector<uint8_t> dist_gather_host(const void* local, size_t bytes) {
    std::vector<uint8_t> all;
    if (dist().world == 1) {
        all.assign((const uint8_t*)local, (const uint8_t*)local + bytes);
        return all;
    }
#ifdef USE_MPI
    if (dist().rank == 0) all.resize(bytes * dist().world);
    // in pieces of at most 1 GiB per rank (MPI counts are int)
    const size_t piece = (size_t)1 << 30;
    std::vector<uint8_t> recv(dist().rank == 0 ? std::min(bytes, piece) * dist().world : 0);
    size_t off = 0;
    do {
        const size_t n = std::min(bytes - off, piece);
        mpiCheck(MPI_Gather((const uint8_t*)local + off, (int)n, MPI_BYTE, recv.data(), (int)n, MPI_BYTE, 0, MPI_COMM_WORLD));
        if (dist().rank == 0)
            for (int r = 0; r < dist().world; r++) memcpy(all.data() + r * bytes + off, recv.data() + r * n, n);
        off += n;
    } while (off < bytes);
#endif
    return all;
}

// Every rank's `bytes` of `local`, concatenated in rank order, on every rank.
inline std::vector<uint8_t> dist_allgather_host(const void* local, size_t bytes) {
    std::vector<uint8_t> all((const uint8_t*)local, (const uint8_t*)local + bytes);
#ifdef USE_MPI
    if (dist().world > 1) {
        all.resize(bytes * dist().world);
        mpiCheck(MPI_Allgather(local, (int)bytes, MPI_BYTE, all.data(), (int)bytes, MPI_BYTE, MPI_COMM_WORLD));
    }
#endif
    return all;
}

// Global slot g lives on rank g % W as its slot g / W: in a gather in rank order (rank 0's B_local slots, then
// rank 1's, ...) it is row dist_slot_row(g).
inline int dist_slot_row(int g, int B_local) { return (g % dist().world) * B_local + g / dist().world; }

// Per-slot records of `slot_bytes` each, gathered in rank order, put in global slot order.
inline std::vector<uint8_t> dist_slot_order(const std::vector<uint8_t>& by_rank, size_t slot_bytes, int B_local) {
    std::vector<uint8_t> out(by_rank.size());
    for (int g = 0; g < B_local * dist().world; g++)
        memcpy(&out[g * slot_bytes], &by_rank[(size_t)dist_slot_row(g, B_local) * slot_bytes], slot_bytes);
    return out;
}

// Stops every rank with `what` when the ranks do not all hold the same value.
inline void dist_check_same(const std::vector<std::string>& lines, const char* what) {
    std::vector<uint64_t> mine;
    for (const std::string& l : lines) mine.push_back(hash_bytes(l.data(), l.size()));
    const std::vector<uint8_t> all = dist_allgather_host(mine.data(), mine.size() * sizeof(uint64_t));
    for (int r = 0; r < dist().world; r++)
        for (size_t i = 0; i < mine.size(); i++) {
            uint64_t v;
            memcpy(&v, all.data() + (r * mine.size() + i) * sizeof v, sizeof v);
            if (v != mine[i]) fatal("rank %d: %s '%s' differs from rank %d's: every rank must be started with the same arguments",
                                    dist().rank, what, lines[i].c_str(), r);
        }
}
