"""Providers of the ``meanode`` workload: the Neural Mean ODE solved with rk4.

``depth`` is the number of rk4 steps N, ``hidden`` the number of particles K,
``batch`` the number of samples; u, v (2N+1, K, D) live on the rk4 node grid
(node j at time j/(2N)); field F(h, s) = c·σ(a·h u(s)ᵀ) v(s) with c = α/K, a = 1/D.

- ``autograd-rk4`` (the baseline): plain autograd through the classic rk4 loop.
- ``deepres-meanode-adjoint`` / ``deepres-meanode-adjoint-backsolve`` /
  ``deepres-meanode-discrete``: :class:`deepres.MeanODE` (h kept at every step, or
  re-integrated backward; exact gradient of the discrete solve).
- ``torchdiffeq-odeint`` / ``torchdiffeq-odeint-adjoint``: torchdiffeq with
  ``method="rk4"`` on the same fixed grid, the field as an ``nn.Module`` whose
  parameters are indexed by time (the node nearest to t). Note: torchdiffeq's
  ``"rk4"`` is the 3/8-rule variant (stages at t + Δt/3, t + 2Δt/3, both mapped to
  the midpoint node), so its outputs agree with the classic rk4 only to the
  solver's order; the cost per step (four field evaluations) is the same.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

from deepres.benchmark.case import Case, Inputs
from deepres.benchmark.runner import Provider, Runner, adopt_weights, leaf, user_activation
from deepres.meanode import MeanODE

__all__ = ["TimeIndexedField", "meanode_providers"]


def _rk4_autograd(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, c: float, a: float, act: str,
                  steps: int) -> torch.Tensor:
    """Classic rk4 on the node grid (node 2n at s_n, 2n+1 at the midpoint), plain autograd.

    Written out on purpose rather than taken from deepres.meanode: the baseline is
    what a user writes without deepres.
    """

    # unbind: one autograd node for all nodes, whose backward stacks the per-node gradients
    # once; indexing u[j] per evaluation would build a full-size gradient for every evaluation.
    us, vs = u.unbind(0), v.unbind(0)

    def field(x: torch.Tensor, node: int) -> torch.Tensor:
        return c * (user_activation(act, a * (x @ us[node].T)) @ vs[node])

    dt = 1.0 / steps
    for n in range(steps):
        k1 = field(h, 2 * n)
        k2 = field(h + 0.5 * dt * k1, 2 * n + 1)
        k3 = field(h + 0.5 * dt * k2, 2 * n + 1)
        k4 = field(h + dt * k3, 2 * n + 2)
        h = h + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)
    return h


def _autograd_runner(case: Case, inputs: Inputs) -> Runner:
    u, v = leaf(inputs.u), leaf(inputs.v)

    def forward() -> torch.Tensor:
        return _rk4_autograd(inputs.h0, u, v, inputs.multiplier, inputs.pre_scale, case.activation,
                             case.depth)

    return Runner(forward, [u, v], lambda: {"u": u.grad, "v": v.grad}, case.mode, inputs.probe)


class TimeIndexedField(nn.Module):
    """The mean-ODE field F(t, h) = c·σ(a·h u(t)ᵀ) v(t) with parameters on a node grid.

    torchdiffeq needs the field as a module of (t, h); the parameters are one
    (K, D) pair per node, held in ``nn.ParameterList``s (separate leaves, as a user
    would write them: indexing one stacked parameter would make every evaluation's
    backward build a full-size gradient), used at the node nearest to t (node j at
    time j/(nodes − 1)).

    Args:
        u, v: (nodes, K, D). multiplier: c. pre_scale: a. activation: σ's name.
    """

    def __init__(self, u: torch.Tensor, v: torch.Tensor, multiplier: float, pre_scale: float,
                 activation: str) -> None:
        super().__init__()
        self.u = nn.ParameterList(nn.Parameter(t.detach().clone()) for t in u.unbind(0))
        self.v = nn.ParameterList(nn.Parameter(t.detach().clone()) for t in v.unbind(0))
        self.multiplier, self.pre_scale, self.activation = multiplier, pre_scale, activation
        self.intervals = u.shape[0] - 1

    def gradients(self) -> dict[str, torch.Tensor]:
        """∂u, ∂v stacked to (nodes, K, D) (zeros at nodes the solver never used)."""
        return {name: torch.stack([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
                for name, params in (("u", self.u), ("v", self.v))}

    def forward(self, t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        node = min(max(round(float(t.detach()) * self.intervals), 0), self.intervals)
        z = self.pre_scale * (h @ self.u[node].T)
        return self.multiplier * (user_activation(self.activation, z) @ self.v[node])


def _torchdiffeq_reason(case: Case) -> str | None:
    if importlib.util.find_spec("torchdiffeq") is None:
        return "torchdiffeq is not installed (pip install torchdiffeq)"
    return None


def _torchdiffeq_runner(case: Case, inputs: Inputs, adjoint: bool) -> Runner:
    import torchdiffeq

    fn = TimeIndexedField(inputs.u, inputs.v, inputs.multiplier, inputs.pre_scale, case.activation)
    steps = case.depth
    times = torch.tensor([0.0, 1.0], dtype=case.torch_dtype, device=inputs.h0.device)

    def grid(func: object, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # The same fixed grid of N steps, in either direction (the adjoint runs 1 → 0).
        return torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)

    options = {"grid_constructor": grid}
    solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint

    def forward() -> torch.Tensor:
        return solve(fn, inputs.h0, times, method="rk4", options=options)[-1]

    return Runner(forward, list(fn.parameters()), fn.gradients, case.mode, inputs.probe)


def _meanode_runner(case: Case, inputs: Inputs, gradient: str, policy: int | str | None = None) -> Runner:
    ode = MeanODE(case.dim, case.hidden, case.depth, alpha=case.alpha, activation=case.activation,
                  solver="rk4", gradient=gradient, checkpoint_every=policy, device=case.device,
                  dtype=case.torch_dtype)
    # MeanODE's field is m·(1/K)·Σ_k: its field_multiplier m over K is the benchmark's c.
    adopt_weights("MeanODE", ode.u, ode.v, inputs,
                  {"field_multiplier / K": (ode.field_multiplier / case.hidden, inputs.multiplier),
                   "pre_scale": (ode.pre_scale, inputs.pre_scale)})

    def forward() -> torch.Tensor:
        return ode(inputs.h0)

    return Runner(forward, [ode.u, ode.v], lambda: {"u": ode.u.grad, "v": ode.v.grad}, case.mode,
                  inputs.probe)


def meanode_providers() -> list[Provider]:
    """The providers of the ``meanode`` workload, the baseline ``autograd-rk4`` first.

    Example:
        >>> meanode_providers()[0].name
        'autograd-rk4'
    """
    return [
        Provider("autograd-rk4", "meanode", "plain autograd through the classic rk4 loop", _autograd_runner),
        Provider("deepres-meanode-adjoint", "meanode", "deepres.MeanODE, gradient='adjoint'",
                 lambda case, inputs: _meanode_runner(case, inputs, "adjoint")),
        Provider("deepres-meanode-adjoint-backsolve", "meanode",
                 "deepres.MeanODE, gradient='adjoint', checkpoint_every='backsolve' (O(B·D) memory)",
                 lambda case, inputs: _meanode_runner(case, inputs, "adjoint", "backsolve")),
        Provider("deepres-meanode-discrete", "meanode", "deepres.MeanODE, gradient='discrete'",
                 lambda case, inputs: _meanode_runner(case, inputs, "discrete")),
        Provider("torchdiffeq-odeint", "meanode", "torchdiffeq.odeint, method='rk4' (3/8 rule), same grid",
                 lambda case, inputs: _torchdiffeq_runner(case, inputs, adjoint=False),
                 reason=_torchdiffeq_reason),
        Provider("torchdiffeq-odeint-adjoint", "meanode",
                 "torchdiffeq.odeint_adjoint, method='rk4', same grid",
                 lambda case, inputs: _torchdiffeq_runner(case, inputs, adjoint=True),
                 reason=_torchdiffeq_reason),
    ]
