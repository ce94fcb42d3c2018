"""The exact gradient of the discrete solve (discretize-then-optimize), the backward of the
``gradient="discrete"`` route.

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

from deepres.meanode.field import Field
from deepres.meanode.pool import gradient_buffer
from deepres.meanode.stepping import StateProvider, explicit_rk
from deepres.meanode.tableaus import Tableau

__all__ = ["discrete_gradients"]


def discrete_gradients(field: Field, tab: Tableau, steps: int, every: int, grad_h1: torch.Tensor,
                       h0: torch.Tensor, checkpoints: torch.Tensor, h1: torch.Tensor, pool_id: int,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The exact gradient of the discrete solve (see the module docstring); no autograd.

    Args:
        field: the field of the solve's weights. tab, steps: the solver and N.
        every: checkpoint segment length k. grad_h1: ∂loss/∂h(1), (B, D).
        h0: h(0). checkpoints: h at steps k, 2k, …. h1: h(1).
        pool_id: gradient-buffer pool (0: none).

    Returns:
        (∂loss/∂h(0) (B, D), ∂/∂uᵀ and ∂/∂vᵀ as feature-major (nodes, D, K) tensors).
    """
    f = field
    delta = 1.0 / steps
    provider = StateProvider(f, tab, steps, every, h0, checkpoints, h1)
    nodes = tab.num_nodes(steps)
    shape = (nodes, f.ut.shape[1], f.ut.shape[2])
    grad_ut = gradient_buffer(pool_id, shape, f.ut)
    grad_vt = gradient_buffer(pool_id, shape, f.ut)
    written = [False] * nodes
    s_bufs = [f.buffer() for _ in range(tab.stages)]
    ds_bufs = [f.buffer() for _ in range(tab.stages)]
    q = f.buffer()
    # k_r is needed in the recomputation only if a later stage reads it.
    feeds = [any(len(row) > r and row[r] for row in tab.a) for r in range(tab.stages)]
    lam = grad_h1.contiguous()
    for i in range(steps - 1, -1, -1):
        ys, ss, dss = [], [], []

        def stage(r: int, y: torch.Tensor, i: int = i, ys: list = ys, ss: list = ss, dss: list = dss,
                  ) -> torch.Tensor | None:
            node = tab.node(i, r)
            s, ds = f.pair(y, node, s_bufs[r], ds_bufs[r])
            ys.append(y)
            ss.append(s)
            dss.append(ds)
            return f.from_activation(s, node) if feeds[r] else None

        explicit_rk(tab, provider.state(i), delta, stage, output=False)
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
    return lam, grad_ut, grad_vt
