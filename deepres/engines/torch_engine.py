"""The pure-PyTorch engine: eq. (1) with a hand-written, memory-efficient backward.

Works on every device and dtype PyTorch supports (float64 included). It keeps
only the residual stream h at checkpoints: before every layer when k = 1
(L·B·D numbers), or before every k-th layer, recomputing each segment of k
layers in the backward pass ((⌈L/k⌉ + k)·B·D numbers). Nothing M-wide is ever
kept between the passes.

Backward of one layer (docs/design.md §1), with g = ∂loss/∂h_l, x = h_{l-1},
z = a·x uᵀ (B, M), s = σ(z), q = g vᵀ (B, M) and p = σ'(z) ⊙ q:

    ∂loss/∂v_l = c · sᵀ g                  (M, D)
    ∂loss/∂u_l = c·a · pᵀ x                (M, D)
    g_{l-1}    = g + c·a · p u_l           (B, D)

Derivation: h_l = x + c·σ(a·x uᵀ) v, so for a perturbation δx,
δh_l = δx + c·(σ'(z) ⊙ (a·δx uᵀ)) v and gᵀδh_l = gᵀδx + c·a·⟨σ'(z) ⊙ (g vᵀ), δx uᵀ⟩,
which is ⟨g + c·a·p u, δx⟩. The same pairing with δu and δv gives the two
weight gradients. Each ∂u_l, ∂v_l is written once into a preallocated (L, M, D)
buffer, so the backward costs O(L·M·D) memory traffic, not O(L²·M·D) as a loop
over slices of one stacked parameter would under autograd.

All tensors are in replica form here: h (R, B, D), u and v (R, L, M, D).
Weights stored in a lower precision than h are upcast one layer at a time.

The engine is two ``torch.library`` custom operators, ``deepres::torch_stack``
(forward) and ``deepres::torch_stack_backward``, tied together for autograd by
:func:`deepres.engines.common.register_vjp`. The forward keeps the
input h_0 itself as the first checkpoint (a reference, not a copy) and returns
the others, h_k, h_{2k}, …, as an (⌈L/k⌉ − 1, R, B, D) tensor.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from deepres.activations import activation as apply_activation
from deepres.activations import activation_vjp
from deepres.engines.common import (
    autocast_disabled,
    register_vjp,
    segments,
    stack_fakes,
    stack_vjp,
)
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_jvp import torch_stack_jvp
from deepres.engines.transforms import StackOps, stack_apply

__all__ = ["TORCH_OPS", "torch_residual_stack", "torch_stack", "torch_stack_backward"]


@functools.lru_cache(maxsize=32)
def _ignored_input(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-dim tensor for baddbmm's ``input`` where beta=0 makes it ignored (broadcast, never read)."""
    return torch.empty((), dtype=dtype, device=device)


def _scaled_bmm(left: torch.Tensor, right: torch.Tensor, scale: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """scale · left @ right, batched, with the scale applied inside the GEMM."""
    # beta=0 makes baddbmm ignore its first argument: the scale rides in the GEMM's alpha
    # instead of costing a separate elementwise pass over the result. NOTE: building a
    # zero-stride view for that argument on every call cost 1.7 µs of the 4.9 µs of a
    # 64×16×64 product (one CPU thread); a cached 0-dim tensor costs nothing.
    return torch.baddbmm(_ignored_input(left.dtype, left.device), left, right, beta=0.0, alpha=scale,
                         out=out)


def _layer(h: torch.Tensor, u_l: torch.Tensor, v_l: torch.Tensor, c: float, a: float, act: str,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """One layer of eq. (1): h + c·σ(a·h uᵀ) v, batched over replicas."""
    z = _scaled_bmm(h, u_l.transpose(1, 2), a)
    return torch.baddbmm(h, apply_activation(act, z), v_l, alpha=c, out=out)


def _layer_weights(weights: torch.Tensor, dtype: torch.dtype) -> Callable[[int], torch.Tensor]:
    """layer ↦ that layer's (R, M, D) weights in ``dtype``.

    The (R, L, M, D) tensor is unbound once per pass (one call, not a slice per layer);
    weights stored in a lower precision are upcast one layer at a time, when it runs.
    """
    layers = weights.unbind(1)
    if weights.dtype == dtype:
        return layers.__getitem__
    return lambda layer: layers[layer].to(dtype)


@torch.library.custom_op("deepres::torch_stack", mutates_args=())
def torch_stack(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                activation: str, every: int, save_checkpoints: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of the PyTorch engine: (h_L, checkpoints h_k, h_2k, … or an empty tensor).

    Args:
        h0: (R, B, D). u, v: (R, L, M, D), h0's dtype or a lower one.
        multiplier: c. pre_scale: a. activation: an activation name.
        every: checkpoint segment length k ≥ 1.
        save_checkpoints: return the checkpoints after h_0, (⌈L/k⌉ − 1, R, B, D);
            otherwise an empty (0,) tensor.

    Returns:
        (h_L (R, B, D), checkpoints).
    """
    with autocast_disabled(h0.device.type):
        replicas, batch, dim = h0.shape
        depth = u.shape[1]
        layout = segments(depth, every)
        weight_u, weight_v = _layer_weights(u, h0.dtype), _layer_weights(v, h0.dtype)
        shape = (len(layout) - 1, replicas, batch, dim) if save_checkpoints else (0,)
        checkpoints = h0.new_empty(shape)
        h = h0
        for index, (start, stop) in enumerate(layout):
            if index > 0 and save_checkpoints:
                checkpoints[index - 1].copy_(h)
            for layer in range(start, stop):
                h = _layer(h, weight_u(layer), weight_v(layer), multiplier, pre_scale, activation)
        return h, checkpoints


@torch.library.custom_op("deepres::torch_stack_backward", mutates_args=())
def torch_stack_backward(grad_out: torch.Tensor, h0: torch.Tensor, checkpoints: torch.Tensor, u: torch.Tensor,
                         v: torch.Tensor, multiplier: float, pre_scale: float, activation: str, every: int,
                         needs: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of the PyTorch engine (see the module docstring for the formulas).

    Args:
        grad_out: ∂loss/∂h_L, (R, B, D). h0: the forward's input. checkpoints:
            the forward's h_k, h_2k, …. u, v, multiplier, pre_scale, activation,
            every: as in the forward. needs: three bools, whether ∂/∂h0, ∂/∂u,
            ∂/∂v are wanted.

    Returns:
        (∂loss/∂h0 (R, B, D), ∂loss/∂u, ∂loss/∂v (R, L, M, D) in the weights' dtype);
        an empty (0,) tensor in place of each gradient not wanted.
    """
    need_h, need_u, need_v = needs
    c, a, act = multiplier, pre_scale, activation
    with autocast_disabled(grad_out.device.type):
        depth = u.shape[1]
        compute = h0.dtype
        weight_u, weight_v = _layer_weights(u, compute), _layer_weights(v, compute)
        grad_u = u.new_empty(u.shape if need_u else (0,))
        grad_v = v.new_empty(v.shape if need_v else (0,))
        # With one replica the per-layer gradient slots are contiguous: the GEMMs write into
        # them directly instead of into a temporary that is then copied.
        direct = u.shape[0] == 1 and u.dtype == compute
        g = grad_out.to(compute).contiguous()
        ca = c * a
        layout = segments(depth, every)
        # Inputs of the layers of the current segment, recomputed from its checkpoint.
        inputs = h0.new_empty((min(every, depth), *h0.shape))
        for index in range(len(layout) - 1, -1, -1):
            start, stop = layout[index]
            checkpoint = h0 if index == 0 else checkpoints[index - 1]
            if every == 1:
                layer_inputs = checkpoint.unsqueeze(0)
            else:
                inputs[0].copy_(checkpoint)
                for offset, layer in enumerate(range(start, stop - 1)):
                    _layer(inputs[offset], weight_u(layer), weight_v(layer), c, a, act,
                           out=inputs[offset + 1])
                layer_inputs = inputs
            for layer in range(stop - 1, start - 1, -1):
                x = layer_inputs[layer - start]
                u_l, v_l = weight_u(layer), weight_v(layer)
                z = _scaled_bmm(x, u_l.transpose(1, 2), a)
                s = apply_activation(act, z)
                if need_v:
                    if direct:
                        _scaled_bmm(s.transpose(1, 2), g, c, out=grad_v[:, layer])
                    else:
                        grad_v[:, layer] = _scaled_bmm(s.transpose(1, 2), g, c)
                p = activation_vjp(act, torch.bmm(g, v_l.transpose(1, 2)), z, s)  # σ'(z) ⊙ (g vᵀ)
                if need_u:
                    if direct:
                        _scaled_bmm(p.transpose(1, 2), x, ca, out=grad_u[:, layer])
                    else:
                        grad_u[:, layer] = _scaled_bmm(p.transpose(1, 2), x, ca)
                g = torch.baddbmm(g, p, u_l, alpha=ca)
        grad_h = g if need_h else g.new_empty((0,))
        if grad_h is grad_out:  # an op's output must not alias its input
            grad_h = grad_h.clone()
        return grad_h, grad_u, grad_v


stack_fakes(torch_stack, torch_stack_backward, checkpoints_hold_input=False,
            gradient_dtype=lambda weights: weights.dtype)
register_vjp(torch_stack, *stack_vjp(torch_stack, torch_stack_backward, reference_residual_stack),
             saved_outputs=(1,))

#: The engine's ops for :func:`deepres.engines.transforms.stack_apply` (torch.func support).
TORCH_OPS = StackOps("torch", torch_stack, torch_stack_backward, torch_stack_jvp)


def torch_residual_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                         pre_scale: float, activation: str, every: int) -> torch.Tensor:
    """Run the PyTorch engine on replica-form tensors (no argument checks: see
    :func:`deepres.residual_stack` for the public entry point).

    Args:
        h: h_0, (R, B, D). u, v: (R, L, M, D). multiplier: c. pre_scale: a.
        activation: an activation name. every: checkpoint segment length k ≥ 1.

    Returns:
        h_L, (R, B, D), differentiable in h, u and v (to any order).

    Example:
        >>> h, u, v = torch.randn(1, 4, 3), torch.randn(1, 8, 2, 3), torch.randn(1, 8, 2, 3)
        >>> torch_residual_stack(h, u, v, 1 / 16, 1 / 3, "tanh", every=3).shape
        torch.Size([1, 4, 3])
    """
    return stack_apply(TORCH_OPS, h, u, v, multiplier, pre_scale, activation, every)
