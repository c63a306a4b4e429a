// Large CPU buffers of the ops (the saved gates and cells, y, the backward's dgates and h_prev)
// on memory that an earlier call freed, instead of fresh pages from the OS.
//
// glibc serves blocks past its mmap threshold (at most 32 MB) with mmap and returns them with
// munmap, so such a buffer costs one page fault per 4 KB on every call, and the kernel zeroes each
// page: measured on this project's 2-core VM, the forward of B32 T256 I=H=512 fp32 took 170 ms
// without saving activations and ~235 ms with them (96 MB of fresh buffers); with glibc told to
// keep freed memory, both 170 ms. A training step frees those buffers in its backward and asks for
// the same sizes again in its next forward; they are kept here (up to a limit) between the two.
#include "ops/common.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace lstm_fused {
namespace {

// Smaller blocks come from torch's CPU allocator as before: glibc keeps them in its heap.
constexpr size_t kMinCachedBytes = size_t{1} << 20;

// Bytes of freed blocks kept at most: LSTM_FUSED_CPU_CACHE_MB if set (0: keep none), else the
// smaller of 1 GiB and an eighth of the machine's memory.
size_t cache_limit_from_env() {
  if (const char* e = std::getenv("LSTM_FUSED_CPU_CACHE_MB")) return static_cast<size_t>(std::strtoull(e, nullptr, 10)) << 20;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const size_t eighth = pages > 0 && page > 0 ? static_cast<size_t>(pages) * static_cast<size_t>(page) / 8 : 0;
  return std::min(size_t{1} << 30, eighth);
}

class ReuseAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes || limit_ == 0) return c10::GetCPUAllocator()->allocate(n);
    void* p = take(n);
    if (!p) {
      p = c10::alloc_cpu(n);
      std::lock_guard<std::mutex> lock(mu_);
      live_[p] = n;
    }
    return {p, p, &give_back, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

  // Frees every kept block (lstm_fused.empty_cache()).
  void release_all() {
    std::vector<Block> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    for (const Block& b : drop) c10::free_cpu(b.ptr);
  }

  size_t cached_bytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

  static ReuseAllocator& get() {
    static ReuseAllocator* a = new ReuseAllocator();  // never destroyed: tensors may outlive statics
    return *a;
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  // The smallest kept block of n to 2n bytes, or nullptr.
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->size >= n && it->size <= 2 * n && (best == free_.end() || it->size < best->size)) best = it;
    if (best == free_.end()) return nullptr;
    void* p = best->ptr;
    live_[p] = best->size;
    cached_ -= best->size;
    free_.erase(best);
    return p;
  }

  // A block whose tensor died: kept, after dropping the oldest kept blocks to stay in the limit,
  // or freed when it alone is past the limit.
  void put(void* p) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = live_.find(p);
      const size_t size = it->second;
      live_.erase(it);
      if (size > limit_) {
        drop.push_back(p);
      } else {
        while (cached_ + size > limit_) {
          cached_ -= free_.front().size;
          drop.push_back(free_.front().ptr);
          free_.erase(free_.begin());
        }
        free_.push_back({p, size});
        cached_ += size;
      }
    }
    for (void* d : drop) c10::free_cpu(d);
  }

  static void give_back(void* p) { get().put(p); }

  const size_t limit_ = cache_limit_from_env();
  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;  // blocks in use: their sizes
  std::vector<Block> free_;                 // blocks kept for reuse, oldest first (a few: linear scans)
  size_t cached_ = 0;                       // bytes in free_
};

}  // namespace

at::Tensor empty_reused(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  TORCH_INTERNAL_ASSERT(opts.device().is_cpu());
  return at::detail::empty_generic(sizes, &ReuseAllocator::get(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(opts.dtype()), c10::nullopt);
}

void release_cached_buffers() { ReuseAllocator::get().release_all(); }

size_t cached_buffer_bytes() { return ReuseAllocator::get().cached_bytes(); }

}  // namespace lstm_fused
