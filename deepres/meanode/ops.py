"""The mean-ODE solve as ``torch.library`` custom operators, with both gradient routes.

``deepres::meanode_solve`` integrates the mean ODE on its node grid and
returns (h(1), checkpoints, h at the nodes). Its backward is one of two ops,
chosen by the solve's ``gradient`` argument:

* ``deepres::meanode_adjoint_backward`` — the ODE adjoint
  (:mod:`deepres.meanode.adjoint`), optimize-then-discretize;
* ``deepres::meanode_discrete_backward`` — the exact gradient of the discrete
  solve (:mod:`deepres.meanode.discrete`), discretize-then-optimize.

As ops, ``torch.compile`` and ``torch.export`` see one node whatever the
number of steps. All tensors: h (B, D), u and v (nodes, K, D) (stored
feature-major by :class:`deepres.MeanODE`; any layout works), gradients of
u and v returned feature-major like the parameters. ``every`` is the
checkpoint segment length k ≥ 1, or :data:`deepres._checks.BACKSOLVE` for
backsolve (adjoint route only), as :class:`deepres.MeanODE` resolved it; it
travels unchanged to the solver and the gradient sweeps.
The first checkpoint is h(0) itself, kept by reference; the op returns those
at steps k, 2k, ….

Second-order gradients: the discrete route is differentiated again through
the plain autograd solve of :func:`deepres.meanode.reference.reference_solve`
(exact, with that solve's memory, for the ``create_graph=True`` call only);
the adjoint route's gradient approximates the discrete one to the solver's
order and is not itself the derivative of anything that could be
differentiated again, so asking for its graph is an error that says what to
use instead.
"""

from __future__ import annotations

import torch

from deepres._checks import BACKSOLVE
from deepres.engines.common import autocast_disabled, differentiable_vjp, register_vjp
from deepres.meanode.adjoint import adjoint_gradients
from deepres.meanode.discrete import discrete_gradients
from deepres.meanode.field import field_for
from deepres.meanode.reference import reference_solve
from deepres.meanode.stepping import forward_solve
from deepres.meanode.tableaus import TABLEAUS

__all__ = ["BACKSOLVE", "meanode_adjoint_backward", "meanode_discrete_backward", "meanode_solve"]


@torch.library.custom_op("deepres::meanode_solve", mutates_args=())
def meanode_solve(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, solver: str, steps: int,
                  multiplier: float, pre_scale: float, activation: str, every: int, return_nodes: bool,
                  gradient: str, pool: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward solve of the mean ODE.

    Args:
        h0: h(0), (B, D). u, v: (nodes, K, D). solver: a name of
            :data:`deepres.meanode.SOLVERS`. steps: N. multiplier: the field
            multiplier m. pre_scale: a. activation: an activation name.
        every: checkpoint segment length k ≥ 1, or :data:`BACKSOLVE`.
        return_nodes: also return h at the nodes. gradient: ``"adjoint"`` or
            ``"discrete"`` (read by the backward). pool: gradient-buffer pool
            id (:mod:`deepres.meanode.pool`), 0 for none.

    Returns:
        (h(1) (B, D), checkpoints (⌈N/k⌉ − 1, B, D) or empty, h at the nodes
        (nodes, B, D) or an empty (0,) tensor).
    """
    with autocast_disabled(h0.device.type):
        field = field_for(u, v, multiplier, pre_scale, activation, h0.shape[0])
        h1, checkpoints, nodes = forward_solve(field, TABLEAUS[solver], h0.detach(), steps, every,
                                               return_nodes)
    return h1, checkpoints, (nodes if nodes is not None else h0.new_empty((0,)))


@meanode_solve.register_fake
def _(h0, u, v, solver, steps, multiplier, pre_scale, activation, every, return_nodes, gradient, pool):
    count = 0 if every == BACKSOLVE else -(-steps // every) - 1
    nodes = (u.shape[0], *h0.shape) if return_nodes else (0,)
    return h0.new_empty(h0.shape), h0.new_empty((count, *h0.shape)), h0.new_empty(nodes)


def _backward_fake(grad_h1, h0, checkpoints, h1, u, v, solver, steps, multiplier, pre_scale, activation,
                   every, pool, needs):
    nodes, particles, dim = u.shape

    def weights():  # feature-major, like the real gradients
        return u.new_empty((nodes, dim, particles)).transpose(1, 2)

    return (grad_h1.new_empty(grad_h1.shape) if needs[0] else grad_h1.new_empty((0,)),
            weights() if needs[1] else u.new_empty((0,)),
            weights() if needs[2] else u.new_empty((0,)))


def _backward_op(route_name: str, route, summary: str) -> torch.library.CustomOpDef:
    """The backward op ``deepres::meanode_<route_name>_backward`` running the sweep ``route``."""

    def backward(grad_h1: torch.Tensor, h0: torch.Tensor, checkpoints: torch.Tensor, h1: torch.Tensor,
                 u: torch.Tensor, v: torch.Tensor, solver: str, steps: int, multiplier: float,
                 pre_scale: float, activation: str, every: int, pool: int, needs: list[bool],
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with autocast_disabled(grad_h1.device.type):
            field = field_for(u, v, multiplier, pre_scale, activation, h1.shape[0])
            b0, grad_ut, grad_vt = route(field, TABLEAUS[solver], steps, every, grad_h1, h0.detach(),
                                         checkpoints, h1, pool)
        if b0 is grad_h1:  # an op's output must not alias its input
            b0 = b0.clone()
        return (b0 if needs[0] else b0.new_empty((0,)),
                grad_ut.transpose(1, 2) if needs[1] else u.new_empty((0,)),
                grad_vt.transpose(1, 2) if needs[2] else u.new_empty((0,)))

    backward.__doc__ = summary + (" Arguments: the forward's, its outputs h1 and checkpoints, "
                                  "∂loss/∂h(1) and ``needs`` (an empty tensor for each gradient left out).")
    backward.__name__ = backward.__qualname__ = f"meanode_{route_name}_backward"
    op = torch.library.custom_op(f"deepres::meanode_{route_name}_backward", backward, mutates_args=())
    op.register_fake(_backward_fake)
    return op


#: ODE-adjoint gradients (b(0), ∂/∂u, ∂/∂v).
meanode_adjoint_backward = _backward_op("adjoint", adjoint_gradients,
                                        "ODE-adjoint gradients: (b(0), ∂/∂u, ∂/∂v).")
#: Exact gradients of the discrete solve (∂/∂h0, ∂/∂u, ∂/∂v).
meanode_discrete_backward = _backward_op("discrete", discrete_gradients,
                                         "Exact gradients of the discrete solve: (∂/∂h0, ∂/∂u, ∂/∂v).")


def _first_order(saved, options, grad_h1, needs):
    h0, u, v, checkpoints, h1 = saved
    solver, steps, multiplier, pre_scale, activation, every, _nodes, gradient, pool = options
    op = meanode_adjoint_backward if gradient == "adjoint" else meanode_discrete_backward
    return op(grad_h1, h0, checkpoints, h1, u, v, solver, steps, multiplier, pre_scale, activation, every,
              pool, needs)


def _higher_order(saved, options, grad_h1, needs):
    h0, u, v = saved[:3]
    solver, _steps, multiplier, pre_scale, activation, _every, _nodes, gradient, _pool = options
    if gradient == "adjoint":
        raise RuntimeError(
            "MeanODE(gradient='adjoint') is not twice differentiable: the ODE-adjoint gradient "
            "approximates the gradient of the discrete solve to the solver's order and has no "
            "derivative of its own; use gradient='discrete' (exact, differentiable again) for "
            "Hessians and other higher-order gradients")
    return differentiable_vjp(lambda *a: reference_solve(*a, multiplier, pre_scale, activation, solver),
                              (h0, u, v), needs, grad_h1)


# Saved: h0, u, v, then the outputs checkpoints (1) and h1 (0); the node values (2) carry no gradient.
register_vjp(meanode_solve, _first_order, _higher_order, saved_outputs=(1, 0))
