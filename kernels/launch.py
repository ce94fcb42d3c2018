"""Launchers of the stack kernels: buffers, then the launches :mod:`.plan` lists.

These functions take replica-form tensors (h (R, B, D), u and v (R, L, M, D),
contiguous, h float32, weights float32/float16/bfloat16) and trust their
arguments; :mod:`deepres.engines.triton_engine` is the checked entry point
with autograd. They take only tensors and Python scalars and return fresh
tensors. The forward is one kernel launch whatever L is; the backward is one
launch without weight gradients (or with a single batch tile), else two per
chunk of a checkpoint segment (the walk, then the weight-gradient GEMM).
"""

from __future__ import annotations

import contextlib
import functools

import torch
import triton

from .plan import (
    MAX_FUSED_DIM,
    PRECISIONS,
    KernelLaunch,
    StackConfig,
    backward_plan,
    backward_workspace,
    choose_config,
    default_precision,
    forward_plan,
    plans,
    resolve_precision,
)
from .stack_backward import stack_backward_kernel
from .stack_forward import stack_forward_kernel
from .weight_grad import weight_grad_kernel

__all__ = ["KERNELS", "MAX_FUSED_DIM", "PRECISIONS", "WEIGHT_DTYPE_NAMES", "KernelLaunch", "StackConfig",
           "default_config", "default_precision", "plans", "stack_backward", "stack_forward"]

#: Kernel name in a :class:`KernelLaunch` → the ``triton.jit`` function.
KERNELS = {"stack_forward": stack_forward_kernel, "stack_backward": stack_backward_kernel,
           "weight_grad": weight_grad_kernel}

#: Weight dtype → its name in the plans (``weight_dtype``).
WEIGHT_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_WORKSPACE_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}

# CUDA's limit on the second grid dimension, which carries the replicas.
_MAX_REPLICAS = 65535


@functools.lru_cache(maxsize=16)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_config(batch: int, dim: int, width: int, replicas: int, device: torch.device, *,
                   backward: bool = False, weight_dtype: str = "fp32",
                   precision: str = "tf32x3") -> StackConfig:
    """The tiles :func:`deepres.kernels.plan.choose_config` picks for ``device``.

    On the CPU (Triton's interpreter, which runs programs one after the
    other) the batch tile is as large as allowed, since fewer programs run
    faster there.

    Args:
        batch, dim, width, replicas: B, D, M, R.
        device: where the kernels run (CUDA: its SM count is read).
        backward, weight_dtype, precision: as in
            :func:`deepres.kernels.plan.choose_config` (defaults False,
            ``"fp32"``, ``"tf32x3"``).

    Returns:
        A :class:`StackConfig`.

    Example:
        >>> default_config(1024, 64, 64, 1, torch.device("cpu")).block_d
        64
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        multiprocessors = _multiprocessors(index)
    else:
        multiprocessors = 1
    return choose_config(batch, dim, width, replicas, multiprocessors, backward, weight_dtype, precision)


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
    precision: str | None = None,
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
        precision: ``"ieee"``, ``"tf32x3"`` or ``"tf32"`` (see
            :mod:`deepres.kernels.dot`). Default None:
            :func:`deepres.kernels.plan.default_precision` (float32 accuracy).
        allow_tf32: older spelling of ``precision="tf32"``. Default False.
        config: tiles; default :func:`default_config`.

    Returns:
        (h_L (R, B, D) float32, checkpoints (⌈L/k⌉, R, B, D) float32 or None),
        both new tensors.

    Example:
        >>> R, B, D, M, L = 1, 20, 16, 16, 8
        >>> generator = torch.Generator().manual_seed(0)
        >>> h0 = torch.randn(R, B, D, generator=generator)
        >>> u, v = torch.randn(2, R, L, M, D, generator=generator)
        >>> out, ckpt = stack_forward(h0, u, v, 1 / (L * M), 1 / D, "tanh", 4, save_checkpoints=True)
        >>> tuple(out.shape), tuple(ckpt.shape)  # checkpoints h_0 and h_4
        ((1, 20, 16), (2, 1, 20, 16))
    """
    replicas, batch, dim = h0.shape
    depth, width = u.shape[1], u.shape[2]
    weight_dtype = WEIGHT_DTYPE_NAMES[u.dtype]
    precision = resolve_precision(precision, allow_tf32, dim, width, weight_dtype)
    cfg = _check_config(config or default_config(batch, dim, width, replicas, h0.device,
                                                  weight_dtype=weight_dtype, precision=precision),
                        dim, replicas)
    (launch,) = forward_plan(
        replicas, batch, dim, width, depth, every, save_checkpoints=save_checkpoints, precision=precision,
        weight_dtype=weight_dtype, activation=activation, config=cfg)
    out = torch.empty_like(h0)
    ckpt = h0.new_empty((triton.cdiv(depth, every), replicas, batch, dim)) if save_checkpoints else None
    scalars = dict(launch.scalars)
    with _on_device(h0.device):
        stack_forward_kernel[launch.grid](
            h0, u, v, out, ckpt if ckpt is not None else out,
            replicas, batch, dim, width, depth, scalars["every"],
            float(multiplier), float(pre_scale),
            **launch.options, num_warps=launch.num_warps, num_stages=launch.num_stages,
            maxnreg=launch.maxnreg,
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
    precision: str | None = None,
    allow_tf32: bool = False,
    deterministic: bool = True,
    workspace_dtype: str = "float32",
    config: StackConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward pass of the stack: the walk over the layers and the weight-gradient GEMMs.

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D) float32, contiguous.
        checkpoints: from :func:`stack_forward`, (⌈L/k⌉, R, B, D) float32.
        u, v: the forward's weights, (R, L, M, D).
        multiplier, pre_scale, activation, every: as in the forward.
        need_weights: compute ∂loss/∂u and ∂loss/∂v. Default True.
        precision, allow_tf32: as in :func:`stack_forward` (the GEMMs use the same).
        deterministic: accepted for compatibility: the weight gradients are
            always reduced in a fixed order without float atomics, so every
            call is bitwise reproducible. Default True.
        workspace_dtype: ``"float32"`` (default) or ``"bfloat16"``: the dtype
            in which s = σ(z) and p = σ'(z)⊙(g vᵀ) wait for the weight-gradient
            GEMMs (bfloat16 halves that memory and traffic, at bfloat16
            accuracy for ∂u, ∂v; GPU only).
        config: tiles; default :func:`default_config` with ``backward=True``
            (it need not match the forward's: the checkpoints do not depend
            on the tiles).

    Returns:
        (∂loss/∂h_0 (R, B, D) float32, ∂loss/∂u and ∂loss/∂v (R, L, M, D)
        float32, or None when not ``need_weights``), new tensors.

    Example:
        >>> R, B, D, M, L = 1, 20, 16, 16, 8
        >>> generator = torch.Generator().manual_seed(0)
        >>> h0 = torch.randn(R, B, D, generator=generator)
        >>> u, v = torch.randn(2, R, L, M, D, generator=generator)
        >>> out, ckpt = stack_forward(h0, u, v, 1 / (L * M), 1 / D, "tanh", 4, save_checkpoints=True)
        >>> gh, gu, gv = stack_backward(torch.ones_like(out), ckpt, u, v, 1 / (L * M), 1 / D, "tanh", 4)
        >>> tuple(gh.shape), tuple(gu.shape)
        ((1, 20, 16), (1, 8, 16, 16))
    """
    del deterministic  # always deterministic
    if workspace_dtype not in _WORKSPACE_DTYPES:
        raise ValueError(f"workspace_dtype must be one of {tuple(_WORKSPACE_DTYPES)}; "
                         f"got {workspace_dtype!r}")
    ws_dtype = _WORKSPACE_DTYPES[workspace_dtype]
    replicas, batch, dim = grad_out.shape
    depth, width = u.shape[1], u.shape[2]
    weight_dtype = WEIGHT_DTYPE_NAMES[u.dtype]
    precision = resolve_precision(precision, allow_tf32, dim, width, weight_dtype)
    cfg = _check_config(config or default_config(batch, dim, width, replicas, grad_out.device, backward=True,
                                                  weight_dtype=weight_dtype, precision=precision),
                        dim, replicas)
    launches = backward_plan(
        replicas, batch, dim, width, depth, every, need_weights=need_weights, precision=precision,
        weight_dtype=weight_dtype, activation=activation, config=cfg, workspace_dtype=ws_dtype)
    buffers = {name: grad_out.new_empty(shape, dtype=_TORCH_DTYPES[kind])
               for name, (shape, kind) in backward_workspace(
                   replicas, batch, dim, width, depth, every, need_weights=need_weights, block_b=cfg.block_b,
                   workspace_dtype=ws_dtype).items()}
    grad_h = torch.empty_like(grad_out)
    scratch = buffers.get("scratch", grad_h)
    f32 = {"dtype": torch.float32, "device": u.device}
    grad_u = torch.empty(u.shape, **f32) if need_weights else grad_h
    grad_v = torch.empty(u.shape, **f32) if need_weights else grad_h
    ws_s, ws_p, ws_g = (buffers.get(name, grad_h) for name in ("s", "p", "g"))
    c, a = float(multiplier), float(pre_scale)
    g_in = grad_out
    with _on_device(grad_out.device):
        for launch in launches:
            scalars = dict(launch.scalars)
            options = {**launch.options, "num_warps": launch.num_warps, "num_stages": launch.num_stages,
                       "maxnreg": launch.maxnreg}
            if launch.kernel == "stack_backward":
                stack_backward_kernel[launch.grid](
                    g_in, checkpoints, scratch, u, v, grad_h, grad_u, grad_v, ws_s, ws_p, ws_g,
                    replicas, batch, dim, width, depth, every, scalars["lo"], scalars["hi"], c, a, **options)
                g_in = grad_h  # later walks continue from the stored ∂loss/∂h
                lo, hi = scalars["lo"], scalars["hi"]
            else:
                # The chunk's layer inputs: scratch slots from lo's place in its segment on
                # (or the checkpoints themselves when every layer has one).
                x = scratch[lo % every:] if every > 1 else checkpoints[lo:hi]
                weight_grad_kernel[launch.grid](ws_s, ws_p, ws_g, x, grad_u, grad_v,
                                                replicas, batch, dim, width, depth, lo, c, a, **options)
    if not need_weights:
        return grad_h, None, None
    return grad_h, grad_u, grad_v
