"""The C++ CPU engine: eq. (1) as compiled loops over layers, rows and units (CPU, float32/float64).

Same semantics and memory policy as the PyTorch engine
(:mod:`deepres.engines.torch_engine`): the forward keeps h_0 itself as the first
checkpoint (a reference, not a copy) and returns h_k, h_2k, … as an
(⌈L/k⌉ − 1, R, B, D) tensor; the backward recomputes each segment from its
checkpoint and walks it back. Nothing M-wide is kept between the passes.

How it runs (``csrc/stack.cpp``): a work unit is one replica and a chunk of 8
or 16 rows; it walks all L layers with its rows' h in registers and L1 ("rows
in lanes", so every inner loop, tanh included, vectorizes over the rows) and
each layer's u, v in L1, reused by all rows of the chunk. Units are spread over
``torch.get_num_threads()`` threads with ATen's ``parallel_for``. The partition
into units depends on the shapes only and the chunks' weight-gradient shares
are summed in a fixed order, so results are bitwise identical from run to run
and whatever the thread count.

Numerics: float32 accumulates in float32, float64 in float64. float32 tanh is a
rational approximation (measured error in docs/engines.md); every other
activation, and all of float64, uses the exact C library functions.

Dtypes: h, u and v must share a float32 or float64 dtype. Half-precision weights
are not taken: :func:`cpp_refusal` says so, ``backend="cpp"`` raises it and
``backend="auto"`` runs the PyTorch engine for them.

The operators: ``deepres::cpp_stack`` and ``deepres::cpp_stack_backward``
(the signatures of ``deepres::torch_stack*``), tied together for autograd by
:func:`deepres.engines.common.register_vjp`, and the forward-mode
``deepres::cpp_stack_jvp`` (not wired into autograd).
"""

from __future__ import annotations

import torch

from deepres.engines.common import register_vjp, stack_fakes, stack_vjp
from deepres.engines.cpp_build import cpp_module
from deepres.engines.reference import reference_residual_stack
from deepres.engines.transforms import StackOps, stack_apply

__all__ = ["ACTIVATION_CODES", "CPP_OPS", "cpp_refusal", "cpp_residual_stack", "cpp_stack",
           "cpp_stack_backward", "cpp_stack_jvp"]

#: The C++ code of each activation name (``enum Act`` in csrc/stack.cpp).
ACTIVATION_CODES: dict[str, int] = {"tanh": 0, "relu": 1, "gelu": 2, "silu": 3, "identity": 4}


def cpp_refusal(h: torch.Tensor, u: torch.Tensor) -> str | None:
    """Why the C++ engine does not take these tensors (None when it does; the build is not checked).

    Example:
        >>> cpp_refusal(torch.zeros(2, 3), torch.zeros(4, 5, 3)) is None
        True
        >>> print(cpp_refusal(torch.zeros(2, 3), torch.zeros(4, 5, 3, dtype=torch.bfloat16)))
        the C++ engine takes u and v in h's dtype (float32 or float64); got torch.bfloat16 weights
    """
    if h.device.type != "cpu":
        return f"the C++ engine runs on CPU tensors; got tensors on {h.device}"
    if h.dtype not in (torch.float32, torch.float64):
        return f"the C++ engine takes a float32 or float64 h; got {h.dtype}"
    if u.dtype != h.dtype:
        return f"the C++ engine takes u and v in h's dtype (float32 or float64); got {u.dtype} weights"
    return None


@torch.library.custom_op("deepres::cpp_stack", mutates_args=(), device_types="cpu")
def cpp_stack(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
              activation: str, every: int, save_checkpoints: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of the C++ engine: (h_L, checkpoints h_k, h_2k, … or an empty tensor).

    Arguments and results are those of
    :func:`deepres.engines.torch_engine.torch_stack`, except that h0 is float32 or
    float64 and u, v are in h0's dtype.
    """
    code = ACTIVATION_CODES[activation]
    out, checkpoints = cpp_module().forward(h0, u, v, multiplier, pre_scale, code, every, save_checkpoints)
    return out, checkpoints


@torch.library.custom_op("deepres::cpp_stack_backward", mutates_args=(), device_types="cpu")
def cpp_stack_backward(grad_out: torch.Tensor, h0: torch.Tensor, checkpoints: torch.Tensor, u: torch.Tensor,
                       v: torch.Tensor, multiplier: float, pre_scale: float, activation: str, every: int,
                       needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the C++ engine (the formulas of :mod:`deepres.engines.torch_engine`).

    Arguments and results are those of
    :func:`deepres.engines.torch_engine.torch_stack_backward`; the weight
    gradients are in the weights' dtype, which is h0's.
    """
    need_h, need_u, need_v = needs
    grads = cpp_module().backward(grad_out, h0, checkpoints, u, v, multiplier, pre_scale,
                                  ACTIVATION_CODES[activation], every, need_h, need_u, need_v)
    return grads[0], grads[1], grads[2]


@torch.library.custom_op("deepres::cpp_stack_jvp", mutates_args=(), device_types="cpu")
def cpp_stack_jvp(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, h0_dot: torch.Tensor,
                  u_dot: torch.Tensor, v_dot: torch.Tensor, multiplier: float, pre_scale: float,
                  activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-mode derivative of the stack: (h_L, ḣ_L) for tangents (ḣ_0, u̇, v̇), in one pass.

    ḣ_l = ḣ_{l−1} + c·Σ_j [v̇_j σ(z_j) + v_j σ'(z_j)·a·(u̇_jᵀh_{l−1} + u_jᵀḣ_{l−1})], in the
    layer loop of the forward: nothing L-sized is kept.

    Args:
        h0, u, v: as :func:`cpp_stack`. h0_dot, u_dot, v_dot: tangents, the shapes
            and dtype of h0, u, v. multiplier, pre_scale, activation: as :func:`cpp_stack`.

    Returns:
        (h_L, ḣ_L), both (R, B, D).
    """
    out, tangent = cpp_module().jvp(h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale,
                                    ACTIVATION_CODES[activation])
    return out, tangent


@cpp_stack_jvp.register_fake
def _(h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale, activation):
    return h0.new_empty(h0.shape), h0.new_empty(h0.shape)


stack_fakes(cpp_stack, cpp_stack_backward, checkpoints_hold_input=False,
            gradient_dtype=lambda weights: weights.dtype)
register_vjp(cpp_stack, *stack_vjp(cpp_stack, cpp_stack_backward, reference_residual_stack),
             saved_outputs=(1,))



def _jvp(h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale, activation):
    """:func:`cpp_stack_jvp` where a tangent may be None (a zero tangent: forward_ad leaves it out)."""
    h0_dot, u_dot, v_dot = (torch.zeros_like(p) if t is None else t
                            for t, p in zip((h0_dot, u_dot, v_dot), (h0, u, v), strict=True))
    return cpp_stack_jvp(h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale, activation)


#: The engine's ops for :func:`deepres.engines.transforms.stack_apply` (torch.func support):
#: forward mode runs the fused jvp loop ``deepres::cpp_stack_jvp``.
CPP_OPS = StackOps("cpp", cpp_stack, cpp_stack_backward, _jvp)


def cpp_residual_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                       activation: str, every: int) -> torch.Tensor:
    """Run the C++ engine on replica-form tensors: :func:`deepres.engines.torch_engine.torch_residual_stack`
    compiled (no argument checks: see :func:`deepres.residual_stack` for the public entry point).

    Args:
        h: h_0, (R, B, D), float32 or float64. u, v: (R, L, M, D) in h's dtype.
        multiplier, pre_scale, activation, every: c, a, σ's name, the checkpoint
        segment length k ≥ 1.

    Returns:
        h_L, (R, B, D), differentiable in h, u and v (to any order).

    Example:
        >>> from deepres.engines.torch_engine import torch_residual_stack
        >>> tensors = torch.randn(1, 4, 3), torch.randn(1, 8, 2, 3), torch.randn(1, 8, 2, 3)
        >>> out = cpp_residual_stack(*tensors, 1 / 16, 1 / 3, "tanh", every=3)
        >>> torch.allclose(out, torch_residual_stack(*tensors, 1 / 16, 1 / 3, "tanh", every=3), atol=1e-5)
        True
    """
    return stack_apply(CPP_OPS, h, u, v, multiplier, pre_scale, activation, every)
