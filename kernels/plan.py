"""What the launchers launch: tiles, precision, and the list of kernel launches of a pass.

The choice of variant, compile-time constants and tiles lives here, in
functions that both the launcher (:mod:`deepres.engines.triton.launch`) and
the compile-level cost model (``tools/kernel_cost``, outside the package)
call: what is compiled and costed is what runs. It stays beside the kernels
because its constexprs are the kernels' own argument names.

Importing this module imports neither triton nor the kernels (the engine
reads :data:`MAX_FUSED_DIM` to choose between engines on every call).

Dtype vocabulary: weights and buffers are named ``"fp32"``, ``"fp16"``,
``"bf16"`` (Triton's names) everywhere below the public API; :data:`DTYPES`
is the one table between those names and torch dtypes. Float16 and bfloat16
weights are "half weights" at every level (``HALF_WEIGHTS`` in the kernels).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = ["DEFAULT_PRECISION", "DTYPES", "MAX_FUSED_DIM", "PRECISIONS", "KernelLaunch", "StackConfig",
           "backward_plan", "backward_workspace", "choose_config", "dtype_name", "forward_plan", "plans"]

#: Largest embedding dimension D the fused kernels handle: one program keeps
#: (BLOCK_B, D) tiles of h (and in the backward x, g and the g update) on chip.
#: Larger D falls back to the PyTorch engine.
MAX_FUSED_DIM = 256

#: Dot-product precisions: IEEE float32 FFMA, three-pass TF32 (float32
#: accuracy on tensor cores) and one-pass TF32 (see :mod:`.dot`).
PRECISIONS = ("ieee", "tf32x3", "tf32")

#: The precision the fused kernels use unless asked for another: three-pass TF32
#: (float32 accuracy on tensor cores), which the cost model estimates faster than
#: IEEE FFMA at every shape the kernels take. At L = 4096, D = M = 64, B = 1024
#: with ``"sqrt"`` checkpoints it estimates a training step at 19.4 ms against
#: 38.1 ms for IEEE (``tools/kernel_cost``; estimates, not measurements).
DEFAULT_PRECISION = "tf32x3"

#: Dtype name → torch dtype: the one dtype vocabulary of the plans, the
#: launcher and the cost model.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The name of a weight dtype in :data:`DTYPES` (``torch.float16`` → ``"fp16"``).

    Example:
        >>> dtype_name(torch.bfloat16)
        'bf16'
    """
    return _NAMES[dtype]


def _cdiv(n: int, d: int) -> int:
    return -(-n // d)


def _next_power_of_2(n: int) -> int:
    """Smallest power of two ≥ n (``_next_power_of_2``, without importing triton)."""
    return 1 << max(0, n - 1).bit_length()

# Smallest block along any tl.dot axis on the GPU.
_MIN_BLOCK = 16

# NOTE: tile table, from compiling every variant for sm_90a without a GPU
# (``python -m tools.kernel_cost.compile_check --cost``, Triton 3.9; the chosen tiles'
# report is bench/results/compile_check_sm90.json). Each row: largest BLOCK_D, then
# (max BLOCK_B, max BLOCK_M, num_warps) for the forward and for the backward
# kernel. Register pressure grows with BLOCK_D·BLOCK_M (three-pass TF32 holds
# hi and lo copies of both operands); the rows are the largest tiles with no
# spill at the tensor-core precisions for D, M ≤ 128 (IEEE: see choose_config
# and the engine's precision check), and among those the fastest by the cost model.
# Measured there (registers / spill bytes, estimated cycles per layer), e.g.:
# D = M = 64 backward, three-pass TF32: 8 warps 177 / 0, 2283 + 3283
# (recompute + walk) against 4 warps 196 / 0, 2583 + 3549; D = M = 128
# forward, three-pass TF32: float32 weights 4 warps 220 / 0 (8 warps spill
# 16 B), bfloat16 weights 8 warps 152 / 0 (4 warps spill 20 B) — the
# HALF_WEIGHTS column.
_TILE_TABLE: tuple[tuple[int, tuple[int, int, int], tuple[int, int, int]], ...] = (
    (32, (32, 64, 4), (16, 64, 8)),
    (64, (32, 64, 4), (16, 64, 8)),
    (128, (16, 64, 4), (16, 32, 4)),
    (256, (16, 32, 8), (16, 16, 8)),
)
# BLOCK_D → forward num_warps with half weights (float16/bfloat16), where it differs.
_HALF_WEIGHTS_FORWARD_WARPS = {128: 8}

#: Software-pipelining depth of the weight loads: 3 stages keep the next two
#: layers' weights in flight (two buffers beyond the one being read).
NUM_STAGES = 3

#: Register limit per thread given to ptxas for the tensor-core precisions.
#: NOTE: left to its default, ptxas stops at 128 registers for some variants and
#: spills instead (float16 weights, D = M = 64, three-pass TF32: backward 128
#: registers / 16 B spilled; with the limit at 255: 154 / 0); one program per
#: SM is all these kernels need. IEEE (FFMA) variants keep ptxas's default: with
#: the limit they spill (D = M = 64 forward: 255 / 64 B, against 107 / 0).
MAX_REGISTERS = 255


def _register_limit(precision: str) -> int | None:
    return None if precision == "ieee" else MAX_REGISTERS

#: Fewest layers per weight-gradient chunk (each chunk costs two launches).
MIN_CHUNK = 16

#: Weight-gradient GEMM tiles (see :mod:`.weight_grad`): largest BLOCK_M and
#: BLOCK_D, the batch rows reduced per step, warps and pipeline depth.
_GEMM_MAX_TILE, _GEMM_BLOCK_K, _GEMM_WARPS, _GEMM_STAGES = 64, 32, 4, 3


@dataclass(frozen=True)
class StackConfig:
    """Tiles and launch options of the stack kernels.

    Attributes:
        block_b: batch rows per program (power of two ≥ 16).
        block_d: padded embedding dimension (power of two ≥ max(16, D)).
        block_m: hidden units per inner tile (power of two ≥ 16).
        num_warps: warps per program. Default 4.
        num_stages: software-pipelining depth of the weight loads. Default 3.
    """

    block_b: int
    block_d: int
    block_m: int
    num_warps: int = 4
    num_stages: int = NUM_STAGES

    def __post_init__(self) -> None:
        for name in ("block_b", "block_d", "block_m"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < _MIN_BLOCK or value & (value - 1):
                raise ValueError(f"StackConfig.{name} must be a power of two >= {_MIN_BLOCK}; got {value!r}")
        for name in ("num_warps", "num_stages"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"StackConfig.{name} must be a positive int; got {value!r}")


@functools.lru_cache(maxsize=256)
def choose_config(batch: int, dim: int, width: int, replicas: int, multiprocessors: int,
                  backward: bool = False, weight_dtype: str = "fp32",
                  precision: str = DEFAULT_PRECISION) -> StackConfig:
    """The default tiles for a (R, B, D) stream and (R, L, M, D) weights.

    Args:
        batch: B. dim: D (≤ :data:`MAX_FUSED_DIM`). width: M. replicas: R.
        multiprocessors: SMs of the device (1 for Triton's interpreter, which
            runs programs one after the other: the largest batch tile then).
        backward: tiles for the backward kernel instead of the forward one.
        weight_dtype: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``.
        precision: one of :data:`PRECISIONS`. Default :data:`DEFAULT_PRECISION`.

    Returns:
        A :class:`StackConfig`.

    Example:
        >>> choose_config(1024, 64, 64, 1, 132).block_b
        16
    """
    if dim > MAX_FUSED_DIM:
        raise ValueError(f"dim must be at most MAX_FUSED_DIM = {MAX_FUSED_DIM} for the fused kernels; "
                         f"got {dim}")
    block_d = max(_MIN_BLOCK, _next_power_of_2(dim))
    row = next(row for row in _TILE_TABLE if block_d <= row[0])
    max_b, max_m, num_warps = row[2] if backward else row[1]
    if weight_dtype != "fp32" and not backward:
        num_warps = _HALF_WEIGHTS_FORWARD_WARPS.get(row[0], num_warps)
    if precision == "ieee" and backward and block_d >= 64:
        # FFMA dots hold whole operand tiles in registers: at D = M = 64 the backward with 64
        # hidden units per tile spills 60–140 B (4 or 8 warps); with 32, none (at most 126
        # registers, 8 warps: bench/results/compile_check_sm90.json).
        max_m = min(max_m, 32)
    block_m = max(_MIN_BLOCK, min(_next_power_of_2(width), max_m))
    cap_b = max(_MIN_BLOCK, min(max_b, _next_power_of_2(batch)))
    # The layers are sequential, so the only parallelism is batch tiles ×
    # replicas: take the largest batch tile that still gives every
    # multiprocessor a program (larger tiles reread the weights fewer times),
    # else the smallest tile.
    block_b = _MIN_BLOCK
    candidate = cap_b
    while candidate >= _MIN_BLOCK:
        if replicas * _cdiv(batch, candidate) >= multiprocessors:
            block_b = candidate
            break
        candidate //= 2
    return StackConfig(block_b=block_b, block_d=block_d, block_m=block_m, num_warps=num_warps)


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of a plan: what the launchers run and what the cost model compiles.

    Attributes:
        kernel: ``"stack_forward"``, ``"stack_backward"`` or ``"weight_grad"``.
        constexprs: the kernel's compile-time arguments, as sorted pairs.
        num_warps, num_stages: launch options.
        grid: the launch grid.
        loops: hot loop name → iterations of it per program (the names are
            the ``# loop:`` markers of the kernels' source).
        trips: nested loop name → iterations per iteration of the enclosing loop.
        dram_bytes: bytes the launch reads and writes at least once.
        scalars: every runtime integer and float argument of the kernel, by
            name: the launcher passes exactly these (the JIT specializes on
            ints equal to 1 or divisible by 16, except the launch ranges).
        pointer_dtypes: pointer arguments that are not float32 → their dtype.
        maxnreg: register limit per thread passed to ptxas (None: its default).
    """

    kernel: str
    constexprs: tuple[tuple[str, object], ...]
    num_warps: int
    num_stages: int
    grid: tuple[int, ...]
    loops: tuple[tuple[str, int], ...] = ()
    trips: tuple[tuple[str, int], ...] = ()
    dram_bytes: int = 0
    scalars: tuple[tuple[str, int | float], ...] = ()
    pointer_dtypes: tuple[tuple[str, str], ...] = ()
    maxnreg: int | None = MAX_REGISTERS

    @property
    def options(self) -> dict:
        """The constexprs as a dict."""
        return dict(self.constexprs)

    @property
    def programs(self) -> int:
        """Programs in the grid."""
        return math.prod(self.grid)


def _bytes(dtype: str) -> int:
    return DTYPES[dtype].itemsize


# The backward's GEMM workspace (s, p) is float32: the weight gradients are float32-accurate.
_WORKSPACE_BYTES = 4


def _stack_scalars(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, c: float,
                   a: float) -> tuple:
    return (("R", replicas), ("B", batch), ("D", dim), ("M", width), ("L", depth), ("every", every),
            ("c", c), ("a", a))


def forward_plan(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *,
                 save_checkpoints: bool, precision: str, weight_dtype: str, activation: str,
                 config: StackConfig, multiplier: float = 0.5, pre_scale: float = 0.5) -> list[KernelLaunch]:
    """The launch :func:`deepres.engines.triton.launch.stack_forward` makes (one).

    Args:
        replicas, batch, dim, width, depth: R, B, D, M, L. every: segment length k.
        save_checkpoints, activation: as in ``stack_forward``.
        precision: one of :data:`PRECISIONS`. weight_dtype: a name of :data:`DTYPES`.
        config: the tiles.
        multiplier, pre_scale: c and a, passed to the kernel. Default 0.5 (the
            JIT does not specialize on float values, so the cost model may
            leave them).

    Returns:
        A list of :class:`KernelLaunch`; its ``scalars`` are every runtime
        scalar argument of the kernel.

    Example:
        >>> cfg = StackConfig(block_b=16, block_d=64, block_m=64)
        >>> [launch.kernel for launch in forward_plan(1, 64, 64, 64, 8, 2, save_checkpoints=True,
        ...  precision="tf32x3", weight_dtype="fp32", activation="tanh", config=cfg)]
        ['stack_forward']
    """
    # Without checkpoints the whole stack is one segment.
    every = every if save_checkpoints else depth
    constexprs = {"ACT": activation, "PRECISION": precision, "HALF_WEIGHTS": weight_dtype != "fp32",
                  "SAVE_CHECKPOINTS": save_checkpoints, "ONE_M_TILE": width <= config.block_m,
                  "CHECKPOINT_EVERY_LAYER": save_checkpoints and every == 1,
                  "BLOCK_B": config.block_b, "BLOCK_D": config.block_d, "BLOCK_M": config.block_m}
    weight_bytes = 2 * replicas * depth * width * dim * _bytes(weight_dtype)
    stream_bytes = 4 * replicas * batch * dim * (2 + (_cdiv(depth, every) if save_checkpoints else 0))
    return [KernelLaunch(
        kernel="stack_forward", constexprs=tuple(sorted(constexprs.items())), num_warps=config.num_warps,
        num_stages=config.num_stages, grid=(_cdiv(batch, config.block_b), replicas),
        loops=((("forward-every-layer" if save_checkpoints and every == 1 else "forward-layer"), depth),),
        trips=(("m-tile", _cdiv(width, config.block_m)),),
        dram_bytes=weight_bytes + stream_bytes,
        scalars=_stack_scalars(replicas, batch, dim, width, depth, every, multiplier, pre_scale),
        pointer_dtypes=(("u_ptr", weight_dtype), ("v_ptr", weight_dtype)),
        maxnreg=_register_limit(precision),
    )]


def weight_grad_mode(need_weights: bool, batch_tiles: int) -> str:
    """How the backward forms the weight gradients (``W_MODE`` of the backward kernel)."""
    if not need_weights:
        return "none"
    return "store" if batch_tiles == 1 else "gemm"


def gemm_chunk(replicas: int, batch: int, dim: int, width: int, depth: int, every: int) -> int:
    """Layers per weight-gradient GEMM launch (the walk stores s, p, g for that many layers).

    The backward's transient memory — checkpoints, the segment's layer inputs
    and this workspace — is kept within a quarter of (float32 weights +
    gradients) where possible, so that a training step's peak stays within
    1.25 × (weights + gradients); the workspace may always be as large as the
    layer-input buffer, and always MIN_CHUNK layers. Segments are cut into equal
    chunks; with every = 1 nothing is recomputed and chunks span segments.
    """
    seg = min(every, depth) if every > 1 else depth
    per_layer = replicas * batch * (2 * width * _WORKSPACE_BYTES + 4 * dim)
    stream = 4 * replicas * batch * dim
    budget = (2 * 2 * replicas * depth * width * dim * 4) // 4 - stream * (_cdiv(depth, every) + seg)
    most = max(MIN_CHUNK, budget // per_layer, (stream * min(every, depth)) // per_layer)
    pieces = _cdiv(seg, min(seg, most))
    return _cdiv(seg, pieces)


def backward_workspace(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *,
                       need_weights: bool, block_b: int) -> dict:
    """Shapes and dtypes of the buffers the backward allocates besides its outputs.

    Args: as :func:`backward_plan`; ``block_b`` is the backward's batch tile
    (one tile: no GEMM workspace).

    Returns:
        name → (shape, dtype name of :data:`DTYPES`): ``scratch`` (layer
        inputs of a segment) when every > 1, and ``s``, ``p``, ``g`` (the GEMM
        workspace) in ``"gemm"`` mode.

    Example:
        >>> sorted(backward_workspace(1, 64, 16, 16, 8, 4, need_weights=True, block_b=16))
        ['g', 'p', 's', 'scratch']
    """
    buffers = {}
    if every > 1:
        buffers["scratch"] = ((min(every, depth), replicas, batch, dim), "fp32")
    if weight_grad_mode(need_weights, _cdiv(batch, block_b)) == "gemm":
        chunk = gemm_chunk(replicas, batch, dim, width, depth, every)
        buffers["s"] = ((chunk, replicas, batch, width), "fp32")
        buffers["p"] = ((chunk, replicas, batch, width), "fp32")
        buffers["g"] = ((chunk, replicas, batch, dim), "fp32")
    return buffers


def _gemm_launch(replicas: int, batch: int, dim: int, width: int, depth: int, lo: int, hi: int,
                 precision: str, c: float, a: float) -> KernelLaunch:
    block_m = max(_MIN_BLOCK, min(_GEMM_MAX_TILE, _next_power_of_2(width)))
    block_d = max(_MIN_BLOCK, min(_GEMM_MAX_TILE // 2, _next_power_of_2(dim)))
    tiles = _cdiv(width, block_m) * _cdiv(dim, block_d)
    constexprs = {"PRECISION": precision, "BLOCK_M": block_m, "BLOCK_D": block_d, "BLOCK_K": _GEMM_BLOCK_K}
    n = hi - lo
    dram = replicas * n * (batch * (2 * width * _WORKSPACE_BYTES + 8 * dim) + 2 * width * dim * 4)
    return KernelLaunch(
        kernel="weight_grad", constexprs=tuple(sorted(constexprs.items())), num_warps=_GEMM_WARPS,
        num_stages=_GEMM_STAGES, grid=(n * replicas, tiles, 2),
        loops=(("gemm-k", _cdiv(batch, _GEMM_BLOCK_K)),),
        dram_bytes=dram, scalars=(("R", replicas), ("B", batch), ("D", dim), ("M", width), ("L", depth),
                                  ("lo", lo), ("c", c), ("a", a)),
        maxnreg=_register_limit(precision),
    )


def backward_plan(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *,
                  need_weights: bool, precision: str, weight_dtype: str, activation: str, config: StackConfig,
                  multiplier: float = 0.5, pre_scale: float = 0.5) -> list[KernelLaunch]:
    """The launches :func:`deepres.engines.triton.launch.stack_backward` makes, in order.

    One walk over all layers without weight gradients or with a single batch
    tile; otherwise, per segment (last first) and per chunk of it (top
    first, :func:`gemm_chunk`), a walk that stores s, p, g and the GEMM that
    turns them into the chunk's ∂u, ∂v.

    Args: as :func:`forward_plan`, plus ``need_weights``.

    Returns:
        A list of :class:`KernelLaunch`; each carries its own layer range in
        its scalars (``lo``, ``hi`` for a walk, ``lo`` for a GEMM).

    Example:
        >>> cfg = StackConfig(block_b=16, block_d=64, block_m=64)
        >>> [launch.kernel for launch in backward_plan(1, 64, 64, 64, 8, 4, need_weights=True,
        ...  precision="tf32x3", weight_dtype="fp32", activation="tanh", config=cfg)]
        ['stack_backward', 'weight_grad', 'stack_backward', 'weight_grad']
    """
    batch_tiles = _cdiv(batch, config.block_b)
    mode = weight_grad_mode(need_weights, batch_tiles)
    constexprs = {"ACT": activation, "PRECISION": precision, "HALF_WEIGHTS": weight_dtype != "fp32",
                  "RECOMPUTE": every > 1, "W_MODE": mode, "ONE_M_TILE": width <= config.block_m,
                  "BLOCK_B": config.block_b, "BLOCK_D": config.block_d, "BLOCK_M": config.block_m}
    stream = 4 * replicas * batch * dim
    layer_weights = 2 * replicas * width * dim * _bytes(weight_dtype)
    scalars = _stack_scalars(replicas, batch, dim, width, depth, every, multiplier, pre_scale)

    def walk(lo: int, hi: int, recompute: int) -> KernelLaunch:
        n = hi - lo
        loops = (("walk-layer", n),) + ((("recompute-layer", recompute),) if every > 1 else ())
        per_layer = replicas * batch * (2 * width * _WORKSPACE_BYTES + 4 * dim)
        workspace = n * per_layer if mode == "gemm" else 0
        grads = 2 * replicas * n * width * dim * 4 if mode == "store" else 0
        dram = (n + recompute) * (layer_weights + 2 * stream) + workspace + grads + 2 * stream
        return KernelLaunch(
            kernel="stack_backward", constexprs=tuple(sorted(constexprs.items())), num_warps=config.num_warps,
            num_stages=config.num_stages, grid=(batch_tiles, replicas), loops=loops,
            trips=(("m-tile", _cdiv(width, config.block_m)),), dram_bytes=dram,
            scalars=(*scalars[:6], ("lo", lo), ("hi", hi), *scalars[6:]),
            pointer_dtypes=(("u_ptr", weight_dtype), ("v_ptr", weight_dtype)),
            maxnreg=_register_limit(precision),
        )

    if mode != "gemm":
        segments = _cdiv(depth, every)
        return [walk(0, depth, depth - segments if every > 1 else 0)]
    chunk = gemm_chunk(replicas, batch, dim, width, depth, every)
    plan = []
    # Without recompute (every = 1) a chunk may span segments: one range.
    for start in reversed(range(0, depth, every if every > 1 else depth)):
        stop = min(start + every, depth) if every > 1 else depth
        for hi in range(stop, start, -chunk):
            lo = max(start, hi - chunk)
            plan.append(walk(lo, hi, stop - start - 1 if hi == stop and every > 1 else 0))
            plan.append(_gemm_launch(replicas, batch, dim, width, depth, lo, hi, precision, multiplier,
                                     pre_scale))
    return plan


def plans(replicas: int, batch: int, dim: int, width: int, depth: int, every: int, *, precision: str,
          weight_dtype: str, activation: str, multiprocessors: int, save_checkpoints: bool = True,
          need_weights: bool = True) -> tuple[list[KernelLaunch], list[KernelLaunch]]:
    """(forward launches, backward launches) of one training step with the default tiles.

    Args:
        replicas, batch, dim, width, depth, every: R, B, D, M, L and the
            checkpoint segment length k.
        precision, weight_dtype, activation: as in :func:`forward_plan`.
        multiprocessors: the SM count the tiles are chosen for.
        save_checkpoints: the forward keeps checkpoints. Default True.
        need_weights: the backward forms ∂u, ∂v. Default True.

    Returns:
        The two lists of :class:`KernelLaunch`.

    Example:
        >>> forward, backward = plans(1, 1024, 64, 64, 4096, 64, precision="tf32x3", weight_dtype="fp32",
        ...                           activation="tanh", multiprocessors=132)
        >>> len(forward), backward[0].kernel
        (1, 'stack_backward')
    """
    forward = forward_plan(replicas, batch, dim, width, depth, every, save_checkpoints=save_checkpoints,
                           precision=precision, weight_dtype=weight_dtype, activation=activation,
                           config=choose_config(batch, dim, width, replicas, multiprocessors, False,
                                                weight_dtype, precision))
    backward = backward_plan(replicas, batch, dim, width, depth, every, need_weights=need_weights,
                             precision=precision, weight_dtype=weight_dtype, activation=activation,
                             config=choose_config(batch, dim, width, replicas, multiprocessors, True,
                                                  weight_dtype, precision))
    return forward, backward
