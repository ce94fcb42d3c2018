"""Forward mode of the PyTorch engine: the fused jvp op ``deepres::torch_stack_jvp``.

The tangent moves through the same layer loop as h, with no second pass over
the layers and nothing L-sized kept. Layer l, with x = h_{l−1}, ẋ = ḣ_{l−1},
z_j = a·u_jᵀx:

    h_l = x + c·Σ_j v_j σ(z_j)
    ḣ_l = ẋ + c·Σ_j [v̇_j σ(z_j) + v_j σ'(z_j)·a·(u̇_jᵀx + u_jᵀẋ)]

(the derivative of the first line along (ẋ, u̇, v̇)). Batched as matrices:
Z = a·x uᵀ (B, M), Ż = a·(ẋ uᵀ + x u̇ᵀ), W = σ'(Z) ⊙ Ż, then
h_l = x + c·σ(Z) v and ḣ_l = ẋ + c·(σ(Z) v̇ + W v).

Layout. x and ẋ are kept stacked as one (R, 2B, D) state, so Z and a·ẋ uᵀ come
from one GEMM with 2B rows, and σ(Z) v and W v from another (σ(Z) and W
stacked the same way): four GEMM calls per layer (two when u̇ and v̇ are
None) instead of six. A None tangent is a zero one: its terms are skipped.

The op is also registered for autograd (the vector–Jacobian product of the
jvp map through the plain reference, exact to every order), so it is a
first-class custom op like the forward and backward ones.
"""

from __future__ import annotations

import torch

from deepres.activations import activation_and_derivative
from deepres.engines.common import autocast_disabled
from deepres.engines.reference import reference_residual_stack

__all__ = ["torch_stack_jvp"]


def _layers(weights: torch.Tensor | None, dtype: torch.dtype) -> list[torch.Tensor] | None:
    """The (R, M, D) layers of an (R, L, M, D) tensor in ``dtype`` (upcast one layer at a time), or None."""
    if weights is None:
        return None
    layers = weights.unbind(1)
    return list(layers) if weights.dtype == dtype else [w.to(dtype) for w in layers]


@torch.library.custom_op("deepres::torch_stack_jvp", mutates_args=())
def torch_stack_jvp(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, h0_dot: torch.Tensor | None,
                    u_dot: torch.Tensor | None, v_dot: torch.Tensor | None, multiplier: float,
                    pre_scale: float, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stack and its directional derivative in one walk over the layers (module docstring).

    Args:
        h0: (R, B, D). u, v: (R, L, M, D), h0's dtype or a lower one.
        h0_dot: ḣ_0, like h0, or None (zero). u_dot, v_dot: u̇, v̇, like u, or None (zero).
        multiplier: c. pre_scale: a. activation: an activation name.

    Returns:
        (h_L, ḣ_L), both (R, B, D) in h0's dtype.
    """
    c, a = multiplier, pre_scale
    with autocast_disabled(h0.device.type):
        replicas, batch, _ = h0.shape
        dtype = h0.dtype
        us, vs = _layers(u, dtype), _layers(v, dtype)
        u_dots, v_dots = _layers(u_dot, dtype), _layers(v_dot, dtype)
        state = h0.new_empty((replicas, 2 * batch, h0.shape[2]))
        state[:, :batch] = h0
        if h0_dot is None:
            state[:, batch:] = 0.0
        else:
            state[:, batch:] = h0_dot
        hidden = u.shape[2]
        pre = h0.new_empty((replicas, 2 * batch, hidden))  # [Z; a·ẋuᵀ (+ a·x u̇ᵀ)]
        act = h0.new_empty((replicas, 2 * batch, hidden))  # [σ(Z); W]
        ignored = h0.new_empty(())
        for layer in range(u.shape[1]):
            x = state[:, :batch]
            torch.baddbmm(ignored, state, us[layer].transpose(1, 2), beta=0.0, alpha=a, out=pre)
            z, z_dot = pre[:, :batch], pre[:, batch:]
            if u_dots is not None:
                z_dot.baddbmm_(x, u_dots[layer].transpose(1, 2), alpha=a)
            s, ds = activation_and_derivative(activation, z)
            act[:, :batch] = s
            torch.mul(ds, z_dot, out=act[:, batch:])
            state = torch.baddbmm(state, act, vs[layer], alpha=c)
            if v_dots is not None:
                state[:, batch:].baddbmm_(s, v_dots[layer], alpha=c)
        return state[:, :batch].clone(), state[:, batch:].clone()


@torch_stack_jvp.register_fake
def _(h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale, activation):
    return h0.new_empty(h0.shape), h0.new_empty(h0.shape)


def _setup_context(ctx, inputs, output):
    h0, u, v, h0_dot, u_dot, v_dot, multiplier, pre_scale, activation = inputs
    present = tuple(t is not None for t in (h0_dot, u_dot, v_dot))
    like = (h0, u, v)
    tangents = [t if t is not None else torch.zeros_like(p) for t, p in zip((h0_dot, u_dot, v_dot), like,
                                                                             strict=True)]
    ctx.save_for_backward(h0, u, v, *tangents)
    ctx.options = (multiplier, pre_scale, activation, present)


def _backward(ctx, grad_out, grad_out_dot):
    primals = ctx.saved_tensors
    c, a, act, present = ctx.options

    def both(h, u, v, hd, ud, vd):
        return torch.func.jvp(lambda hh, uu, vv: reference_residual_stack(hh, uu, vv, c, a, act), (h, u, v),
                              (hd, ud, vd))

    _, pullback = torch.func.vjp(both, *primals)
    grads = pullback((grad_out, grad_out_dot))
    tangent_grads = tuple(g if p else None for g, p in zip(grads[3:], present, strict=True))
    return (*grads[:3], *tangent_grads, None, None, None)


torch_stack_jvp.register_autograd(_backward, setup_context=_setup_context)
