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

__all__ = ["MAX_FUSED_DIM", "KernelLaunch", "StackConfig", "backward_plan", "choose_config", "forward_plan",
           "stack_backward", "stack_forward"]

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


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of a plan: what the launchers run and what the cost model compiles.

    Attributes:
        kernel: ``"stack_forward"``, ``"stack_backward"`` or ``"torch"`` (a
            PyTorch reduction, costed by its bytes only).
        constexprs: the kernel's compile-time arguments, as sorted pairs.
        num_warps, num_stages: launch options.
        grid: the launch grid.
        weight_dtype: Triton name of the weights' dtype (``"fp32"``, ``"fp16"``, ``"bf16"``).
        loops: hot loop name → iterations of it per program (the names are
            the ``# loop:`` markers of the kernels' source).
        trips: nested loop name → iterations per iteration of the enclosing loop.
        dram_bytes: bytes the launch reads and writes at least once.
        scalars: the runtime integer and float arguments (the JIT specializes
            on them: ints equal to 1 or divisible by 16).
        pointer_dtypes: pointer arguments that are not float32 → their dtype.
    """

    kernel: str
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    grid: tuple[int, int]
    weight_dtype: str
    loops: tuple[tuple[str, int], ...] = ()
    trips: tuple[tuple[str, int], ...] = ()
    dram_bytes: int = 0
    scalars: tuple[tuple[str, int | float], ...] = ()
    pointer_dtypes: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> dict:
        """The constexprs as a dict."""
        return dict(self.constexprs)

    @property
    def programs(self) -> int:
        """Programs in the grid."""
        return self.grid[0] * self.grid[1]


_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _scalars(replicas: int, batch: int, dim: int, width: int, depth: int, every: int) -> tuple:
    # c and a: any float (the JIT does not specialize on float values).
    return (("R", replicas), ("B", batch), ("D", dim), ("M", width), ("L", depth), ("every", every),
            ("c", 0.5), ("a", 0.5))


def forward_plan(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *,
                 save_checkpoints: bool, precision: str, weight_dtype: str, activation: str,
                 config: StackConfig) -> list[KernelLaunch]:
    """The launches :func:`stack_forward` makes for these shapes (one).

    Args:
        replicas, batch, dim, width, depth: R, B, D, M, L. every: segment length k.
        save_checkpoints, activation: as in :func:`stack_forward`.
        precision: ``tl.dot`` input precision (``"ieee"`` or ``"tf32"``).
        weight_dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        config: the tiles.

    Returns:
        A list of :class:`KernelLaunch`.

    Example:
        >>> cfg = StackConfig(block_b=16, block_d=64, block_m=64)
        >>> [launch.kernel for launch in forward_plan(1, 64, 64, 64, 8, 2, save_checkpoints=True,
        ...  precision="ieee", weight_dtype="fp32", activation="tanh", config=cfg)]
        ['stack_forward']
    """
    one_m_tile = width <= config.block_m
    constexprs = {"ACT": activation, "PRECISION": precision, "SAVE_CHECKPOINTS": save_checkpoints,
                  "ONE_M_TILE": one_m_tile, "BLOCK_B": config.block_b, "BLOCK_D": config.block_d,
                  "BLOCK_M": config.block_m}
    weight_bytes = 2 * replicas * depth * width * dim * _DTYPE_BYTES[weight_dtype]
    stream_bytes = 4 * replicas * batch * dim * (2 + (triton.cdiv(depth, every) if save_checkpoints else 0))
    return [KernelLaunch(
        kernel="stack_forward", constexprs=tuple(sorted(constexprs.items())), num_warps=config.num_warps,
        num_stages=config.num_stages, grid=(triton.cdiv(batch, config.block_b), replicas),
        weight_dtype=weight_dtype, loops=(("forward-layer", depth),),
        trips=(("m-tile", triton.cdiv(width, config.block_m)),), dram_bytes=weight_bytes + stream_bytes,
        scalars=_scalars(replicas, batch, dim, width, depth, every),
        pointer_dtypes=(("u_ptr", weight_dtype), ("v_ptr", weight_dtype)),
    )]


def weight_grad_mode(need_weights: bool, batch_tiles: int, deterministic: bool) -> str:
    """How the backward kernel combines the batch tiles' weight gradients (``W_MODE``)."""
    if not need_weights or batch_tiles == 1:
        return "store"
    return "partial" if deterministic else "atomic"


def backward_plan(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *,
                  need_weights: bool, deterministic: bool, precision: str, weight_dtype: str,
                  activation: str, config: StackConfig) -> list[KernelLaunch]:
    """The launches :func:`stack_backward` makes for these shapes.

    Args: as :func:`forward_plan`, plus ``need_weights`` and ``deterministic``
    of :func:`stack_backward`.

    Returns:
        A list of :class:`KernelLaunch`: the backward kernel, then (partial
        mode) the fixed-order reduction.

    Example:
        >>> cfg = StackConfig(block_b=16, block_d=64, block_m=16, num_warps=8)
        >>> [launch.kernel for launch in backward_plan(1, 64, 64, 64, 8, 2, need_weights=True,
        ...  deterministic=True, precision="ieee", weight_dtype="fp32", activation="tanh", config=cfg)]
        ['stack_backward', 'torch']
    """
    batch_tiles = triton.cdiv(batch, config.block_b)
    mode = weight_grad_mode(need_weights, batch_tiles, deterministic)
    constexprs = {"ACT": activation, "PRECISION": precision, "RECOMPUTE": every > 1,
                  "NEED_WEIGHTS": need_weights, "W_MODE": mode, "ONE_M_TILE": width <= config.block_m,
                  "BLOCK_B": config.block_b, "BLOCK_D": config.block_d, "BLOCK_M": config.block_m}
    n_segments = triton.cdiv(depth, every)
    weights = replicas * depth * width * dim
    grad_copies = batch_tiles if mode == "partial" else 1
    dram = 2 * weights * _DTYPE_BYTES[weight_dtype] + (2 * weights * 4 * grad_copies if need_weights else 0)
    dram += 4 * replicas * batch * dim * (2 + n_segments + (2 * depth if every > 1 else depth))
    loops = (("walk-layer", depth),) + ((("recompute-layer", depth - n_segments),) if every > 1 else ())
    plan = [KernelLaunch(
        kernel="stack_backward", constexprs=tuple(sorted(constexprs.items())), num_warps=config.num_warps,
        num_stages=config.num_stages, grid=(batch_tiles, replicas), weight_dtype=weight_dtype, loops=loops,
        trips=(("m-tile", triton.cdiv(width, config.block_m)),), dram_bytes=dram,
        scalars=_scalars(replicas, batch, dim, width, depth, every),
        pointer_dtypes=(("u_ptr", weight_dtype), ("v_ptr", weight_dtype)),
    )]
    if mode == "partial":
        plan.append(KernelLaunch(kernel="torch", constexprs=(("op", "sum over batch tiles"),), num_warps=0,
                                 num_stages=0, grid=(1, 1), weight_dtype="fp32",
                                 dram_bytes=2 * weights * 4 * (batch_tiles + 1)))
    if mode == "atomic":
        plan.append(KernelLaunch(kernel="torch", constexprs=(("op", "zero the gradient buffers"),),
                                 num_warps=0, num_stages=0, grid=(1, 1), weight_dtype="fp32",
                                 dram_bytes=2 * weights * 4))
    return plan


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


#: The dot-product precisions the kernels take (``tl.dot``'s ``input_precision``).
PRECISIONS = ("ieee", "tf32")

#: Kernel name in a :class:`KernelLaunch` → the ``triton.jit`` function.
KERNELS = {"stack_forward": stack_forward_kernel, "stack_backward": stack_backward_kernel}


def default_precision(dim: int, width: int, weight_dtype: str = "fp32") -> str:
    """The dot precision used unless the caller asks for another: IEEE float32."""
    return "ieee"


def plans(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *, precision: str,
          weight_dtype: str, activation: str, multiprocessors: int, save_checkpoints: bool = True,
          need_weights: bool = True, deterministic: bool = False,
          ) -> tuple[list[KernelLaunch], list[KernelLaunch]]:
    """(forward launches, backward launches) of one training step with the default tiles."""
    forward = forward_plan(replicas, batch, dim, width, depth, every, save_checkpoints=save_checkpoints,
                           precision=precision, weight_dtype=weight_dtype, activation=activation,
                           config=_choose_config_cached(batch, dim, width, replicas, multiprocessors, False))
    backward = backward_plan(replicas, batch, dim, width, depth, every, need_weights=need_weights,
                             deterministic=deterministic, precision=precision, weight_dtype=weight_dtype,
                             activation=activation,
                             config=_choose_config_cached(batch, dim, width, replicas, multiprocessors, True))
    return forward, backward


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
    (launch,) = forward_plan(replicas, batch, dim, width, depth, every, save_checkpoints=save_checkpoints,
                             precision=_precision(allow_tf32), weight_dtype=_DTYPE_NAMES[u.dtype],
                             activation=activation, config=cfg)
    out = torch.empty_like(h0)
    n_segments = triton.cdiv(depth, every)
    ckpt = h0.new_empty((n_segments, replicas, batch, dim)) if save_checkpoints else None
    with _on_device(h0.device):
        stack_forward_kernel[launch.grid](
            h0, u, v, out, ckpt if ckpt is not None else out,
            replicas, batch, dim, width, depth, every,
            float(multiplier), float(pre_scale),
            **launch.options, num_warps=launch.num_warps, num_stages=launch.num_stages,
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
    launch = backward_plan(replicas, batch, dim, width, depth, every, need_weights=need_weights,
                           deterministic=deterministic, precision=_precision(allow_tf32),
                           weight_dtype=_DTYPE_NAMES[u.dtype], activation=activation, config=cfg)[0]
    mode = launch.options["W_MODE"]
    batch_tiles = launch.grid[0]
    grad_h = torch.empty_like(grad_out)
    recompute = every > 1
    scratch = (grad_out.new_empty((min(every, depth), replicas, batch, dim)) if recompute else grad_h)
    f32 = {"dtype": torch.float32, "device": u.device}
    if not need_weights:
        grad_u, grad_v = grad_h, grad_h  # never written
    elif mode == "store":
        grad_u, grad_v = torch.empty(u.shape, **f32), torch.empty(u.shape, **f32)
    elif mode == "partial":
        grad_u = torch.empty((batch_tiles, *u.shape), **f32)
        grad_v = torch.empty((batch_tiles, *u.shape), **f32)
    else:
        grad_u, grad_v = torch.zeros(u.shape, **f32), torch.zeros(u.shape, **f32)
    with _on_device(grad_out.device):
        stack_backward_kernel[launch.grid](
            grad_out, checkpoints, scratch, u, v,
            grad_h, grad_u, grad_v,
            replicas, batch, dim, width, depth, every,
            float(multiplier), float(pre_scale),
            **launch.options, num_warps=launch.num_warps, num_stages=launch.num_stages,
        )
    if not need_weights:
        return grad_h, None, None
    if mode == "partial":
        # torch.sum over a leading axis reduces in a fixed order (no atomics).
        grad_u, grad_v = grad_u.sum(dim=0), grad_v.sum(dim=0)
    return grad_h, grad_u, grad_v
