"""The ODE-adjoint gradient (optimize-then-discretize): the backward of ``gradient="adjoint"``.

Derivation. Let h solve ∂_s h = F(h, θ(s)) on [0, 1] with the field of
:mod:`deepres.meanode.field`, F(h, θ) = m·(1/K) Σ_k v_k σ(a·u_kᵀh), and let
ℓ(h(1)) be the loss. Perturbing θ by δθ perturbs h by δh with
∂_s δh = ∂_h F δh + ∂_θ F δθ, δh(0) = 0. Define the adjoint b by

    −∂_s b = (∂_h F)ᵀ b = m·a·(1/K) Σ_k σ'(z_k) (v_kᵀ b) u_k,    b(1) = ∂ℓ/∂h(1),

(z_k = a·u_kᵀh). Then ∂_s (bᵀδh) = bᵀ ∂_θF δθ, so

    δℓ = b(1)ᵀ δh(1) = ∫₀¹ bᵀ ∂_θ F δθ ds = ∫₀¹ (1/K) Σ_k ρ_k(s)ᵀ δθ_k(s) ds,

with the pointwise gradient density of particle k (summed over the batch)

    ρ_k(s) = ∂_{θ_k} [ m · bᵀ v_k σ(a·u_kᵀ h) ]:   ∂_v = m σ(z_k) b,   ∂_u = m a σ'(z_k) (v_kᵀ b) h,

and ∂ℓ/∂h(0) = b(0). On the node grid, ∫ ≈ Σ_j q_j (·)(s_j) with the solver's
node weights q_j (:mod:`deepres.meanode.tableaus`), so the gradient returned
for node j is q_j·(1/K)·ρ(s_j): the density *at the node*, evaluated with h
and b at s_j — not the exact gradient of the discrete solve, which it matches
up to the solver's order (``gradient="discrete"`` is that one).

Discretization (same tableau as the forward, run backward in depth):

* euler: b_i = b_{i+1} + Δ·G(h_{i+1}, b_{i+1}) with the parameters of node
  i+1 (the last node at s = 1); density at node i from (h_i, b_i).
* midpoint: predictor b' = b_{i+1} + Δ/2·G(h_{i+1}, b_{i+1}), then
  b_i = b_{i+1} + Δ·G(h_mid, b') at node 2i+1, with h_mid = (h_i + h_{i+1})/2;
  density at node 2i+1 from (h_mid, b') (both O(Δ²)), at node 2i from (h_i, b_i).
* rk4: classical RK4 on b with stages at t_{i+1}, t_{i+1/2} (twice), t_i,
  reading nodes 2i+2, 2i+1, 2i+1, 2i; h at the half step is the cubic
  Hermite interpolant of (h_i, F_i, h_{i+1}, F_{i+1}), which is O(Δ⁴); the
  density at node 2i+1 uses that h and the Hermite interpolant of b built
  from (b_i, −G_i, b_{i+1}, −G_{i+1}), also O(Δ⁴).

Here G(h, b) = (∂_h F)ᵀ b is the adjoint field. Each node's activations are
evaluated once (σ and σ' from one buffer, see :class:`Field`) and shared by
the adjoint stages that read it and by its density, so a backward step of
rk4 costs two activation evaluations and two (B, K)-sized products per
stage; nothing (B, K)-sized is kept between the passes.

h at step i comes from the checkpoints (every step, or every k-th step and a
recomputed segment), or — with ``checkpoint_every="backsolve"`` — from
re-integrating h backward in depth with the same tableau alongside b (O(B·D)
memory, and an error O(Δ^p) in the recovered h, like the solver's own).
"""

from __future__ import annotations

import torch

from deepres._checks import BACKSOLVE
from deepres.meanode.field import Field
from deepres.meanode.pool import gradient_buffer
from deepres.meanode.stepping import StateProvider, backward_step, midpoint_state, top_node
from deepres.meanode.tableaus import Tableau

__all__ = ["adjoint_gradients"]


class _Sweep:
    """State shared by the backward sweeps: field, buffers, gradient outputs, h_i source."""

    def __init__(self, field: Field, tab: Tableau, steps: int, every: int, h0: torch.Tensor,
                 checkpoints: torch.Tensor, h1: torch.Tensor, pool_id: int) -> None:
        self.field, self.tab, self.steps = field, tab, steps
        self.delta = 1.0 / steps
        self.weights = tab.node_weights(steps)
        self.backsolve = every == BACKSOLVE
        self.provider = (None if self.backsolve
                         else StateProvider(field, tab, steps, every, h0, checkpoints, h1))
        nodes, d, k = tab.num_nodes(steps), field.ut.shape[1], field.ut.shape[2]
        self.grad_ut = gradient_buffer(pool_id, (nodes, d, k), field.ut)
        self.grad_vt = gradient_buffer(pool_id, (nodes, d, k), field.ut)
        self.s_node, self.ds_node = field.buffer(), field.buffer()
        self.s_mid, self.ds_mid = field.buffer(), field.buffer()
        self.q = field.buffer()
        self.work = field.buffer() if self.backsolve else None

    def previous(self, step: int, h_hi: torch.Tensor, f_hi: torch.Tensor | None) -> torch.Tensor:
        """h at ``step`` (going down from step + 1)."""
        if self.backsolve:
            return backward_step(self.field, self.tab, h_hi, step, self.steps, self.delta, f_hi,
                                 self.work)
        return self.provider.state(step)

    def density(self, node: int, h: torch.Tensor, b: torch.Tensor, s: torch.Tensor,
                p: torch.Tensor) -> None:
        self.field.weight_grads(self.grad_ut, self.grad_vt, node, self.weights[node], False, h, b, s, p)


def _start(sw: _Sweep, b: torch.Tensor, h1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(G at the node of s = 1, and F there when backsolving): where euler and midpoint start."""
    f, top = sw.field, top_node(sw.tab, sw.steps - 1, sw.steps)
    s, ds = f.pair(h1, top, sw.s_node, sw.ds_node)
    return f.adjoint(f.pullback(b, top, ds, sw.q), top), (f.from_activation(s, top) if sw.backsolve else None)


def _step_node(sw: _Sweep, node: int, h: torch.Tensor, b: torch.Tensor, more: bool,
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The density at a step's first node from (h, b); with ``more`` steps below it, also
    (G there, F there when backsolving) for the next step down."""
    f = sw.field
    s, ds = f.pair(h, node, sw.s_node, sw.ds_node)
    p = f.pullback(b, node, ds, sw.q)
    sw.density(node, h, b, s, p)
    if not more:
        return None, None
    return f.adjoint(p, node), (f.from_activation(s, node) if sw.backsolve else None)


def _sweep_euler(sw: _Sweep, b: torch.Tensor, h1: torch.Tensor) -> torch.Tensor:
    g, f_hi = _start(sw, b, h1)
    h_hi = h1
    for i in range(sw.steps - 1, -1, -1):
        b = torch.add(b, g, alpha=sw.delta)
        h = sw.previous(i, h_hi, f_hi)
        g, f_hi = _step_node(sw, i, h, b, i > 0)
        h_hi = h
    return b


def _sweep_midpoint(sw: _Sweep, b: torch.Tensor, h1: torch.Tensor) -> torch.Tensor:
    f, delta = sw.field, sw.delta
    g_hi, f_hi = _start(sw, b, h1)
    h_hi = h1
    for i in range(sw.steps - 1, -1, -1):
        h = sw.previous(i, h_hi, f_hi)
        mid = 2 * i + 1
        b_pred = torch.add(b, g_hi, alpha=0.5 * delta)
        h_mid = midpoint_state(sw.tab, h, h_hi, None, None, delta)
        s_m, ds_m = f.pair(h_mid, mid, sw.s_mid, sw.ds_mid)
        p = f.pullback(b_pred, mid, ds_m, sw.q)
        sw.density(mid, h_mid, b_pred, s_m, p)
        b = torch.add(b, f.adjoint(p, mid), alpha=delta)
        g_hi, f_hi = _step_node(sw, 2 * i, h, b, i > 0)
        h_hi = h
    return b


def _sweep_rk4(sw: _Sweep, b: torch.Tensor, h1: torch.Tensor) -> torch.Tensor:
    f, delta, steps = sw.field, sw.delta, sw.steps
    top = 2 * steps
    s, ds = f.pair(h1, top, sw.s_node, sw.ds_node)
    p = f.pullback(b, top, ds, sw.q)
    sw.density(top, h1, b, s, p)
    g_hi = f.adjoint(p, top)
    f_hi = f.from_activation(s, top)
    h_hi = h1
    for i in range(steps - 1, -1, -1):
        mid, lo = 2 * i + 1, 2 * i
        h = sw.previous(i, h_hi, f_hi)
        s_lo, ds_lo = f.pair(h, lo, sw.s_node, sw.ds_node)
        f_lo = f.from_activation(s_lo, lo)
        h_mid = midpoint_state(sw.tab, h, h_hi, f_lo, f_hi, delta)
        s_m, ds_m = f.pair(h_mid, mid, sw.s_mid, sw.ds_mid)
        # Classical RK4 on −∂_s b = G(h, b), from t_{i+1} down to t_i.
        g2 = f.adjoint(f.pullback(torch.add(b, g_hi, alpha=0.5 * delta), mid, ds_m, sw.q), mid)
        g3 = f.adjoint(f.pullback(torch.add(b, g2, alpha=0.5 * delta), mid, ds_m, sw.q), mid)
        g4 = f.adjoint(f.pullback(torch.add(b, g3, alpha=delta), lo, ds_lo, sw.q), lo)
        increment = torch.add(g_hi, g4).add_(torch.add(g2, g3), alpha=2.0)
        b_lo = torch.add(b, increment, alpha=delta / 6.0)
        # Node 2i: density and the adjoint field at (h_i, b_i).
        p = f.pullback(b_lo, lo, ds_lo, sw.q)
        sw.density(lo, h, b_lo, s_lo, p)
        g_lo = f.adjoint(p, lo)
        # Node 2i+1: density at the Hermite interpolants of h and b (db/ds = −G).
        b_mid = midpoint_state(sw.tab, b_lo, b, -g_lo, -g_hi, delta)
        p = f.pullback(b_mid, mid, ds_m, sw.q)
        sw.density(mid, h_mid, b_mid, s_m, p)
        b, g_hi, f_hi, h_hi = b_lo, g_lo, f_lo, h
    return b


_SWEEPS = {"euler": _sweep_euler, "midpoint": _sweep_midpoint, "rk4": _sweep_rk4}


def adjoint_gradients(field: Field, tab: Tableau, steps: int, every: int, grad_h1: torch.Tensor,
                      h0: torch.Tensor, checkpoints: torch.Tensor, h1: torch.Tensor, pool_id: int,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adjoint sweep (see the module docstring); no autograd.

    Args:
        field: the field of the solve's weights. tab, steps: the solver and N.
        every: checkpoint segment length k, or :data:`deepres._checks.BACKSOLVE`.
        grad_h1: ∂loss/∂h(1), (B, D). h0: h(0). checkpoints: h at steps k, 2k, …
            (empty for backsolve). h1: h(1). pool_id: gradient-buffer pool (0: none).

    Returns:
        (b(0) = ∂loss/∂h(0) (B, D), ∂/∂uᵀ and ∂/∂vᵀ as feature-major (nodes, D, K) tensors).
    """
    sweep = _Sweep(field, tab, steps, every, h0, checkpoints, h1, pool_id)
    b0 = _SWEEPS[tab.name](sweep, grad_h1.contiguous(), h1)
    return b0, sweep.grad_ut, sweep.grad_vt
