"""The pure-PyTorch engine: eq. (1) with a hand-written, memory-efficient backward.

Works on every device and dtype PyTorch supports (float64 included). It keeps
only the residual stream h at checkpoints: before every layer when k = 1
(L·B·D numbers), or before every k-th layer, recomputing each segment of k
layers in the backward pass ((⌈L/k⌉ + k)·B·D numbers). Nothing M-wide is ever
kept between the passes.

Backward of one layer (DESIGN §1), with g = ∂loss/∂h_l, x = h_{l-1},
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
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from deepres.activations import activation as apply_activation
from deepres.activations import activation_vjp
from deepres.engines.common import segments

__all__ = ["TorchStackFunction", "torch_residual_stack"]


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


class TorchStackFunction(torch.autograd.Function):
    """autograd Function of the PyTorch engine (replica form, see module docstring)."""

    @staticmethod
    def forward(ctx, h0, u, v, multiplier, pre_scale, activation, every):  # type: ignore[override]
        replicas, batch, dim = h0.shape
        depth = u.shape[1]
        layout = segments(depth, every)
        weight_u, weight_v = _layer_weights(u, h0.dtype), _layer_weights(v, h0.dtype)
        checkpoints = h0.new_empty((len(layout), replicas, batch, dim))
        h = h0
        for index, (start, stop) in enumerate(layout):
            checkpoints[index].copy_(h)
            for layer in range(start, stop):
                h = _layer(h, weight_u(layer), weight_v(layer), multiplier, pre_scale,
                           activation)
        ctx.save_for_backward(checkpoints, u, v)
        ctx.config = (multiplier, pre_scale, activation, every)
        return h.clone() if h is h0 else h

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        checkpoints, u, v = ctx.saved_tensors
        c, a, act, every = ctx.config
        need_h, need_u, need_v = ctx.needs_input_grad[:3]
        depth = u.shape[1]
        compute = checkpoints.dtype
        weight_u, weight_v = _layer_weights(u, compute), _layer_weights(v, compute)
        grad_u = torch.empty(u.shape, dtype=u.dtype, device=u.device) if need_u else None
        grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device) if need_v else None
        # With one replica the per-layer gradient slots are contiguous: the GEMMs write into
        # them directly instead of into a temporary that is then copied.
        direct = u.shape[0] == 1 and u.dtype == compute
        g = grad_out.to(compute).contiguous()
        ca = c * a
        layout = segments(depth, every)
        # Inputs of the layers of the current segment, recomputed from its checkpoint.
        inputs = checkpoints.new_empty((min(every, depth), *checkpoints.shape[1:]))
        for index in range(len(layout) - 1, -1, -1):
            start, stop = layout[index]
            if every == 1:
                layer_inputs = checkpoints[index : index + 1]
            else:
                inputs[0].copy_(checkpoints[index])
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
        grad_h = g if need_h else None
        return grad_h, grad_u, grad_v, None, None, None, None


def torch_residual_stack(
    h: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    multiplier: float,
    pre_scale: float,
    activation: str,
    every: int,
) -> torch.Tensor:
    """Run the PyTorch engine on replica-form tensors (no argument checks: see
    :func:`deepres.residual_stack` for the public entry point)."""
    return TorchStackFunction.apply(h, u, v, float(multiplier), float(pre_scale), activation, every)
