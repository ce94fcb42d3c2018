"""Peak memory of one benchmark step, measured two ways.

1. **Peak memory of the step** (``peak_bytes``).
   - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``,
     minus the bytes allocated just before the step (inputs, parameters).
   - CPU: the process's peak resident set size (``VmHWM`` in
     ``/proc/self/status``) during the step, minus the resident size just
     before it. Each provider runs in its own process (see
     :mod:`deepres.benchmark.isolation`), so no provider inherits another's
     heap. The sequence is: build the inputs and the model, run the warm-up
     step(s) (one-time costs such as compilation or thread pools are not
     charged to the step), drop outputs and gradients, ``gc.collect()`` and
     glibc ``malloc_trim(0)`` (give freed heap pages back), read the baseline
     ``VmRSS``, reset ``VmHWM`` by writing ``5`` to ``/proc/self/clear_refs``
     (Linux ≥ 4.0), run one step, read ``VmHWM``. The worker processes start
     with ``MALLOC_MMAP_THRESHOLD_=131072``: every allocation of 128 KiB or
     more gets its own mapping and is returned on free, so the resident size
     follows the live tensors instead of glibc's adaptive heap. The figure
     includes everything the step allocates: saved activations, gradient
     buffers, temporaries. Where ``clear_refs`` cannot be written the peak is
     the process-lifetime high-water mark and the result says so.
2. **Saved-for-backward accounting** (``saved_bytes``, exact, any device): the
   bytes of the distinct storages that autograd packs for the backward pass,
   seen through :func:`torch.autograd.graph.saved_tensors_hooks`, excluding
   the parameters' own storages (those exist whatever the engine). This is the
   "activation memory" of the stack: L·B·D numbers for the deepres engine with
   ``checkpoint_every=None``, about L·B·(D + M) for plain autograd. The
   non-reentrant ``torch.utils.checkpoint`` packs each segment's input through
   the outer hooks too, so checkpointed modules are counted correctly.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

__all__ = [
    "SavedTensorCounter",
    "current_rss_bytes",
    "peak_rss_bytes",
    "release_freed_memory",
    "reset_peak_rss",
]

_STATUS = "/proc/self/status"


def _status_field(field: str) -> int | None:
    try:
        with open(_STATUS) as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """The resident set size of this process (``VmRSS``), or None off Linux."""
    return _status_field("VmRSS")


def peak_rss_bytes() -> int | None:
    """The peak resident set size since start or the last :func:`reset_peak_rss` (``VmHWM``)."""
    return _status_field("VmHWM")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS. Returns False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def release_freed_memory() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(name).malloc_trim(0)


class SavedTensorCounter:
    """Counts the distinct storages autograd saves for backward, excluding given tensors.

    Args:
        exclude: tensors whose storages are not counted (the parameters).

    Attributes:
        nbytes: bytes of the distinct saved storages seen so far.
        count: number of distinct saved storages.

    Example:
        >>> w = torch.randn(4, 4, requires_grad=True)
        >>> counter = SavedTensorCounter([w])
        >>> with counter.track():
        ...     y = torch.tanh(torch.randn(2, 4) @ w)
        >>> counter.nbytes   # the input (2, 4) and tanh's output (2, 4), float32; w excluded
        64
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()) -> None:
        self._excluded = {_storage_key(t) for t in exclude}
        self._seen: set[tuple[str, int]] = set()
        self.nbytes = 0
        self.count = 0

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded and key not in self._seen:
            self._seen.add(key)
            self.nbytes += tensor.untyped_storage().nbytes()
            self.count += 1
        return tensor

    @contextmanager
    def track(self) -> Iterator[SavedTensorCounter]:
        """Context in which saved tensors are counted."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def _storage_key(tensor: torch.Tensor) -> tuple[str, int]:
    return (str(tensor.device), tensor.untyped_storage().data_ptr())
