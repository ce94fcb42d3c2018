"""Forward mode of the mean-ODE solve: the op ``deepres::meanode_solve_jvp``.

The tangent ḣ = ∂h/∂(h0, u, v)·(ḣ0, u̇, v̇) is carried through the same
explicit Runge–Kutta loop as h (the derivative of the discrete solve, for
every solver and either gradient route: forward mode is always the exact
derivative of the discretized solve). At a stage with state Y, tangent Ẏ and
the node's particles (U, V), Z = a·Y Uᵀ (B, K):

    k = (m/K)·σ(Z) V
    k̇ = (m/K)·[σ(Z) V̇ + (σ'(Z) ⊙ a·(Ẏ Uᵀ + Y U̇ᵀ)) V]

and the stages combine as the solver's: Y_r = h + Δ Σ_q a_rq k_q,
Ẏ_r = ḣ + Δ Σ_q a_rq k̇_q, h ← h + Δ Σ_r b_r k_r, ḣ ← ḣ + Δ Σ_r b_r k̇_r.
Nothing is kept between steps; a None tangent is a zero one (its terms are
skipped). Its autograd (a derivative of the derivative) goes through the
plain autograd solve :func:`deepres.meanode.reference.reference_solve` with
``torch.func``, exact to every order.
"""

from __future__ import annotations

import torch

from deepres.activations import activation_and_derivative
from deepres.engines.common import autocast_disabled
from deepres.meanode.reference import reference_solve
from deepres.meanode.tableaus import TABLEAUS

__all__ = ["meanode_solve_jvp", "reference_solve_jvp"]


def _field_jvp(y: torch.Tensor, y_dot: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
               u_dot: torch.Tensor | None, v_dot: torch.Tensor | None, scale: float, pre_scale: float,
               activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(F(Y), ∂F·(Ẏ, U̇, V̇)) at one node; u, v (K, D); scale = m/K."""
    z = torch.mm(y, u.t()).mul_(pre_scale)
    z_dot = torch.mm(y_dot, u.t())
    if u_dot is not None:
        z_dot.addmm_(y, u_dot.t())
    s, ds = activation_and_derivative(activation, z)
    w = ds.mul_(z_dot).mul_(pre_scale)
    k_dot = torch.mm(w, v)
    if v_dot is not None:
        k_dot.addmm_(s, v_dot)
    return torch.mm(s, v).mul_(scale), k_dot.mul_(scale)


@torch.library.custom_op("deepres::meanode_solve_jvp", mutates_args=())
def meanode_solve_jvp(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, h0_dot: torch.Tensor | None,
                      u_dot: torch.Tensor | None, v_dot: torch.Tensor | None, solver: str, steps: int,
                      multiplier: float, pre_scale: float, activation: str,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """h(1) and its directional derivative, in one solve (see the module docstring).

    Args:
        h0: (B, D). u, v: (nodes, K, D). h0_dot: like h0, or None. u_dot, v_dot:
            like u, or None. solver: ``"euler"``, ``"midpoint"`` or ``"rk4"``.
            steps: N. multiplier: m. pre_scale: a. activation: an activation name.

    Returns:
        (h(1), ḣ(1)), both (B, D).
    """
    tab = TABLEAUS[solver]
    delta = 1.0 / steps
    scale = multiplier / u.shape[1]
    with autocast_disabled(h0.device.type):
        us, vs = u.unbind(0), v.unbind(0)
        u_dots = None if u_dot is None else u_dot.unbind(0)
        v_dots = None if v_dot is None else v_dot.unbind(0)
        h = h0.clone()
        h_dot = torch.zeros_like(h0) if h0_dot is None else h0_dot.clone()
        for step in range(steps):
            ks: list[tuple[torch.Tensor, torch.Tensor]] = []
            for r in range(tab.stages):
                y, y_dot = h, h_dot
                for q, coef in enumerate(tab.a[r]):
                    if coef:
                        y = torch.add(y, ks[q][0], alpha=delta * coef)
                        y_dot = torch.add(y_dot, ks[q][1], alpha=delta * coef)
                node = tab.node(step, r)
                ks.append(_field_jvp(y, y_dot, us[node], vs[node], None if u_dots is None else u_dots[node],
                                     None if v_dots is None else v_dots[node], scale, pre_scale, activation))
            for r, coef in enumerate(tab.b):
                if coef:
                    h.add_(ks[r][0], alpha=delta * coef)
                    h_dot.add_(ks[r][1], alpha=delta * coef)
        return h, h_dot


@meanode_solve_jvp.register_fake
def _(h0, u, v, h0_dot, u_dot, v_dot, solver, steps, multiplier, pre_scale, activation):
    return h0.new_empty(h0.shape), h0.new_empty(h0.shape)


def reference_solve_jvp(solver: str, multiplier: float, pre_scale: float, activation: str):
    """``(h0, u, v, ḣ0, u̇, v̇) ↦ (h(1), ḣ(1))`` of the plain autograd solve, differentiable again."""

    def both(h0, u, v, h0_dot, u_dot, v_dot):
        def solve(hh, uu, vv):
            return reference_solve(hh, uu, vv, multiplier, pre_scale, activation, solver)

        return torch.func.jvp(solve, (h0, u, v), (h0_dot, u_dot, v_dot))

    return both


def _setup_context(ctx, inputs, output):
    h0, u, v, h0_dot, u_dot, v_dot, solver, _steps, multiplier, pre_scale, activation = inputs
    present = tuple(t is not None for t in (h0_dot, u_dot, v_dot))
    tangents = [t if t is not None else torch.zeros_like(p)
                for t, p in zip((h0_dot, u_dot, v_dot), (h0, u, v), strict=True)]
    ctx.save_for_backward(h0, u, v, *tangents)
    ctx.options = (solver, multiplier, pre_scale, activation, present)


def _backward(ctx, grad_h1, grad_h1_dot):
    solver, multiplier, pre_scale, activation, present = ctx.options
    _, pullback = torch.func.vjp(reference_solve_jvp(solver, multiplier, pre_scale, activation),
                                 *ctx.saved_tensors)
    grads = pullback((grad_h1, grad_h1_dot))
    return (*grads[:3], *(g if p else None for g, p in zip(grads[3:], present, strict=True)),
            None, None, None, None, None)


meanode_solve_jvp.register_autograd(_backward, setup_context=_setup_context)
