"""A pool of reusable gradient buffers for the mean-ODE backward ops (CPU only).

NOTE: on CPU, writing a fresh 67 MB gradient (nodes = 129, K = 16384, D = 8,
float32) costs ~50 ms of page faults (the kernel zeroes each 4 KiB page on
first touch) against ~7 ms into touched memory: ~40% of a whole rk4 forward +
adjoint at that size. A :class:`MeanODE` therefore owns a pool, registered
under an integer id (``pool.id``, see :func:`pool_for`) that its ops take as an argument:
ops take only tensors and plain values, and the id keeps working under
``torch.compile``; an id with no live pool (an exported program run without
its module) simply gives fresh buffers.

Why reuse is safe. A buffer is handed out again only when the pool's own
tensor is the sole owner of its storage: ``torch._C._storage_Use_Count``
counts the tensors (views included) and storage objects that share a storage,
so a gradient that anyone can still see (``param.grad``, a tensor a user kept,
its ``untyped_storage()``) is never overwritten. A Python storage object is
one object per storage (PyTorch hands the same one to every caller), so the
count cannot tell the one made to ask it from one a user kept: its Python
reference count does, and :func:`_storage_use_count` adds it. Those
functions are private; if a PyTorch release removes one, or the reference
counts read differently than measured at import, :func:`_storage_use_count`
returns None and the pool stops reusing buffers, so correctness never depends
on them, only speed. CUDA's caching allocator
already recycles memory, so the pool is used on CPU only.
"""

from __future__ import annotations

import itertools
import sys
import weakref

import torch

__all__ = ["GradientPool", "gradient_buffer", "pool_for"]

# Live pools by id, held weakly: a pool lives as long as its module.
_POOLS: weakref.WeakValueDictionary[int, GradientPool] = weakref.WeakValueDictionary()
_IDS = itertools.count(1)


def _counts(t: torch.Tensor) -> tuple[int, int] | None:
    """(owners of ``t``'s storage, Python references to its storage object), as seen from here."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    if count is None:
        return None
    storage = t.untyped_storage()
    return int(count(storage._cdata)), sys.getrefcount(storage)


# What _counts reads for a tensor that owns its storage alone and whose storage object no one
# holds: the storage object it makes counts once among the owners, and its Python references
# are only _counts' own.
_ALONE = _counts(torch.empty(1))


def _storage_use_count(t: torch.Tensor) -> int | None:
    """How many tensors and storage objects share ``t``'s storage (1: ``t`` alone); None if unknown."""
    counts = _counts(t)
    if counts is None or _ALONE is None or _ALONE[0] != 2:
        return None
    owners, references = counts
    # A storage object someone else holds is the one _counts asked about: it counted once among
    # the owners already (owners − 1 would miss it), so count its other Python references.
    return owners - 1 + max(references - _ALONE[1], 0)


class GradientPool:
    """Reuses a module's (nodes, D, K) gradient buffers once nothing else refers to them.

    In a training loop the previous step's gradients are usually released
    (``zero_grad(set_to_none=True)``) or kept as ``param.grad`` while the new
    ones are accumulated into them; either way a buffer the pool still holds
    can be written again. It keeps at most ``size`` buffers (see the module
    docstring for why reuse is safe).
    """

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self.buffers: list[torch.Tensor] = []
        self.id = next(_IDS)  # what the ops take (see pool_for)
        _POOLS[self.id] = self

    def take(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A (possibly uninitialized) tensor of ``shape`` with ``like``'s dtype and device."""
        if like.device.type != "cpu":
            return like.new_empty(shape)
        # Hand out views, never the pool's own tensor: a view holds its own reference
        # to the storage, so a buffer in use counts 2 and is not handed out twice.
        for buffer in self.buffers:
            if (tuple(buffer.shape) == tuple(shape) and buffer.dtype == like.dtype
                    and _storage_use_count(buffer) == 1):
                return buffer.view(shape)
        fresh = like.new_empty(shape)
        self.buffers.append(fresh)
        if len(self.buffers) > self.size:
            self.buffers.pop(0)
        return fresh.view(shape)

    def __deepcopy__(self, memo: dict) -> GradientPool:
        return GradientPool(self.size)

    def __getstate__(self) -> dict:
        # Pickling a module (torch.save, multiprocessing) must not carry spare buffers.
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])


def pool_for(pool_id: int) -> GradientPool | None:
    """The live pool registered under ``pool_id``, or None (0 means no pool)."""
    return _POOLS.get(pool_id) if pool_id else None


def gradient_buffer(pool_id: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized gradient buffer: from pool ``pool_id`` when it is alive, else fresh."""
    pool = pool_for(pool_id)
    return like.new_empty(shape) if pool is None else pool.take(shape, like)
