"""The Triton engine: the fused stack kernels behind a ``torch.autograd.Function``.

Same autograd semantics and the same memory policy as
:mod:`deepres.engines.torch_engine`: the forward pass keeps h only at the
checkpoints h_{i·k} (k = ``every``), ⌈L/k⌉·R·B·D float32 numbers, and the
backward pass recomputes each segment of k layers from its checkpoint into a
k·R·B·D scratch buffer ((⌈L/k⌉ + k)·R·B·D in all; with k = 1 the checkpoints
are the layer inputs and nothing is recomputed). The whole forward is one
kernel launch, the whole backward one more (plus a fixed-order sum in
deterministic mode): no per-layer Python work. The kernels and the
vector–Jacobian derivation are in ``kernels/`` (``deepres.kernels``).

What runs where:

* float32 h with float32, float16 or bfloat16 weights: fused kernels, the
  residual stream and every reduction in float32 (bfloat16 needs a GPU;
  Triton's interpreter lacks it).
* D > :data:`deepres.kernels.launch.MAX_FUSED_DIM` (256), or float64 inputs
  (the kernels compute in float32): a ``UserWarning`` saying why, then the
  PyTorch engine.

All tensors are in replica form: h (R, B, D), u and v (R, L, M, D).
"""

from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from deepres.engines.torch_engine import torch_residual_stack
from deepres.kernels.launch import MAX_FUSED_DIM, StackConfig, stack_backward, stack_forward

__all__ = ["TritonStackFunction", "fallback_reason", "triton_residual_stack"]


class TritonStackFunction(torch.autograd.Function):
    """autograd Function of the Triton engine (replica form, see module docstring).

    ``apply(h0, u, v, multiplier, pre_scale, activation, every, allow_tf32,
    deterministic, config)`` with h0 float32 (R, B, D), u and v (R, L, M, D),
    all contiguous. Its backward is not itself differentiable.
    """

    @staticmethod
    def forward(ctx, h0, u, v, multiplier, pre_scale, activation, every, allow_tf32,  # type: ignore[override]
                deterministic, config):
        out, checkpoints = stack_forward(h0, u, v, multiplier, pre_scale, activation, every,
                                         save_checkpoints=True, allow_tf32=allow_tf32, config=config)
        ctx.save_for_backward(checkpoints, u, v)
        ctx.options = (multiplier, pre_scale, activation, every, allow_tf32, deterministic, config)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        checkpoints, u, v = ctx.saved_tensors
        c, a, act, every, allow_tf32, deterministic, config = ctx.options
        need_h, need_u, need_v = ctx.needs_input_grad[:3]
        grad_h, grad_u, grad_v = stack_backward(
            grad_out.to(torch.float32).contiguous(), checkpoints, u, v, c, a, act, every,
            need_weights=need_u or need_v, allow_tf32=allow_tf32, deterministic=deterministic,
            config=config,
        )
        grad_u = grad_u.to(u.dtype) if need_u else None
        grad_v = grad_v.to(v.dtype) if need_v else None
        return (grad_h if need_h else None), grad_u, grad_v, None, None, None, None, None, None, None


def fallback_reason(h: torch.Tensor, u: torch.Tensor) -> str | None:
    """Why the fused kernels cannot take these tensors (so the PyTorch engine runs), or None.

    Args:
        h: (R, B, D). u: (R, L, M, D).

    Returns:
        A sentence naming the limit and the received value, or None.

    Example:
        >>> fallback_reason(torch.zeros(1, 2, 300), torch.zeros(1, 3, 4, 300))
        'D = 300 exceeds the largest fused embedding dimension, 256'
    """
    dim = h.shape[-1]
    if dim > MAX_FUSED_DIM:
        return f"D = {dim} exceeds the largest fused embedding dimension, {MAX_FUSED_DIM}"
    if h.dtype != torch.float32:
        return f"the kernels compute in float32 and h is {h.dtype}"
    return None


def triton_residual_stack(
    h: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    multiplier: float,
    pre_scale: float,
    activation: str,
    every: int,
    *,
    allow_tf32: bool = False,
    deterministic: bool = False,
    config: StackConfig | None = None,
) -> torch.Tensor:
    """Run the Triton engine on replica-form tensors (no argument checks: see
    :func:`deepres.residual_stack` for the public entry point).

    Args:
        h: h_0, (R, B, D), float32 (float64 falls back, see below).
        u, v: weights, (R, L, M, D), float32, or float16/bfloat16 with a
            float32 h.
        multiplier: c. pre_scale: a. activation: a name of
            :data:`deepres.activations.ACTIVATIONS`.
        every: checkpoint segment length k ≥ 1 (see
            :func:`deepres.engines.common.resolve_checkpoint_every`).
        allow_tf32: TF32 tensor-core dot products (about 1e-3 relative
            error). Default False: IEEE float32.
        deterministic: reduce the weight gradients without float atomics, in
            a fixed order: bitwise reproducible; with more than one batch tile
            it needs n_batch_tiles × 2·R·L·M·D × 4 bytes of extra memory.
            Default False.
        config: the kernels' tiles (:class:`deepres.kernels.launch.StackConfig`);
            default None picks them from the shapes and the device.

    Returns:
        h_L, (R, B, D), dtype of ``h``. Differentiable in h, u and v
        (first order).

    Warns:
        UserWarning: D > 256 or a float64 h: the PyTorch engine runs instead.

    Example:
        >>> hL = triton_residual_stack(h, u, v, 1 / (L * M), 1 / D, "tanh", every=16)
    """
    reason = fallback_reason(h, u)
    if reason is not None:
        warnings.warn(f"backend='triton' runs the PyTorch engine instead of the fused kernels: {reason}",
                      UserWarning, stacklevel=3)
        return torch_residual_stack(h, u, v, multiplier, pre_scale, activation, every)
    h, u, v = h.contiguous(), u.contiguous(), v.contiguous()
    c, a = float(multiplier), float(pre_scale)
    if torch.is_grad_enabled() and (h.requires_grad or u.requires_grad or v.requires_grad):
        return TritonStackFunction.apply(h, u, v, c, a, activation, every, allow_tf32, deterministic,
                                         config)
    # No backward will run: skip the checkpoints.
    out, _ = stack_forward(h, u, v, c, a, activation, every, save_checkpoints=False,
                           allow_tf32=allow_tf32, config=config)
    return out
