"""Launchers of the stack kernels: tile choice, grids, buffers.

These functions take replica-form tensors (h (R, B, D), u and v (R, L, M, D),
contiguous, h float32, weights float32/float16/bfloat16) and trust their
arguments; :mod:`deepres.engines.triton_engine` is the checked entry point
with autograd. One call is one kernel launch whatever L is: there is no
per-layer Python work.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton

from .stack_backward import stack_backward_kernel
from .stack_forward import stack_forward_kernel

__all__ = ["MAX_FUSED_DIM", "StackConfig", "choose_config", "stack_backward", "stack_forward"]

#: Largest embedding dimension D the fused kernels handle: one program keeps
#: a (BLOCK_B, D) tile of h, and in the backward also x, g and the g update,
#: in registers. NOTE: at D = 256, with the smallest tiles (16 rows, 16 hidden
#: units) and 16 warps, the sm_90 backward already spills 88 B per thread
#: (see the tile table below); larger D falls back to the PyTorch engine.
MAX_FUSED_DIM = 256

# Smallest block along any tl.dot axis on the GPU.
_MIN_BLOCK = 16

# NOTE: tile table, from compiling both kernels for sm_90 without a GPU
# (``python -m deepres.kernels.compile_check``; Triton 3.9, float32 IEEE dots,
# which Triton lowers to FMA loops that hold the whole K extent of both
# operands in registers, so register pressure grows with BLOCK_D·BLOCK_M).
# Counts without the launch-time specialization on B, D, M divisible by 16
# (the heavier case: unaligned masked loads); with it, e.g. D = M = 64 needs
# 77 (forward) and 104 (backward) registers instead of 146 and 142.
# Registers per thread / spill bytes, (BLOCK_B, BLOCK_D, BLOCK_M) and warps:
#   forward  (16, 64, 64) 8 warps: 146 / 0   (4 warps: 255 / 564)
#   forward  (16, 128, 32) 8: 211 / 0;       (16, 256, 16) 16: 116 / 0
#   backward (16, 64, 16) 8: 142 / 0;        (16, 64, 32) 8: 252 / 0 (too close)
#   backward (16, 64, 64) 4: 255 / 1656;     (16, 128, 16) 8: 194 / 0
#   backward (16, 256, 16) 16: 128 / 88 (8 warps: 255 / 308)
#   forward (32, 32, 64) 4 warps: 255 / 244, 8 warps: 152 / 0
# TF32 and bfloat16-weight variants use fewer registers than these.
# Each row: largest BLOCK_D, then (max BLOCK_B, max BLOCK_M, num_warps) for
# the forward and for the backward kernel.
_TILE_TABLE: tuple[tuple[int, tuple[int, int, int], tuple[int, int, int]], ...] = (
    (32, (32, 64, 8), (16, 16, 8)),
    (64, (32, 64, 8), (16, 16, 8)),
    (128, (16, 32, 8), (16, 16, 8)),
    (256, (16, 16, 16), (16, 16, 16)),
)


@dataclass(frozen=True)
class StackConfig:
    """Tiles and launch options of the stack kernels.

    Attributes:
        block_b: batch rows per program (power of two ≥ 16).
        block_d: padded embedding dimension (power of two ≥ max(16, D)).
        block_m: hidden units per inner tile (power of two ≥ 16).
        num_warps: warps per program. Default 4.
        num_stages: software-pipelining depth of the inner M loop. Default 2.
    """

    block_b: int
    block_d: int
    block_m: int
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_b", "block_d", "block_m"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < _MIN_BLOCK or value & (value - 1):
                raise ValueError(f"StackConfig.{name} must be a power of two >= {_MIN_BLOCK}; got {value!r}")
        for name in ("num_warps", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StackConfig.{name} must be a positive int; got {value!r}")


@functools.lru_cache(maxsize=16)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@functools.lru_cache(maxsize=256)
def _choose_config_cached(batch: int, dim: int, width: int, replicas: int, multiprocessors: int,
                          backward: bool) -> StackConfig:
    block_d = max(_MIN_BLOCK, triton.next_power_of_2(dim))
    row = next(row for row in _TILE_TABLE if block_d <= row[0])
    max_b, max_m, num_warps = row[2] if backward else row[1]
    block_m = max(_MIN_BLOCK, min(triton.next_power_of_2(width), max_m))
    cap_b = max(_MIN_BLOCK, min(max_b, triton.next_power_of_2(batch)))
    # The layers are sequential, so the only parallelism is batch tiles ×
    # replicas: take the largest batch tile that still gives every
    # multiprocessor a program (larger tiles reread the weights fewer times
    # and make fewer weight-gradient atomics), else the smallest tile.
    block_b = _MIN_BLOCK
    candidate = cap_b
    while candidate >= _MIN_BLOCK:
        if replicas * triton.cdiv(batch, candidate) >= multiprocessors:
            block_b = candidate
            break
        candidate //= 2
    return StackConfig(block_b=block_b, block_d=block_d, block_m=block_m, num_warps=num_warps)


def choose_config(batch: int, dim: int, width: int, replicas: int, device: torch.device, *,
                  backward: bool = False) -> StackConfig:
    """The tiles for a (R, B, D) stream and (R, L, M, D) weights on ``device`` (cached).

    Args:
        batch: B. dim: D (≤ :data:`MAX_FUSED_DIM`). width: M. replicas: R.
        device: where the tensors are; on the CPU (Triton's interpreter, which
            runs programs one after the other) the batch tile is as large as
            allowed, since fewer programs run faster there.
        backward: tiles for the backward kernel (which holds more tiles in
            registers) instead of the forward one. Default False.

    Returns:
        A :class:`StackConfig`.

    Example:
        >>> choose_config(1024, 64, 64, 1, torch.device("cpu")).block_d
        64
    """
    if dim > MAX_FUSED_DIM:
        raise ValueError(
            f"dim must be at most MAX_FUSED_DIM = {MAX_FUSED_DIM} for the fused kernels; got {dim}"
        )
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        multiprocessors = _multiprocessors(index)
    else:
        multiprocessors = 1
    return _choose_config_cached(batch, dim, width, replicas, multiprocessors, backward)


# CUDA's limit on the second grid dimension, which carries the replicas.
_MAX_REPLICAS = 65535


def _check_config(cfg: StackConfig, dim: int, replicas: int) -> StackConfig:
    if replicas > _MAX_REPLICAS:
        raise ValueError(f"the fused kernels take at most {_MAX_REPLICAS} replicas per launch (the grid's "
                         f"second axis); got R = {replicas}")
    if cfg.block_d < dim:
        raise ValueError(f"config.block_d must cover D = {dim} (one program holds whole rows of h); "
                         f"got block_d = {cfg.block_d}")
    return cfg


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current: Triton launches on the current CUDA device, not the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _precision(allow_tf32: bool) -> str:
    return "tf32" if allow_tf32 else "ieee"


def stack_forward(
    h0: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    multiplier: float,
    pre_scale: float,
    activation: str,
    every: int,
    *,
    save_checkpoints: bool,
    allow_tf32: bool = False,
    config: StackConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run eq. (1) over all L layers in one launch.

    Args:
        h0: h_0, (R, B, D) float32, contiguous.
        u, v: weights, (R, L, M, D), contiguous, float32/float16/bfloat16.
        multiplier: c. pre_scale: a. activation: a name of
            ``deepres.activations.ACTIVATIONS``.
        every: checkpoint segment length k ≥ 1.
        save_checkpoints: also return h_{i·k} for i = 0..⌈L/k⌉−1 (for the
            backward pass).
        allow_tf32: TF32 tensor-core dot products. Default False (IEEE fp32).
        config: tiles; default :func:`choose_config`.

    Returns:
        (h_L (R, B, D) float32, checkpoints (⌈L/k⌉, R, B, D) float32 or None).

    Example:
        >>> out, ckpt = stack_forward(h0, u, v, 1 / (L * M), 1 / D, "tanh", 8, save_checkpoints=True)
    """
    replicas, batch, dim = h0.shape
    depth, width = u.shape[1], u.shape[2]
    cfg = _check_config(config or choose_config(batch, dim, width, replicas, h0.device), dim, replicas)
    out = torch.empty_like(h0)
    n_segments = triton.cdiv(depth, every)
    ckpt = h0.new_empty((n_segments, replicas, batch, dim)) if save_checkpoints else None
    grid = (triton.cdiv(batch, cfg.block_b), replicas)
    with _on_device(h0.device):
        stack_forward_kernel[grid](
            h0, u, v, out, ckpt if ckpt is not None else out,
            replicas, batch, dim, width, depth, every,
            float(multiplier), float(pre_scale),
            ACT=activation, PRECISION=_precision(allow_tf32), SAVE_CHECKPOINTS=save_checkpoints,
            ONE_M_TILE=width <= cfg.block_m,
            BLOCK_B=cfg.block_b, BLOCK_D=cfg.block_d, BLOCK_M=cfg.block_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, ckpt


def stack_backward(
    grad_out: torch.Tensor,
    checkpoints: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    multiplier: float,
    pre_scale: float,
    activation: str,
    every: int,
    *,
    need_weights: bool = True,
    allow_tf32: bool = False,
    deterministic: bool = False,
    config: StackConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward pass of the stack in one launch (plus a fixed-order sum if deterministic).

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D) float32, contiguous.
        checkpoints: from :func:`stack_forward`, (⌈L/k⌉, R, B, D) float32.
        u, v: the forward's weights, (R, L, M, D).
        multiplier, pre_scale, activation, every: as in the forward.
        need_weights: compute ∂loss/∂u and ∂loss/∂v. Default True.
        allow_tf32: TF32 dot products. Default False.
        deterministic: no float atomics: with more than one batch tile, each
            tile writes its own float32 partial gradients (extra memory:
            n_batch_tiles × 2 × R·L·M·D × 4 bytes) which are then summed in a
            fixed order. Default False (float32 atomics into one buffer).
        config: tiles; default :func:`choose_config` with ``backward=True``
            (it need not match the forward's: the checkpoints do not depend
            on the tiles).

    Returns:
        (∂loss/∂h_0 (R, B, D) float32, ∂loss/∂u and ∂loss/∂v (R, L, M, D)
        float32, or None when not ``need_weights``).

    Example:
        >>> gh, gu, gv = stack_backward(torch.ones_like(out), ckpt, u, v, c, a, "tanh", 8)
    """
    replicas, batch, dim = grad_out.shape
    depth, width = u.shape[1], u.shape[2]
    cfg = _check_config(config or choose_config(batch, dim, width, replicas, grad_out.device, backward=True),
                        dim, replicas)
    batch_tiles = triton.cdiv(batch, cfg.block_b)
    grad_h = torch.empty_like(grad_out)
    recompute = every > 1
    scratch = (grad_out.new_empty((min(every, depth), replicas, batch, dim)) if recompute else grad_h)
    f32 = {"dtype": torch.float32, "device": u.device}
    if not need_weights:
        mode, grad_u, grad_v = "store", grad_h, grad_h  # never written
    elif batch_tiles == 1:
        mode = "store"
        grad_u, grad_v = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
    elif deterministic:
        mode = "partial"
        grad_u = torch.empty((batch_tiles, *u.shape), **f32)
        grad_v = torch.empty((batch_tiles, *u.shape), **f32)
    else:
        mode = "atomic"
        grad_u, grad_v = torch.zeros(u.shape, **f32), torch.zeros(u.shape, **f32)
    grid = (batch_tiles, replicas)
    with _on_device(grad_out.device):
        stack_backward_kernel[grid](
            grad_out, checkpoints, scratch, u, v,
            grad_h, grad_u, grad_v,
            replicas, batch, dim, width, depth, every,
            float(multiplier), float(pre_scale),
            ACT=activation, PRECISION=_precision(allow_tf32), RECOMPUTE=recompute,
            NEED_WEIGHTS=need_weights, W_MODE=mode, ONE_M_TILE=width <= cfg.block_m,
            BLOCK_B=cfg.block_b, BLOCK_D=cfg.block_d, BLOCK_M=cfg.block_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    if not need_weights:
        return grad_h, None, None
    if mode == "partial":
        # torch.sum over a leading axis reduces in a fixed order (no atomics).
        grad_u, grad_v = grad_u.sum(dim=0), grad_v.sum(dim=0)
    return grad_h, grad_u, grad_v
