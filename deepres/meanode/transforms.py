"""torch.func for the mean-ODE solve: autograd.Functions with jvp and vmap rules around its ops.

The same three-Function pattern as :mod:`deepres.engines.transforms`:

* :class:`SolveFunction` — the solve (``deepres::meanode_solve``); backward
  :class:`SolveBackwardFunction`, jvp :class:`SolveJvpFunction`.
* :class:`SolveBackwardFunction` — the solve's fused backward op (ODE adjoint or
  exact discrete, as the ``gradient`` argument says) as a function; with
  ``gradient="discrete"`` its own derivatives recompute through the plain
  autograd solve (exact to every order); with ``"adjoint"`` they raise (the
  adjoint gradient is not the derivative of anything: use ``"discrete"``).
* :class:`SolveJvpFunction` — the tangent solve ``deepres::meanode_solve_jvp``
  (the exact derivative of the discrete solve, whatever ``gradient`` says); its
  own derivatives through the plain autograd solve.

vmap rules. h0 (B, D) and u, v (nodes, K, D) have no replica axis: a vmapped
h0 (and its tangent) folds onto the batch axis B when no weight is vmapped
(for the backward, when only ∂/∂h0 is asked for); otherwise the rule runs the
op once per vmapped example (a loop here, not PyTorch's per-example fallback;
for per-example weights, stack the models along a replica axis of
:func:`deepres.residual_stack` instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from deepres.engines.transforms import tracing
from deepres.meanode.ops import meanode_adjoint_backward, meanode_discrete_backward, meanode_solve
from deepres.meanode.reference import reference_solve
from deepres.meanode.tangent import meanode_solve_jvp, reference_solve_jvp

__all__ = ["SolveBackwardFunction", "SolveFunction", "SolveJvpFunction", "solve_apply"]

_NOT_TWICE = ("MeanODE(gradient='adjoint') is not twice differentiable: the ODE-adjoint gradient "
              "approximates the gradient of the discrete solve to the solver's order and has no "
              "derivative of its own; use gradient='discrete' (exact, differentiable again) for "
              "Hessians and other higher-order gradients")


def solve_apply(h0: torch.Tensor, u: torch.Tensor, v: torch.Tensor, solver: str, steps: int,
                multiplier: float, pre_scale: float, activation: str, every: int, return_nodes: bool,
                gradient: str, pool: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`deepres.meanode.ops.meanode_solve`, differentiable by every ``torch.func`` transform.

    Args and Returns: those of :func:`deepres.meanode.ops.meanode_solve`.

    Example:
        >>> from deepres import MeanODE
        >>> ode = MeanODE(3, 4, 2, particle_init="iid")
        >>> h1, _, _ = solve_apply(torch.randn(5, 3), ode.u, ode.v, "rk4", 2, ode.field_multiplier,
        ...                        ode.pre_scale, "tanh", 1, False, "adjoint", 0)
        >>> h1.shape
        torch.Size([5, 3])
    """
    options = (solver, steps, float(multiplier), float(pre_scale), activation, every, return_nodes, gradient,
               pool)
    if tracing():
        return meanode_solve(h0, u, v, *options)
    return SolveFunction.apply(h0, u, v, options)


def _loop(apply: Callable[..., Any], n: int, in_dims, args) -> tuple[tuple, tuple]:
    """Run ``apply`` once per vmapped example and stack (outputs that are None stay None)."""
    results = []
    for i in range(n):
        results.append(apply(*(a.select(d, i) if d is not None and a is not None else a
                               for a, d in zip(args, in_dims, strict=True))))
    outs = tuple(None if parts[0] is None else torch.stack(parts) for parts in zip(*results, strict=True))
    return outs, tuple(None if o is None else 0 for o in outs)


def _fold(t: torch.Tensor | None, dim: int | None, n: int, axis: int) -> torch.Tensor | None:
    """A vmapped (…, B, D) tensor with its vmapped axis folded into B (at ``axis``)."""
    if t is None:
        return None
    t = t.unsqueeze(0).expand(n, *t.shape) if dim is None else t.movedim(dim, 0)
    t = t.movedim(0, axis)
    # contiguous: never a stride-0 view of an expanded tensor (in-place ops and dual tensors refuse it)
    return t.reshape(*t.shape[:axis], t.shape[axis] * t.shape[axis + 1], *t.shape[axis + 2:]).contiguous()


def _fold_checkpoints(t: torch.Tensor, dim: int | None, n: int) -> torch.Tensor:
    """Checkpoints (C, B, D) folded like h; an empty (0,) tensor (none kept) stays as it is."""
    return t if t.dim() == 1 and dim is None else _fold(t, dim, n, 1)


def _unfold(t: torch.Tensor | None, n: int, axis: int) -> tuple[torch.Tensor | None, int | None]:
    if t is None or t.dim() == 1:  # None, or an empty (0,) output: not batched
        return t, None
    return t.unflatten(axis, (n, t.shape[axis] // n)), axis


def _nodes_gradient(options) -> tuple:
    solver, steps, multiplier, pre_scale, activation, every, _nodes, _gradient, pool = options
    return solver, steps, multiplier, pre_scale, activation, every, pool


class SolveFunction(torch.autograd.Function):
    """``apply(h0, u, v, options)`` → (h(1), checkpoints, h at the nodes); ``options`` the solve's
    non-tensor arguments (solver, steps, multiplier, pre_scale, activation, every, return_nodes,
    gradient, pool)."""

    generate_vmap_rule = False

    @staticmethod
    def forward(h0, u, v, options):
        return meanode_solve(h0, u, v, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h0, u, v, options = inputs
        h1, checkpoints, nodes = output
        ctx.mark_non_differentiable(checkpoints, nodes)
        ctx.save_for_backward(h0, checkpoints, h1, u, v)
        ctx.save_for_forward(h0, u, v)
        ctx.options = options

    @staticmethod
    def backward(ctx, grad_h1, _grad_checkpoints, _grad_nodes):
        # create_graph=True in plain autograd: refused at once, as the gradient is asked for. Under a
        # functorch transform (torch.func.grad always keeps the graph) the refusal waits for an
        # actual second derivative (SolveBackwardFunction's backward and jvp).
        if (ctx.options[7] == "adjoint" and torch.is_grad_enabled()
                and not torch._C._functorch.is_functorch_wrapped_tensor(grad_h1)
                and any(t.requires_grad for t in (grad_h1, *ctx.saved_tensors))):
            raise RuntimeError(_NOT_TWICE)
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = SolveBackwardFunction.apply(grad_h1, *ctx.saved_tensors, ctx.options, needs)
        return (*grads, None)

    @staticmethod
    def jvp(ctx, h0_dot, u_dot, v_dot, _):
        h0, u, v = ctx.saved_tensors  # in jvp: the tensors of save_for_forward
        return SolveJvpFunction.apply(h0, u, v, h0_dot, u_dot, v_dot, ctx.options), None, None

    @staticmethod
    def vmap(info, in_dims, h0, u, v, options):
        n = info.batch_size
        if in_dims[1] is None and in_dims[2] is None:  # shared particles: n·B rows
            h1, checkpoints, nodes = SolveFunction.apply(_fold(h0, in_dims[0], n, 0), u, v, options)
            outs = (_unfold(h1, n, 0), _unfold(checkpoints, n, 1), _unfold(nodes, n, 1))
            return tuple(o for o, _ in outs), tuple(d for _, d in outs)
        return _loop(lambda *a: SolveFunction.apply(*a, options), n, in_dims[:3], (h0, u, v))


def _reference_vjp(options, needs):
    solver, _steps, multiplier, pre_scale, activation, _every, _nodes, _gradient, _pool = options

    def vjp(g, h0, u, v):
        def solve(hh, uu, vv):
            return reference_solve(hh, uu, vv, multiplier, pre_scale, activation, solver)

        _, pullback = torch.func.vjp(solve, h0, u, v)
        return tuple(t for t, need in zip(pullback(g), needs, strict=True) if need)

    return vjp


class SolveBackwardFunction(torch.autograd.Function):
    """``apply(grad_h1, h0, checkpoints, h1, u, v, options, needs)`` → (∂h0, ∂u, ∂v), None for each
    one ``needs`` leaves out; the fused backward op at first order."""

    generate_vmap_rule = False

    @staticmethod
    def forward(grad_h1, h0, checkpoints, h1, u, v, options, needs):
        gradient = options[7]
        op = meanode_adjoint_backward if gradient == "adjoint" else meanode_discrete_backward
        grads = op(grad_h1, h0, checkpoints, h1, u, v, *_nodes_gradient(options), list(needs))
        return tuple(g if need else None for g, need in zip(grads, needs, strict=True))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_h1, h0, _checkpoints, _h1, u, v, options, needs = inputs
        ctx.save_for_backward(grad_h1, h0, u, v)
        ctx.save_for_forward(grad_h1, h0, u, v)
        ctx.options, ctx.needs = options, needs

    @staticmethod
    def backward(ctx, *cotangents):
        if ctx.options[7] == "adjoint":
            raise RuntimeError(_NOT_TWICE)
        primals = ctx.saved_tensors
        wanted = [t if t is not None else torch.zeros_like(p)
                  for t, p, need in zip(cotangents, primals[1:], ctx.needs, strict=True) if need]
        _, pullback = torch.func.vjp(_reference_vjp(ctx.options, ctx.needs), *primals)
        d_grad, d_h0, d_u, d_v = pullback(tuple(wanted))
        return d_grad, d_h0, None, None, d_u, d_v, None, None

    @staticmethod
    def jvp(ctx, grad_dot, h0_dot, _checkpoints_dot, _h1_dot, u_dot, v_dot, *_):
        if ctx.options[7] == "adjoint":
            raise RuntimeError(_NOT_TWICE)
        primals = ctx.saved_tensors
        tangents = tuple(torch.zeros_like(p) if t is None else t
                         for t, p in zip((grad_dot, h0_dot, u_dot, v_dot), primals, strict=True))
        _, out = torch.func.jvp(_reference_vjp(ctx.options, ctx.needs), primals, tangents)
        out = iter(out)
        return tuple(next(out) if need else None for need in ctx.needs)

    @staticmethod
    def vmap(info, in_dims, grad_h1, h0, checkpoints, h1, u, v, options, needs):
        n = info.batch_size
        if in_dims[4] is None and in_dims[5] is None and not (needs[1] or needs[2]):  # ∂h0 row by row
            grads = SolveBackwardFunction.apply(
                _fold(grad_h1, in_dims[0], n, 0), _fold(h0, in_dims[1], n, 0),
                _fold_checkpoints(checkpoints, in_dims[2], n),
                _fold(h1, in_dims[3], n, 0), u, v, options, needs)
            out, dim = _unfold(grads[0], n, 0)
            return (out, None, None), (dim, None, None)
        return _loop(lambda *a: SolveBackwardFunction.apply(*a, options, needs), n, in_dims[:6],
                     (grad_h1, h0, checkpoints, h1, u, v))


class SolveJvpFunction(torch.autograd.Function):
    """``apply(h0, u, v, ḣ0, u̇, v̇, options)`` → ḣ(1), the tangent solve; derivatives through the
    plain autograd solve."""

    generate_vmap_rule = False

    @staticmethod
    def forward(h0, u, v, h0_dot, u_dot, v_dot, options):
        solver, steps, multiplier, pre_scale, activation = options[:5]
        return meanode_solve_jvp(h0, u, v, h0_dot, u_dot, v_dot, solver, steps, multiplier, pre_scale,
                                 activation)[1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        h0, u, v, h0_dot, u_dot, v_dot, options = inputs
        primals = tuple(torch.zeros_like(p) if t is None else t
                        for t, p in zip((h0, u, v, h0_dot, u_dot, v_dot), (h0, u, v, h0, u, v), strict=True))
        ctx.save_for_backward(*primals)
        ctx.save_for_forward(*primals)
        solver, _steps, multiplier, pre_scale, activation = options[:5]
        ctx.jvp_of = reference_solve_jvp(solver, multiplier, pre_scale, activation)

    @staticmethod
    def backward(ctx, cotangent):
        _, pullback = torch.func.vjp(lambda *p: ctx.jvp_of(*p)[1], *ctx.saved_tensors)
        return (*pullback(cotangent), None)

    @staticmethod
    def jvp(ctx, *tangents):
        primals = ctx.saved_tensors
        tangents = tuple(torch.zeros_like(p) if t is None else t for t, p in zip(tangents[:6], primals,
                                                                                  strict=True))
        return torch.func.jvp(lambda *p: ctx.jvp_of(*p)[1], primals, tangents)[1]

    @staticmethod
    def vmap(info, in_dims, h0, u, v, h0_dot, u_dot, v_dot, options):
        n = info.batch_size
        if all(in_dims[i] is None for i in (1, 2, 4, 5)):  # shared particles and their tangents: n·B rows
            out = SolveJvpFunction.apply(_fold(h0, in_dims[0], n, 0), u, v, _fold(h0_dot, in_dims[3], n, 0),
                                         u_dot, v_dot, options)
            return _unfold(out, n, 0)
        outs, dims = _loop(lambda *a: (SolveJvpFunction.apply(*a, options),), n, in_dims[:6],
                           (h0, u, v, h0_dot, u_dot, v_dot))
        return outs[0], dims[0]
