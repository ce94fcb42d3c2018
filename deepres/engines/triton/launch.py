"""Launcher of the stack kernels: buffers, then the launches the plan lists, through one table.

It lives with the engine, not with the kernels: it is the middle of the
engine's vertical slice (kernels in ``deepres.kernels`` → this launcher →
the autograd ops of :mod:`.op`), and it is the only module of the engine
that imports triton. The launches themselves — which kernels, their
compile-time constants, grids, tiles and runtime scalars — come from
:mod:`deepres.kernels.plan`, the same plans the offline cost model compiles.

The functions take replica-form tensors (h (R, B, D), u and v (R, L, M, D),
contiguous, h float32, weights float32/float16/bfloat16) and resolved options
(precision, weight-dtype name, tiles), and trust them: :mod:`.op` is the
checked entry point with autograd. Every launch goes through :data:`KERNELS`
and reads its runtime scalars from its own :class:`KernelLaunch`. The forward
is one kernel launch whatever L is; the backward is one launch without weight
gradients (or with a single batch tile), else two per chunk of a checkpoint
segment (the walk, then the weight-gradient GEMM).
"""

from __future__ import annotations

import contextlib
import functools

import torch

from deepres.kernels.plan import (
    DTYPES,
    KernelLaunch,
    StackConfig,
    backward_plan,
    backward_workspace,
    choose_config,
    forward_plan,
)
from deepres.kernels.stack_backward import stack_backward_kernel
from deepres.kernels.stack_forward import stack_forward_kernel
from deepres.kernels.weight_grad import weight_grad_kernel

__all__ = ["KERNELS", "default_config", "stack_backward", "stack_forward"]

#: Kernel name in a :class:`KernelLaunch` → the ``triton.jit`` function: the one dispatch table.
KERNELS = {"stack_forward": stack_forward_kernel, "stack_backward": stack_backward_kernel,
           "weight_grad": weight_grad_kernel}

# CUDA's limit on the second grid dimension, which carries the replicas.
_MAX_REPLICAS = 65535


@functools.lru_cache(maxsize=16)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_config(batch: int, dim: int, width: int, replicas: int, device: torch.device, *,
                   backward: bool, weight_dtype: str, precision: str) -> StackConfig:
    """The tiles :func:`deepres.kernels.plan.choose_config` picks for ``device``.

    On the CPU (Triton's interpreter, which runs programs one after the
    other) the batch tile is as large as allowed, since fewer programs run
    faster there.

    Args:
        batch, dim, width, replicas: B, D, M, R.
        device: where the kernels run (CUDA: its SM count is read).
        backward, weight_dtype, precision: as in
            :func:`deepres.kernels.plan.choose_config`.

    Returns:
        A :class:`StackConfig`.

    Example:
        >>> default_config(1024, 64, 64, 1, torch.device("cpu"), backward=False, weight_dtype="fp32",
        ...                precision="tf32x3").block_d
        64
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        multiprocessors = _multiprocessors(index)
    else:
        multiprocessors = 1
    return choose_config(batch, dim, width, replicas, multiprocessors, backward, weight_dtype, precision)


def check_config(config: StackConfig, dim: int, replicas: int) -> StackConfig:
    """``config`` if the kernels can run it on D = ``dim`` and R = ``replicas``, else a ValueError."""
    if replicas > _MAX_REPLICAS:
        raise ValueError(f"the fused kernels take at most {_MAX_REPLICAS} replicas per launch (the grid's "
                         f"second axis); got R = {replicas}")
    if config.block_d < dim:
        raise ValueError(f"config.block_d must cover D = {dim} (one program holds whole rows of h); "
                         f"got block_d = {config.block_d}")
    return config


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` current: Triton launches on the current CUDA device, not the tensors' one."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launch(launch: KernelLaunch, pointers: dict[str, torch.Tensor]) -> None:
    """Run one launch of a plan: its kernel from :data:`KERNELS`, with its own grid, scalars and options."""
    KERNELS[launch.kernel][launch.grid](
        **pointers, **dict(launch.scalars), **launch.options,
        num_warps=launch.num_warps, num_stages=launch.num_stages, maxnreg=launch.maxnreg)


def stack_forward(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                  activation: str, every: int, *, save_checkpoints: bool, precision: str, weight_dtype: str,
                  config: StackConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run eq. (1) over all L layers in one launch.

    Args:
        h0: h_0, (R, B, D) float32, contiguous.
        u, v: weights, (R, L, M, D), contiguous, of dtype ``DTYPES[weight_dtype]``.
        multiplier: c. pre_scale: a. activation: a name of
            ``deepres.activations.ACTIVATIONS``.
        every: checkpoint segment length k ≥ 1.
        save_checkpoints: also return h_{i·k} for i = 0..⌈L/k⌉−1 (for the
            backward pass).
        precision: ``"ieee"``, ``"tf32x3"`` or ``"tf32"`` (see :mod:`deepres.kernels.dot`).
        weight_dtype: the weights' name in :data:`deepres.kernels.plan.DTYPES`.
        config: the tiles (:func:`default_config`, checked by :func:`check_config`).

    Returns:
        (h_L (R, B, D) float32, checkpoints (⌈L/k⌉, R, B, D) float32 or None),
        both new tensors.

    Example:
        >>> R, B, D, M, L = 1, 20, 16, 16, 8
        >>> generator = torch.Generator().manual_seed(0)
        >>> h0 = torch.randn(R, B, D, generator=generator)
        >>> u, v = torch.randn(2, R, L, M, D, generator=generator)
        >>> tiles = StackConfig(block_b=32, block_d=16, block_m=16)
        >>> out, ckpt = stack_forward(h0, u, v, 1 / (L * M), 1 / D, "tanh", 4, save_checkpoints=True,
        ...                           precision="tf32x3", weight_dtype="fp32", config=tiles)
        >>> tuple(out.shape), tuple(ckpt.shape)  # checkpoints h_0 and h_4
        ((1, 20, 16), (2, 1, 20, 16))
    """
    replicas, batch, dim = h0.shape
    depth, width = u.shape[1], u.shape[2]
    (launch,) = forward_plan(replicas, batch, dim, width, depth, every, save_checkpoints=save_checkpoints,
                             precision=precision, weight_dtype=weight_dtype, activation=activation,
                             config=config, multiplier=float(multiplier), pre_scale=float(pre_scale))
    out = torch.empty_like(h0)
    ckpt = h0.new_empty((-(-depth // every), replicas, batch, dim)) if save_checkpoints else None
    with _on_device(h0.device):
        _launch(launch, {"h0_ptr": h0, "u_ptr": u, "v_ptr": v, "out_ptr": out,
                         "ckpt_ptr": ckpt if ckpt is not None else out})
    return out, ckpt


def stack_backward(grad_out: torch.Tensor, checkpoints: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   multiplier: float, pre_scale: float, activation: str, every: int, *, need_weights: bool,
                   precision: str, weight_dtype: str, config: StackConfig,
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward pass of the stack: the walk over the layers and the weight-gradient GEMMs.

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D) float32, contiguous.
        checkpoints: from :func:`stack_forward`, (⌈L/k⌉, R, B, D) float32.
        u, v: the forward's weights, (R, L, M, D).
        multiplier, pre_scale, activation, every, precision, weight_dtype: as in the forward.
        need_weights: compute ∂loss/∂u and ∂loss/∂v.
        config: the backward's tiles (``default_config(..., backward=True)``;
            they need not match the forward's: the checkpoints do not depend
            on the tiles).

    Returns:
        (∂loss/∂h_0 (R, B, D) float32, ∂loss/∂u and ∂loss/∂v (R, L, M, D)
        float32, or None when not ``need_weights``), new tensors. The weight
        gradients are reduced in a fixed order without float atomics: every
        call is bitwise reproducible.

    Example:
        >>> generator = torch.Generator().manual_seed(1)
        >>> h0, (u, v) = torch.randn(1, 20, 16, generator=generator), torch.randn(2, 1, 8, 16, 16)
        >>> options = {"precision": "tf32x3", "weight_dtype": "fp32", "config": StackConfig(32, 16, 16)}
        >>> c, a = 1 / 128, 1 / 16
        >>> out, ckpt = stack_forward(h0, u, v, c, a, "tanh", 4, save_checkpoints=True, **options)
        >>> gh, gu, gv = stack_backward(torch.ones_like(out), ckpt, u, v, c, a, "tanh", 4, need_weights=True,
        ...                             **options)
        >>> tuple(gh.shape), tuple(gu.shape)
        ((1, 20, 16), (1, 8, 16, 16))
    """
    replicas, batch, dim = grad_out.shape
    depth, width = u.shape[1], u.shape[2]
    launches = backward_plan(replicas, batch, dim, width, depth, every, need_weights=need_weights,
                             precision=precision, weight_dtype=weight_dtype, activation=activation,
                             config=config, multiplier=float(multiplier), pre_scale=float(pre_scale))
    buffers = {name: grad_out.new_empty(shape, dtype=DTYPES[kind])
               for name, (shape, kind) in backward_workspace(
                   replicas, batch, dim, width, depth, every, need_weights=need_weights,
                   block_b=config.block_b).items()}
    grad_h = torch.empty_like(grad_out)
    scratch = buffers.get("scratch")
    f32 = {"dtype": torch.float32, "device": u.device}
    grad_u = torch.empty(u.shape, **f32) if need_weights else grad_h
    grad_v = torch.empty(u.shape, **f32) if need_weights else grad_h
    # Pointer arguments the kernels do not use in a mode get a valid placeholder (grad_h).
    shared = {"grad_u_ptr": grad_u, "grad_v_ptr": grad_v}
    workspace = {name: buffers.get(key, grad_h) for name, key in (("s", "s"), ("p", "p"), ("g", "g"))}
    walk = {"ckpt_ptr": checkpoints, "scratch_ptr": grad_h if scratch is None else scratch, "u_ptr": u,
            "v_ptr": v, "grad_h_ptr": grad_h, "ws_s_ptr": workspace["s"], "ws_p_ptr": workspace["p"],
            "ws_g_ptr": workspace["g"], **shared}
    g_in = grad_out
    with _on_device(grad_out.device):
        for launch in launches:
            if launch.kernel == "stack_backward":
                _launch(launch, {"g_ptr": g_in, **walk})
                g_in = grad_h  # later walks continue from the stored ∂loss/∂h
            else:
                # The chunk's layer inputs, slot i = layer lo + i: the scratch slots from lo's place in
                # its segment on, or the checkpoints themselves when every layer has one.
                lo = dict(launch.scalars)["lo"]
                x = checkpoints[lo:] if scratch is None else scratch[lo % every:]
                _launch(launch, {"s_ptr": workspace["s"], "p_ptr": workspace["p"], "g_ptr": workspace["g"],
                                 "x_ptr": x, **shared})
    if not need_weights:
        return grad_h, None, None
    return grad_h, grad_u, grad_v
