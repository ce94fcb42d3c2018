"""The Triton engine: the fused stack kernels as ``torch.library`` custom operators.

Same autograd semantics and the same memory policy as
:mod:`deepres.engines.torch_engine`: the forward pass keeps h only at the
checkpoints h_{i·k} (k = ``every``), ⌈L/k⌉·R·B·D float32 numbers, and the
backward pass recomputes each segment of k layers from its checkpoint into a
k·R·B·D scratch buffer ((⌈L/k⌉ + k)·R·B·D in all; with k = 1 the checkpoints
are the layer inputs and nothing is recomputed), plus, with several batch
tiles, the weight-gradient workspace of one chunk of layers (see
docs/engines.md). The whole forward is one kernel launch; the whole backward
is one walk over the layers or, with several batch tiles, per chunk of
layers a walk and a weight-gradient GEMM (reduced in a fixed order: every
call is bitwise reproducible): no per-layer Python work. The kernels and the
vector–Jacobian derivation are in ``kernels/`` (``deepres.kernels``).

Two ops, ``deepres::triton_stack`` (forward) and
``deepres::triton_stack_backward``, tied together for autograd by
:func:`deepres.engines.common.register_stack_autograd`. They take float32 h
(R, B, D) and float32, float16 or bfloat16 weights (R, L, M, D); the residual
stream and every reduction are float32 (bfloat16 needs a GPU: Triton's
interpreter lacks it). Which tensors reach this engine is decided in
:func:`deepres.functional.select_engine`, nowhere else.
"""

from __future__ import annotations

import torch

from deepres.engines.common import autocast_disabled, register_stack_autograd, stack_fakes
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_jvp import torch_stack_jvp
from deepres.engines.transforms import StackOps, stack_apply

__all__ = ["TRITON_OPS", "triton_residual_stack", "triton_stack", "triton_stack_backward"]


def _config(tiles: list[int]):
    """The launch configuration encoded as ``[block_b, block_d, block_m, num_warps, num_stages]``, or None."""
    if not tiles:
        return None
    from deepres.kernels.launch import StackConfig

    return StackConfig(*tiles)


@torch.library.custom_op("deepres::triton_stack", mutates_args=())
def triton_stack(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str, every: int, save_checkpoints: bool, precision: str,
                 tiles: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of the Triton engine: (h_L, checkpoints h_0, h_k, … or an empty tensor).

    Args:
        h0: (R, B, D) float32. u, v: (R, L, M, D). multiplier: c.
        pre_scale: a. activation: an activation name. every: k ≥ 1.
        save_checkpoints: also return the (⌈L/k⌉, R, B, D) checkpoints.
        precision: the dot products' precision, ``"ieee"``, ``"tf32x3"`` or
            ``"tf32"`` (:mod:`deepres.kernels.dot`); ``""`` for the launchers'
            float32-accurate default.
        tiles: ``[]`` to let the launcher choose, or the five fields of a
            :class:`deepres.kernels.launch.StackConfig`.

    Returns:
        (h_L (R, B, D) float32, checkpoints or an empty (0,) tensor).
    """
    from deepres.kernels.launch import stack_forward

    with autocast_disabled(h0.device.type):
        out, checkpoints = stack_forward(h0.contiguous(), u.contiguous(), v.contiguous(), multiplier,
                                         pre_scale, activation, every, save_checkpoints=save_checkpoints,
                                         precision=precision or None, config=_config(tiles))
    return out, (checkpoints if checkpoints is not None else h0.new_empty((0,)))


@torch.library.custom_op("deepres::triton_stack_backward", mutates_args=())
def triton_stack_backward(grad_out: torch.Tensor, h0: torch.Tensor, checkpoints: torch.Tensor,
                          u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                          activation: str, every: int, precision: str,
                          tiles: list[int], needs: list[bool],
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the Triton engine.

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D). h0: the forward's input (its value
            is also the first checkpoint). checkpoints: the forward's.
        u, v, multiplier, pre_scale, activation, every, precision, tiles: as
            in the forward. needs: whether ∂/∂h0,
            ∂/∂u, ∂/∂v are wanted.

    Returns:
        (∂loss/∂h0 float32, ∂loss/∂u, ∂loss/∂v in the weights' dtype); an empty
        (0,) tensor in place of each gradient not wanted.
    """
    from deepres.kernels.launch import stack_backward

    need_h, need_u, need_v = needs
    with autocast_disabled(grad_out.device.type):
        grad_h, grad_u, grad_v = stack_backward(
            grad_out.to(torch.float32).contiguous(), checkpoints, u.contiguous(), v.contiguous(), multiplier,
            pre_scale, activation, every, need_weights=need_u or need_v, precision=precision or None,
            config=_config(tiles))
    empty = u.new_empty((0,))
    return (grad_h if need_h else grad_h.new_empty((0,)),
            grad_u.to(u.dtype) if need_u else empty,
            grad_v.to(v.dtype) if need_v else empty.clone())


def _backward(grad_out, h0, checkpoints, u, v, multiplier, pre_scale, activation, every, extra, needs):
    return triton_stack_backward(grad_out, h0, checkpoints, u, v, multiplier, pre_scale, activation, every,
                                 *extra, needs)


stack_fakes(triton_stack, triton_stack_backward, checkpoints_hold_input=True,
            gradient_dtype=lambda weights: weights.dtype)
register_stack_autograd(triton_stack, _backward, reference_residual_stack)

#: The engine's ops for :func:`deepres.engines.transforms.stack_apply` (torch.func support). Forward
#: mode has no Triton kernel: the jvp runs the PyTorch engine's fused jvp op on the same device
#: (float32 residual stream, weights upcast one layer at a time), exact like the forward.
TRITON_OPS = StackOps("triton", triton_stack, triton_stack_backward, torch_stack_jvp)


def triton_residual_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                          pre_scale: float, activation: str, every: int, *, precision: str | None = None,
                          allow_tf32: bool = False, config: object | None = None) -> torch.Tensor:
    """Run the Triton engine on replica-form tensors (no argument checks: see
    :func:`deepres.residual_stack` for the public entry point).

    Args:
        h: h_0, (R, B, D), float32.
        u, v: weights, (R, L, M, D), float32, or float16/bfloat16.
        multiplier: c. pre_scale: a. activation: a name of
            :data:`deepres.activations.ACTIVATIONS`.
        every: checkpoint segment length k ≥ 1.
        precision: ``"ieee"`` (FFMA), ``"tf32x3"`` (three TF32 tensor-core
            products, float32 accuracy) or ``"tf32"`` (one, about 1e-3
            relative error). Default None:
            :func:`deepres.kernels.plan.default_precision` (``"tf32x3"``).
        allow_tf32: the older spelling of ``precision="tf32"``. Default False.
        config: the kernels' tiles, a :class:`deepres.kernels.launch.StackConfig`;
            default None picks them from the shapes and the device.

    Returns:
        h_L, (R, B, D) float32. Differentiable in h, u and v (to any order;
        second order through the plain reference).

    Example:
        >>> h = torch.randn(1, 4, 16, device="cuda")                           # doctest: +SKIP
        >>> u, v = (torch.randn(1, 8, 16, 16, device="cuda") for _ in range(2))  # doctest: +SKIP
        >>> triton_residual_stack(h, u, v, 1 / 128, 1 / 16, "tanh", every=4).shape  # doctest: +SKIP
        torch.Size([1, 4, 16])
    """
    tiles = [] if config is None else [config.block_b, config.block_d, config.block_m, config.num_warps,
                                       config.num_stages]
    from deepres.kernels.launch import WEIGHT_DTYPE_NAMES, resolve_precision

    weight_dtype = WEIGHT_DTYPE_NAMES[u.dtype]
    precision = resolve_precision(precision, allow_tf32, h.shape[-1], u.shape[-2], weight_dtype)
    return stack_apply(TRITON_OPS, h, u, v, multiplier, pre_scale, activation, every, precision, tiles)
