"""Plain references for the mean-ODE solves: ordinary PyTorch ops and autograd, no custom backward.

They are the oracles the autograd Functions are tested against, and the
"what a user would write" baseline of the benchmarks: :func:`reference_solve`
is the same solver loop written with autograd, so its gradient is the exact
gradient of the discrete solve (the ``gradient="discrete"`` route);
:func:`reference_adjoint_gradients` runs the optimize-then-discretize scheme
of :mod:`deepres.meanode.adjoint` with one ``torch.autograd.grad`` call per
vector–Jacobian product (slow, but independent of the hand-written VJPs).
"""

from __future__ import annotations

import torch

from deepres.activations import activation as apply_activation
from deepres.meanode.tableaus import TABLEAUS

__all__ = ["reference_adjoint_gradients", "reference_field", "reference_solve"]


def reference_field(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                    pre_scale: float, activation: str) -> torch.Tensor:
    """F(h) = m·(1/K)·Σ_k v_k σ(a·u_kᵀh) for h (B, D), u and v (K, D)."""
    z = pre_scale * (h @ u.transpose(-1, -2))
    return (multiplier / u.shape[-2]) * (apply_activation(activation, z) @ v)


def reference_solve(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                    pre_scale: float, activation: str, solver: str) -> torch.Tensor:
    """h(1) by the fixed-grid solver loop, differentiable by autograd.

    Args:
        h0: (B, D). u, v: (nodes, K, D) on the solver's node grid.
        multiplier: m. pre_scale: a. activation: an activation name.
        solver: ``"euler"``, ``"midpoint"`` or ``"rk4"``.

    Returns:
        h(1), (B, D).

    Example:
        >>> from deepres import MeanODE
        >>> ode = MeanODE(4, 16, 8, particle_init="iid")
        >>> h0 = torch.randn(3, 4)
        >>> ref = reference_solve(h0, ode.u, ode.v, ode.field_multiplier, ode.pre_scale, "tanh", "rk4")
        >>> torch.allclose(ref, ode(h0), atol=1e-5)
        True
    """
    tab = TABLEAUS[solver]
    nodes = u.shape[0]
    steps = nodes // tab.nodes_per_step
    delta = 1.0 / steps
    # unbind: one autograd node for all slices (indexing would allocate a full
    # (nodes, K, D) zero gradient per slice in the backward pass).
    us, vs = u.unbind(0), v.unbind(0)
    h = h0
    for i in range(steps):
        ks = _stages(h, i, tab, delta,
                     lambda y, j: reference_field(y, us[j], vs[j], multiplier, pre_scale, activation))
        for r, coef in enumerate(tab.b):
            if coef:
                h = h + (delta * coef) * ks[r]
    return h


def _stages(h: torch.Tensor, step: int, tab, delta: float, field) -> list[torch.Tensor]:
    """The stage values k_r of one explicit RK step from h; ``field(y, node)`` evaluates F."""
    ks: list[torch.Tensor] = []
    for r in range(tab.stages):
        y = h
        for q, coef in enumerate(tab.a[r]):
            if coef:
                y = y + (delta * coef) * ks[q]
        ks.append(field(y, tab.node(step, r)))
    return ks


def _vjp(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, multiplier: float,
         pre_scale: float, activation: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂⟨β,F⟩/∂h, ∂⟨β,F⟩/∂u, ∂⟨β,F⟩/∂v) by autograd."""
    with torch.enable_grad():
        h, u, v = (t.detach().requires_grad_(True) for t in (h, u, v))
        out = (beta * reference_field(h, u, v, multiplier, pre_scale, activation)).sum()
        return torch.autograd.grad(out, (h, u, v))


def _field(h, u, v, m, a, act):
    with torch.no_grad():
        return reference_field(h, u, v, m, a, act)


def reference_adjoint_gradients(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, grad_h1: torch.Tensor,
                                multiplier: float, pre_scale: float, activation: str, solver: str,
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ODE-adjoint gradients by the scheme of :mod:`deepres.meanode.adjoint`, plainly written.

    Args:
        h0: (B, D). u, v: (nodes, K, D). grad_h1: ∂loss/∂h(1), (B, D).
        multiplier, pre_scale, activation, solver: as for :func:`reference_solve`.

    Returns:
        (∂/∂h0 (B, D), ∂/∂u (nodes, K, D), ∂/∂v (nodes, K, D), b at the nodes (nodes, B, D)).

    Example:
        >>> from deepres import MeanODE
        >>> ode = MeanODE(4, 16, 8, particle_init="iid", dtype=torch.float64)
        >>> h0, g = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
        >>> ode(h0).backward(g)
        >>> _, gu, gv, _ = reference_adjoint_gradients(h0, ode.u.detach(), ode.v.detach(), g,
        ...                                            ode.field_multiplier, ode.pre_scale, "tanh", "rk4")
        >>> torch.allclose(gu, ode.u.grad)
        True
    """
    tab = TABLEAUS[solver]
    m, a, act = multiplier, pre_scale, activation
    nodes = u.shape[0]
    steps = nodes // tab.nodes_per_step
    delta = 1.0 / steps
    weights = tab.node_weights(steps)
    last = nodes - 1
    # Forward: h at every step and F at the step's first stage.
    hs = [h0.detach()]
    for i in range(steps):
        h = hs[-1]
        ks = _stages(h, i, tab, delta, lambda y, j: _field(y, u[j], v[j], m, a, act))
        hs.append(h + delta * sum(coef * k for coef, k in zip(tab.b, ks, strict=True) if coef))

    def adj(h, b, j):
        return _vjp(h, u[j], v[j], b, m, a, act)[0]

    def dens(h, b, j):
        _, gu, gv = _vjp(h, u[j], v[j], b, m, a, act)
        return weights[j] * gu, weights[j] * gv

    grad_u, grad_v = torch.zeros_like(u), torch.zeros_like(v)
    b_nodes = torch.zeros((nodes, *h0.shape), dtype=h0.dtype, device=h0.device)
    b = grad_h1.detach()
    if solver == "euler":
        g = adj(hs[steps], b, last)
        for i in range(steps - 1, -1, -1):
            b = b + delta * g
            grad_u[i], grad_v[i] = dens(hs[i], b, i)
            b_nodes[i] = b
            g = adj(hs[i], b, i)
    elif solver == "midpoint":
        g = adj(hs[steps], b, last)
        for i in range(steps - 1, -1, -1):
            h_mid = 0.5 * (hs[i] + hs[i + 1])
            b_pred = b + 0.5 * delta * g
            grad_u[2 * i + 1], grad_v[2 * i + 1] = dens(h_mid, b_pred, 2 * i + 1)
            b_nodes[2 * i + 1] = b_pred
            b = b + delta * adj(h_mid, b_pred, 2 * i + 1)
            grad_u[2 * i], grad_v[2 * i] = dens(hs[i], b, 2 * i)
            b_nodes[2 * i] = b
            g = adj(hs[i], b, 2 * i)
    else:
        def f_at(i):
            return _field(hs[i], u[2 * i], v[2 * i], m, a, act)

        g = adj(hs[steps], b, 2 * steps)
        grad_u[-1], grad_v[-1] = dens(hs[steps], b, 2 * steps)
        b_nodes[-1] = b
        for i in range(steps - 1, -1, -1):
            lo, mid = 2 * i, 2 * i + 1
            h_mid = 0.5 * (hs[i] + hs[i + 1]) + delta / 8 * (f_at(i) - f_at(i + 1))
            g2 = adj(h_mid, b + 0.5 * delta * g, mid)
            g3 = adj(h_mid, b + 0.5 * delta * g2, mid)
            g4 = adj(hs[i], b + delta * g3, lo)
            b_lo = b + delta / 6 * (g + 2 * g2 + 2 * g3 + g4)
            g_lo = adj(hs[i], b_lo, lo)
            b_mid = 0.5 * (b_lo + b) + delta / 8 * (g - g_lo)
            grad_u[lo], grad_v[lo] = dens(hs[i], b_lo, lo)
            grad_u[mid], grad_v[mid] = dens(h_mid, b_mid, mid)
            b_nodes[lo], b_nodes[mid] = b_lo, b_mid
            b, g = b_lo, g_lo
    return b, grad_u, grad_v, b_nodes
