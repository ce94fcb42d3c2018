// Where the C++ engine's large blocks live: the weight gradients, the checkpoints and the backward's
// partial slots.
//
// From the default allocator a block of a few MiB is a fresh mmap (or a trimmed heap top) whose
// 4 KiB pages each fault, and are zeroed by the kernel, on first write; it goes back to the system
// when the tensor dies. A training step frees its gradients (zero_grad) and its checkpoints (after
// the backward) and asks for the same sizes again at the next step. At the (512, 128, 10, 4, 16)
// study shape the two 16.8 MiB weight gradients took 9,000 faults per backward, and one thread's
// backward took 53.4 ms. So blocks of 2 MiB or more
//   * start on a 2 MiB boundary and are advised onto transparent huge pages before anything is
//     written (20 faults per backward, 34-37 ms; advising only the aligned interior of a default
//     block left 1,000 faults);
//   * are kept for reuse when their tensor dies, at most kMaxKept blocks and kMaxKeptBytes in all,
//     handed out again to a request of the same rounded size (no fault, no zeroing: 29 ms).
// The backward's partial slots (2 MiB at A = (1, 4096, 64, 16, 64) on two threads) need the huge
// pages most: on 4 KiB pages, in 10 of 18 fresh processes, two threads' backward at A took 44-48 ms
// instead of 28-30 ms (which physical pages a process got decided it); on huge pages, 8 of 8 took
// 28-29 ms.
// The tensors are ordinary CPU tensors (resizable, shareable, picklable). Where huge pages are off,
// or the kernel ignores the advice, only the alignment differs. Elsewhere than on Linux the blocks
// come from the default allocator.

#pragma once

#include <torch/extension.h>
#include <ATen/EmptyTensor.h>

#include <cstdlib>
#include <mutex>
#include <utility>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace deepres_cpp {

#ifdef __linux__
class OutputAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHugePage = size_t(1) << 21;
  static constexpr size_t kLarge = kHugePage;
  static constexpr size_t kSmallAlignment = 64;
  // A step frees four such blocks (the checkpoints, two weight gradients, the partial slots);
  // several stacks per model need a few more.
  static constexpr size_t kMaxKept = 8;
  static constexpr size_t kMaxKeptBytes = size_t(256) << 20;

  // Never destroyed: tensors may die after this library's static objects at exit.
  static OutputAllocator& instance() {
    static auto* allocator = new OutputAllocator();
    return *allocator;
  }

  c10::DataPtr allocate(size_t bytes) override {
    if (bytes < kLarge) {
      void* block = nullptr;
      if (bytes > 0 && posix_memalign(&block, kSmallAlignment, bytes) != 0)
        TORCH_CHECK(false, "deepres: could not allocate ", bytes, " bytes");
      return {block, block, &free_small, c10::Device(c10::DeviceType::CPU)};
    }
    const size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
    void* block = take_kept(rounded);
    if (block == nullptr) {
      TORCH_CHECK(posix_memalign(&block, kHugePage, rounded) == 0, "deepres: could not allocate ", bytes,
                  " bytes");
      madvise(block, rounded, MADV_HUGEPAGE);  // advice only: ignored where huge pages are off
    }
    return {block, new Large{block, rounded}, &release_large, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override { default_copy_data(dest, src, count); }

 private:
  struct Large {
    void* block;
    size_t bytes;
  };

  static void free_small(void* block) { free(block); }

  static void release_large(void* context) {
    auto* large = static_cast<Large*>(context);
    instance().keep_or_free(large->block, large->bytes);
    delete large;
  }

  void* take_kept(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < kept_.size(); ++i) {
      if (kept_[i].second != bytes) continue;
      void* block = kept_[i].first;
      kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(i));
      kept_bytes_ -= bytes;
      return block;
    }
    return nullptr;
  }

  void keep_or_free(void* block, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (kept_.size() < kMaxKept && kept_bytes_ + bytes <= kMaxKeptBytes) {
        kept_.emplace_back(block, bytes);
        kept_bytes_ += bytes;
        return;
      }
    }
    free(block);
  }

  std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> kept_;  // (block, rounded bytes), oldest first
  size_t kept_bytes_ = 0;
};
#endif

// An uninitialized CPU tensor of these sizes and options' dtype, from OutputAllocator on Linux.
inline torch::Tensor empty_output(at::IntArrayRef sizes, const torch::TensorOptions& options) {
#ifdef __linux__
  return at::detail::empty_generic(sizes, &OutputAllocator::instance(), c10::DispatchKeySet(c10::DispatchKey::CPU),
                                   c10::typeMetaToScalarType(options.dtype()), std::nullopt);
#else
  return torch::empty(sizes, options);
#endif
}

}  // namespace deepres_cpp
