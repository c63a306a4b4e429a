// The thread team of one kernel call: the split of unit blocks (or columns) across threads, the
// spinning barrier between steps, and run_team, which runs the body on the team or inline.
// Part of the per-ISA CPU core (see lstm_cpu_impl.h), compiled in each lstm_cpu_<isa>.cpp.
#pragma once

#include "cpu/lstm_cpu.h"

namespace lstm_fused {
namespace cpu {
namespace LSTM_ISA {

// Splits [0, n) into nt nearly equal contiguous parts and returns part tid as [*begin, *end).
inline void split_range(int64_t n, int tid, int nt, int64_t* begin, int64_t* end) {
  *begin = n * tid / nt;
  *end = n * (tid + 1) / nt;
}

// The barrier between steps. libgomp's costs microseconds on a small machine (it wakes waiters
// through the kernel); this one spins on one cache line, which is what a step of a few
// microseconds needs. OpenMP guarantees the team's threads run at once, so spinning cannot
// deadlock; past a bound it yields, for machines with more threads than cores.
class SpinBarrier {
 public:
  void reset(int n) { n_ = n; }
  void wait() {
    const int gen = gen_.load(std::memory_order_relaxed);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      arrived_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins < 4096) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<int> gen_{0};
  int n_ = 1;
};

// Runs body(tid, nt) on a team of nt_req threads sharing bar, or inline for one thread: an
// OpenMP region of one thread still costs a fraction of a microsecond in libgomp (a futex call
// among them), a tenth of a one-step streaming call.
template <typename F>
void run_team(int nt_req, SpinBarrier& bar, F&& body) {
  if (nt_req == 1) {
    bar.reset(1);
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nt_req)
  {
    const int nt = omp_get_num_threads(), tid = omp_get_thread_num();
#pragma omp single
    bar.reset(nt);
    body(tid, nt);
  }
}

}  // namespace LSTM_ISA
}  // namespace cpu
}  // namespace lstm_fused
