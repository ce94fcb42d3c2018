"""The exact gradient of the discrete solve (discretize-then-optimize) as a ``torch.autograd.Function``.

Backward of one explicit Runge–Kutta step (reverse-mode through the stages):
with Y_r = h_i + Δ Σ_{q<r} a_{rq} k_q, k_r = F(Y_r, θ_{n(r)}) and
h_{i+1} = h_i + Δ Σ_r b_r k_r, let λ = ∂ℓ/∂h_{i+1}. Going through the stages
from last to first,

    κ_r = ∂ℓ/∂k_r = Δ·b_r·λ + Δ·Σ_{q>r} a_{qr}·μ_q,      μ_r = ∂ℓ/∂Y_r = (∂_h F(Y_r))ᵀ κ_r,

and ∂ℓ/∂θ_{n(r)} += the weight VJPs of F at Y_r with cotangent κ_r
(:class:`deepres.meanode.field.Field`); finally ∂ℓ/∂h_i = λ + Σ_r μ_r. Nodes
shared by several stages (rk4's half-step node, and its step ends, read by
two consecutive steps) accumulate. The stage states of step i are recomputed
from h_i, which comes from the checkpoints (every step, or every k-th and a
recomputed segment), so memory is (N/k + k)·B·D numbers plus O(stages·B·K)
work buffers. For euler this is exactly the backward of the residual stack
with c = Δ·m/K (:mod:`deepres.engines.torch_engine`).
"""

from __future__ import annotations

import torch

from deepres.meanode.solver import SolveConfig, StateProvider, make_field, run_forward

__all__ = ["DiscreteFunction"]


class DiscreteFunction(torch.autograd.Function):
    """h(1) of the mean ODE with the exact backward of the discrete solve (see the module docstring).

    ``apply(h0 (B, D), u (nodes, K, D), v (nodes, K, D), config)`` returns
    (h(1) (B, D), h at the nodes (nodes, B, D) or an empty tensor; not differentiable).
    """

    @staticmethod
    def forward(ctx, h0, u, v, config):  # type: ignore[override]
        return run_forward(ctx, h0, u, v, config)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_h1, grad_nodes):  # type: ignore[override]
        checkpoints, h1, u, v = ctx.saved_tensors
        config: SolveConfig = ctx.config
        tab, steps = config.tab, config.steps
        delta = 1.0 / steps
        f = make_field(u, v, config, h1.shape[0])
        provider = StateProvider(f, tab, steps, config.every, checkpoints, h1)
        nodes = u.shape[0]
        shape = (nodes, f.ut.shape[1], f.ut.shape[2])
        grad_ut = config.gradient_buffer(shape, f.ut)
        grad_vt = config.gradient_buffer(shape, f.ut)
        written = [False] * nodes
        s_bufs = [f.buffer() for _ in range(tab.stages)]
        ds_bufs = [f.buffer() for _ in range(tab.stages)]
        q = f.buffer()
        # k_r is needed in the recomputation only if a later stage reads it.
        feeds = [any(len(row) > r and row[r] for row in tab.a) for r in range(tab.stages)]
        lam = grad_h1.contiguous()
        for i in range(steps - 1, -1, -1):
            h = provider.state(i)
            ys, ss, dss, ks = [], [], [], []
            for r in range(tab.stages):
                y = h
                for col, coef in enumerate(tab.a[r]):
                    if coef:
                        y = torch.add(y, ks[col], alpha=delta * coef)
                node = tab.node(i, r)
                s, ds = f.pair(y, node, s_bufs[r], ds_bufs[r])
                ys.append(y)
                ss.append(s)
                dss.append(ds)
                ks.append(f.from_activation(s, node) if feeds[r] else None)
            mus: list[torch.Tensor | None] = [None] * tab.stages
            lam_prev = lam
            for r in range(tab.stages - 1, -1, -1):
                kappa = lam * (delta * tab.b[r]) if tab.b[r] else None
                for later in range(r + 1, tab.stages):
                    coef = tab.a[later][r] if len(tab.a[later]) > r else 0.0
                    if coef:
                        kappa = (mus[later] * (delta * coef) if kappa is None
                                 else kappa.add_(mus[later], alpha=delta * coef))
                node = tab.node(i, r)
                p = f.pullback(kappa, node, dss[r], q)
                f.weight_grads(grad_ut, grad_vt, node, 1.0, written[node], ys[r], kappa, ss[r], p)
                written[node] = True
                mus[r] = f.adjoint(p, node)
                lam_prev = lam_prev + mus[r]
            lam = lam_prev
        for node in range(nodes):
            if not written[node]:
                grad_ut[node].zero_()
                grad_vt[node].zero_()
        need_h, need_u, need_v = ctx.needs_input_grad[:3]
        return (lam if need_h else None,
                grad_ut.transpose(1, 2) if need_u else None,
                grad_vt.transpose(1, 2) if need_v else None,
                None)
