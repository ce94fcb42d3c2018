"""The Triton engine's autograd ops: ``deepres::triton_stack`` and ``deepres::triton_stack_backward``.

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
vector–Jacobian derivation are in ``kernels/`` (``deepres.kernels``), the
launches in :mod:`.launch`.

The ops carry resolved values only: the dot precision (a name of
:data:`deepres.kernels.plan.PRECISIONS`) and the weight-dtype name (of
:data:`deepres.kernels.plan.DTYPES`) are fixed once per call by
:func:`triton_residual_stack`, before the op. The tiles are the one thing the
op chooses itself (:func:`.launch.default_config`, once per pass; or the
``tiles`` given): they depend on the batch size, which under
``torch.compile`` with dynamic shapes is only known inside the op — chosen in
traced code they would make every new batch size a recompile.

The ops take float32 h (R, B, D) and float32, float16 or bfloat16 weights
(R, L, M, D); the residual stream and every reduction are float32 (bfloat16
needs a GPU: Triton's interpreter lacks it). Which tensors reach this engine
is decided in :func:`deepres.functional.select_engine`, nowhere else.
"""

from __future__ import annotations

import torch

from deepres.engines.common import autocast_disabled, register_vjp, stack_fakes, stack_vjp
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_jvp import torch_stack_jvp
from deepres.engines.transforms import StackOps, stack_apply
from deepres.kernels.plan import DEFAULT_PRECISION, StackConfig, dtype_name

__all__ = ["TRITON_OPS", "check_precision", "triton_residual_stack", "triton_stack", "triton_stack_backward"]


def _config(h: torch.Tensor, u: torch.Tensor, tiles: list[int] | None, *, backward: bool, precision: str,
            weight_dtype: str) -> StackConfig:
    """The pass's tiles: ``tiles`` as a StackConfig, else the launcher's default for the shapes (checked)."""
    from deepres.engines.triton.launch import check_config, default_config

    replicas, batch, dim = h.shape
    if tiles is not None:
        config = StackConfig(*tiles)
    else:
        config = default_config(batch, dim, u.shape[2], replicas, h.device, backward=backward,
                                weight_dtype=weight_dtype, precision=precision)
    return check_config(config, dim, replicas)


@torch.library.custom_op("deepres::triton_stack", mutates_args=())
def triton_stack(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str, every: int, save_checkpoints: bool, precision: str, weight_dtype: str,
                 tiles: list[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of the Triton engine: (h_L, checkpoints h_0, h_k, … or an empty tensor).

    Args:
        h0: (R, B, D) float32. u, v: (R, L, M, D). multiplier: c.
        pre_scale: a. activation: an activation name. every: k ≥ 1.
        save_checkpoints: also return the (⌈L/k⌉, R, B, D) checkpoints.
        precision: the dot products' precision, ``"ieee"``, ``"tf32x3"`` or
            ``"tf32"`` (:mod:`deepres.kernels.dot`).
        weight_dtype: u's dtype name (``"fp32"``, ``"fp16"``, ``"bf16"``).
        tiles: the five fields of a :class:`deepres.kernels.plan.StackConfig`
            for both passes, or None for the launcher's choice per pass.

    Returns:
        (h_L (R, B, D) float32, checkpoints or an empty (0,) tensor).
    """
    from deepres.engines.triton.launch import stack_forward

    config = _config(h0, u, tiles, backward=False, precision=precision, weight_dtype=weight_dtype)
    with autocast_disabled(h0.device.type):
        out, checkpoints = stack_forward(h0.contiguous(), u.contiguous(), v.contiguous(), multiplier,
                                         pre_scale, activation, every, save_checkpoints=save_checkpoints,
                                         precision=precision, weight_dtype=weight_dtype, config=config)
    return out, (checkpoints if checkpoints is not None else h0.new_empty((0,)))


@torch.library.custom_op("deepres::triton_stack_backward", mutates_args=())
def triton_stack_backward(grad_out: torch.Tensor, h0: torch.Tensor, checkpoints: torch.Tensor,
                          u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                          activation: str, every: int, precision: str, weight_dtype: str,
                          tiles: list[int] | None, needs: list[bool],
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the Triton engine.

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D). h0: the forward's input (its value
            is also the first checkpoint). checkpoints: the forward's.
        u, v, multiplier, pre_scale, activation, every, precision,
            weight_dtype, tiles: as in the forward. needs: whether ∂/∂h0,
            ∂/∂u, ∂/∂v are wanted.

    Returns:
        (∂loss/∂h0 float32, ∂loss/∂u, ∂loss/∂v in the weights' dtype); an empty
        (0,) tensor in place of each gradient not wanted.
    """
    from deepres.engines.triton.launch import stack_backward

    need_h, need_u, need_v = needs
    config = _config(grad_out, u, tiles, backward=True, precision=precision, weight_dtype=weight_dtype)
    with autocast_disabled(grad_out.device.type):
        grad_h, grad_u, grad_v = stack_backward(
            grad_out.to(torch.float32).contiguous(), checkpoints, u.contiguous(), v.contiguous(), multiplier,
            pre_scale, activation, every, need_weights=need_u or need_v, precision=precision,
            weight_dtype=weight_dtype, config=config)
    empty = u.new_empty((0,))
    return (grad_h if need_h else grad_h.new_empty((0,)),
            grad_u.to(u.dtype) if need_u else empty,
            grad_v.to(v.dtype) if need_v else empty.clone())


stack_fakes(triton_stack, triton_stack_backward, checkpoints_hold_input=True,
            gradient_dtype=lambda weights: weights.dtype)
register_vjp(triton_stack, *stack_vjp(triton_stack, triton_stack_backward, reference_residual_stack),
             saved_outputs=(1,))


def check_precision(precision: str, weight_dtype: str) -> str:
    """``precision`` if the kernels compute it with ``weight_dtype`` weights, else a ValueError.

    Example:
        >>> check_precision("ieee", "fp32")
        'ieee'
    """
    if precision == "ieee" and weight_dtype != "fp32":
        # FFMA dots on upcast half-precision tiles spill hundreds of bytes at every tile size tried
        # (D = M = 128: 312–872 B; sm_90a, Triton 3.9), and buy nothing: such weights are exact in
        # TF32, so "tf32x3" (two products for them) is as accurate.
        raise ValueError(f"precision='ieee' takes float32 weights; with {weight_dtype} weights use "
                         f"'tf32x3' (float32-accurate for them) or 'tf32'")
    return precision

#: The engine's ops for :func:`deepres.engines.transforms.stack_apply` (torch.func support). Forward
#: mode has no Triton kernel: the jvp runs the PyTorch engine's fused jvp op on the same device
#: (float32 residual stream, weights upcast one layer at a time), exact like the forward.
TRITON_OPS = StackOps("triton", triton_stack, triton_stack_backward, torch_stack_jvp)


def triton_residual_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                          pre_scale: float, activation: str, every: int,
                          precision: str = DEFAULT_PRECISION, *,
                          config: StackConfig | None = None) -> torch.Tensor:
    """Run the Triton engine on replica-form tensors (no argument checks beyond the precision's
    fit with the weights: see :func:`deepres.residual_stack` for the public entry point).

    Args:
        h: h_0, (R, B, D), float32.
        u, v: weights, (R, L, M, D), float32, or float16/bfloat16.
        multiplier: c. pre_scale: a. activation: a name of
            :data:`deepres.activations.ACTIVATIONS`.
        every: checkpoint segment length k ≥ 1.
        precision: ``"ieee"`` (FFMA), ``"tf32x3"`` (three TF32 tensor-core
            products, float32 accuracy) or ``"tf32"`` (one, about 1e-3
            relative error). Default :data:`deepres.kernels.plan.DEFAULT_PRECISION`
            (``"tf32x3"``).
        config: the kernels' tiles for both passes, a
            :class:`deepres.kernels.plan.StackConfig`; default None lets each
            pass choose from the shapes and the device.

    Returns:
        h_L, (R, B, D) float32. Differentiable in h, u and v (to any order;
        second order through the plain reference).

    Example:
        >>> h = torch.randn(1, 4, 16, device="cuda")                           # doctest: +SKIP
        >>> u, v = (torch.randn(1, 8, 16, 16, device="cuda") for _ in range(2))  # doctest: +SKIP
        >>> triton_residual_stack(h, u, v, 1 / 128, 1 / 16, "tanh", every=4).shape  # doctest: +SKIP
        torch.Size([1, 4, 16])
    """
    weight_dtype = dtype_name(u.dtype)
    check_precision(precision, weight_dtype)
    tiles = None if config is None else [config.block_b, config.block_d, config.block_m, config.num_warps,
                                         config.num_stages]
    return stack_apply(TRITON_OPS, h, u, v, multiplier, pre_scale, activation, every, precision, weight_dtype,
                       tiles)
