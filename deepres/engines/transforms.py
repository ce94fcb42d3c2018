"""torch.func for every stack engine: one generic autograd.Function around an engine's ops.

An engine plugs in with a :class:`StackOps`: its forward op, its backward op
and its forward-mode (jvp) op, or None for the last. :func:`stack_apply` then
runs the stack through :class:`StackFunction`, a Python
``torch.autograd.Function`` with ``setup_context``, ``backward``, ``jvp`` and
``vmap``, which is what every functorch transform (``torch.func.grad``,
``vjp``, ``jvp``, ``jacrev``, ``jacfwd``, ``hessian``, ``vmap``) and
``torch.autograd.forward_ad`` need. (A ``torch.library`` custom op's own
``register_autograd`` makes an autograd.Function without ``setup_context``,
which no functorch transform accepts, and there is no ``register_jvp``.)

Three Functions, one per op, each with a vmap rule:

* :class:`StackFunction` — forward: the engine's forward op. Its backward is
  :class:`StackBackwardFunction`, its jvp :class:`StackJvpFunction`.
* :class:`StackBackwardFunction` — "the backward as a function": forward is the
  engine's fused backward op (first order, fast); its own backward and jvp
  recompute through the plain reference (:func:`reference_residual_stack`)
  with ``torch.func``, so every higher derivative is exact, and only a
  second-order call pays the reference's memory.
* :class:`StackJvpFunction` — forward is the engine's fused jvp op; its own
  backward and jvp go through the reference likewise.

vmap rules. The tensors are in replica form (h (R, B, D), u and v
(R, L, M, D), checkpoints (C, R, B, D) or an empty (0,) tensor). A vmapped
axis of size n folds onto the batch axis B when no weight is vmapped (the
forward and the jvp are row by row; the backward only when it is asked for
∂/∂h alone), and onto the replica axis R otherwise (unbatched tensors are
expanded), and every op then runs once, never through PyTorch's per-example
fallback.

Under ``torch.compile`` and ``torch.export`` :func:`stack_apply` calls the
forward op itself (its ``register_autograd`` gives the compiled graph one
node; Dynamo refuses an autograd.Function that defines ``jvp``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from deepres.engines.reference import reference_residual_stack

__all__ = ["StackBackwardFunction", "StackFunction", "StackJvpFunction", "StackOps", "reference_jvp",
           "reference_jvp_vjp", "stack_apply", "tracing"]


@dataclass(frozen=True)
class StackOps:
    """What an engine gives to be usable under every ``torch.func`` transform.

    Attributes:
        name: the engine's name (for messages).
        forward: ``(h0, u, v, c, a, activation, every, save, *extra) → (h_L, checkpoints)``;
            checkpoints (C, R, B, D), or an empty (0,) tensor when ``save`` is False.
        backward: ``(grad_out, h0, checkpoints, u, v, c, a, activation, every, *extra, needs)
            → (∂h0, ∂u, ∂v)``, an empty tensor for each one ``needs`` leaves out (the engine's
            backward op itself).
        jvp: ``(h0, u, v, h0_dot, u_dot, v_dot, c, a, activation) → (h_L, h_L_dot)``, any
            tangent possibly None; or None when the engine has no forward mode.
        no_jvp: with ``jvp=None``, what to use instead (named in the error).
        reference: the plain differentiable stack ``(h, u, v, c, a, activation) → h_L``
            that every derivative beyond the first goes through.
    """

    name: str
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    backward: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    jvp: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None
    no_jvp: str = "backend='reference' (plain autograd)"
    reference: Callable[..., torch.Tensor] = field(default=reference_residual_stack)


def tracing() -> bool:
    """True inside ``torch.compile`` or ``torch.export`` tracing (then the raw custom ops run).

    Example:
        >>> tracing()
        False
    """
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def stack_apply(ops: StackOps, h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, multiplier: float,
                pre_scale: float, activation: str, every: int, *extra: Any) -> torch.Tensor:
    """h_L of the engine ``ops`` on replica-form tensors, differentiable by every transform.

    Args:
        ops: the engine. h: (R, B, D). u, v: (R, L, M, D). multiplier: c.
        pre_scale: a. activation: an activation name. every: checkpoint segment length k.
        *extra: the engine's extra forward/backward arguments.

    Returns:
        h_L, (R, B, D).

    Example:
        >>> from deepres.engines.torch_engine import TORCH_OPS
        >>> h, u, v = torch.randn(1, 4, 3), torch.randn(1, 8, 2, 3), torch.randn(1, 8, 2, 3)
        >>> stack_apply(TORCH_OPS, h, u, v, 1 / 16, 1 / 3, "tanh", 2).shape
        torch.Size([1, 4, 3])
    """
    c, a = float(multiplier), float(pre_scale)
    save = torch.is_grad_enabled() and (h.requires_grad or u.requires_grad or v.requires_grad)
    if tracing():
        return ops.forward(h, u, v, c, a, activation, every, save, *extra)[0]
    return StackFunction.apply(h, u, v, ops, c, a, activation, every, save, tuple(extra))[0]


# ---------------------------------------------------------------------------------------------
# Reference derivatives (exact to every order: plain torch ops under torch.func).


def _zeros_for_none(tensors, like):
    return tuple(torch.zeros_like(p) if t is None else t for t, p in zip(tensors, like, strict=True))


def reference_jvp(reference: Callable[..., torch.Tensor], c: float, a: float, activation: str,
                  ) -> Callable[..., torch.Tensor]:
    """``(h, u, v, ḣ, u̇, v̇) ↦ ∂h_L·(ḣ, u̇, v̇)`` of the plain stack, differentiable again.

    Args:
        reference: ``(h, u, v, c, a, activation) → h_L``. c, a, activation: its options.

    Returns:
        The jvp map; its arguments h (R, B, D), u, v (R, L, M, D) and tangents of those shapes.

    Example:
        >>> h, u, v = torch.randn(1, 2, 3), torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3)
        >>> reference_jvp(reference_residual_stack, 0.1, 0.5, "tanh")(h, u, v, h, u, v).shape
        torch.Size([1, 2, 3])
    """

    def jvp(h, u, v, h_dot, u_dot, v_dot):
        return torch.func.jvp(lambda hh, uu, vv: reference(hh, uu, vv, c, a, activation), (h, u, v),
                              (h_dot, u_dot, v_dot))[1]

    return jvp


def _reference_vjp(reference, c, a, activation, needs):
    """``(g, h, u, v) ↦`` the wanted entries of ∂⟨g, h_L⟩/∂(h, u, v) of the plain stack."""

    def vjp(g, h, u, v):
        _, pullback = torch.func.vjp(lambda hh, uu, vv: reference(hh, uu, vv, c, a, activation), h, u, v)
        return tuple(t for t, need in zip(pullback(g), needs, strict=True) if need)

    return vjp


def reference_jvp_vjp(reference: Callable[..., torch.Tensor], c: float, a: float, activation: str,
                      primals: tuple[torch.Tensor, ...], cotangent: torch.Tensor,
                      ) -> tuple[torch.Tensor, ...]:
    """The vector–Jacobian product of the jvp map ``(h, u, v, ḣ, u̇, v̇) ↦ ḣ_L`` (six gradients).

    Args:
        reference, c, a, activation: as :func:`reference_jvp`. primals: (h, u, v, ḣ, u̇, v̇).
        cotangent: paired with ḣ_L, (R, B, D).

    Returns:
        The gradients with respect to the six primals, in their shapes.

    Example:
        >>> p = (torch.randn(1, 2, 3), torch.randn(1, 4, 2, 3), torch.randn(1, 4, 2, 3)) * 2
        >>> [g.shape[-1] for g in reference_jvp_vjp(reference_residual_stack, 0.1, 0.5, "tanh", p,
        ...                                        torch.ones(1, 2, 3))]
        [3, 3, 3, 3, 3, 3]
    """
    _, pullback = torch.func.vjp(reference_jvp(reference, c, a, activation), *primals)
    return pullback(cotangent)


# ---------------------------------------------------------------------------------------------
# vmap helpers: move the vmapped axis to the front (expanding unbatched tensors), fold it.


def _front(t: torch.Tensor | None, dim: int | None, n: int) -> torch.Tensor | None:
    if t is None:
        return None
    if dim is None:
        return t.unsqueeze(0).expand(n, *t.shape)
    return t.movedim(dim, 0)


def _fold_r(t: torch.Tensor | None, dim: int | None, n: int, axis: int = 0) -> torch.Tensor | None:
    """(…, R, …) with a vmapped axis → n·R at ``axis`` (0 for h and weights, 1 for checkpoints)."""
    t = _front(t, dim, n)
    if t is None:
        return None
    t = t.movedim(0, axis)
    # contiguous: a folded expansion (an unbatched tensor with R = 1) would be a stride-0 view,
    # which a later in-place op or dual tensor must not see.
    return t.reshape(*t.shape[:axis], t.shape[axis] * t.shape[axis + 1], *t.shape[axis + 2:]).contiguous()


def _fold_b(t: torch.Tensor | None, dim: int | None, n: int, axis: int = 1) -> torch.Tensor | None:
    """(…, R, B, D) with a vmapped axis → (…, R, n·B, D); ``axis`` is B's position (1 for h)."""
    return _fold_r(t, dim, n, axis)


def _unfold(t: torch.Tensor | None, n: int, axis: int) -> tuple[torch.Tensor | None, int | None]:
    if t is None:
        return None, None
    return t.unflatten(axis, (n, t.shape[axis] // n)), axis


def _checkpoints(t: torch.Tensor, dim: int | None, n: int, fold) -> torch.Tensor:
    if t.dim() == 1 and dim is None:  # none kept: stays empty
        return t
    return fold(t, dim, n, 2 if fold is _fold_b else 1)


class StackFunction(torch.autograd.Function):
    """The stack as an autograd.Function: ``apply(h0, u, v, ops, c, a, activation, every, save, extra)``
    → (h_L, checkpoints). See the module docstring."""

    generate_vmap_rule = False

    @staticmethod
    def forward(h0, u, v, ops, c, a, activation, every, save, extra):
        return ops.forward(h0, u, v, c, a, activation, every, save, *extra)

    @staticmethod
    def setup_context(ctx, inputs, output):
        h0, u, v, ops, c, a, activation, every, _save, extra = inputs
        checkpoints = output[1]
        ctx.mark_non_differentiable(checkpoints)
        # The checkpoints never carry a gradient: without this, autograd hands the backward a zero
        # tensor of their size (a 0.37 ms fill per step at the (512, 128, 10, 4, 16) study shape).
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(h0, checkpoints, u, v)
        ctx.save_for_forward(h0, u, v)
        ctx.stack = (ops, c, a, activation, every, extra)

    @staticmethod
    def backward(ctx, grad_out, _grad_checkpoints):
        if grad_out is None:  # h_L did not reach the loss
            return (None,) * len(ctx.needs_input_grad)
        h0, checkpoints, u, v = ctx.saved_tensors
        needs = tuple(bool(n) for n in ctx.needs_input_grad[:3])
        grads = StackBackwardFunction.apply(grad_out, h0, checkpoints, u, v, *ctx.stack, needs)
        return (*grads, None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, h0_dot, u_dot, v_dot, *_):
        ops, c, a, activation, _every, _extra = ctx.stack
        if ops.jvp is None:
            raise RuntimeError(f"the {ops.name} engine has no forward-mode rule (jvp); use {ops.no_jvp} "
                               f"for torch.func.jvp, jacfwd, hessian and forward_ad dual tensors")
        h0, u, v = ctx.saved_tensors  # in jvp: the tensors of save_for_forward
        out_dot = StackJvpFunction.apply(h0, u, v, h0_dot, u_dot, v_dot, ops, c, a, activation)
        return out_dot, None

    @staticmethod
    def vmap(info, in_dims, h0, u, v, ops, c, a, activation, every, save, extra):
        n = info.batch_size
        if in_dims[1] is None and in_dims[2] is None:  # shared weights: n·B rows
            out, checkpoints = StackFunction.apply(_fold_b(h0, in_dims[0], n), u, v, ops, c, a, activation,
                                                   every, save, extra)
            out, out_dim = _unfold(out, n, 1)
            if checkpoints.dim() == 1:
                return (out, checkpoints), (out_dim, None)
            return (out, checkpoints.unflatten(2, (n, checkpoints.shape[2] // n))), (out_dim, 2)
        out, checkpoints = StackFunction.apply(_fold_r(h0, in_dims[0], n), _fold_r(u, in_dims[1], n),
                                               _fold_r(v, in_dims[2], n), ops, c, a, activation, every,
                                               save, extra)
        out = out.unflatten(0, (n, out.shape[0] // n))
        if checkpoints.dim() == 1:
            return (out, checkpoints), (0, None)
        return (out, checkpoints.unflatten(1, (n, checkpoints.shape[1] // n))), (0, 1)


class StackBackwardFunction(torch.autograd.Function):
    """The engine's fused backward as a function of (grad_out, h0, checkpoints, u, v): first order
    from the fused op, every further derivative through the reference. Returns (∂h0, ∂u, ∂v), None
    for each one ``needs`` leaves out."""

    generate_vmap_rule = False

    @staticmethod
    def forward(grad_out, h0, checkpoints, u, v, ops, c, a, activation, every, extra, needs):
        if checkpoints.dim() == 1:  # the forward kept none (it ran without grad): redo it, keeping them
            _, checkpoints = ops.forward(h0, u, v, c, a, activation, every, True, *extra)
        grads = ops.backward(grad_out, h0, checkpoints, u, v, c, a, activation, every, *extra, list(needs))
        return tuple(g if need else None for g, need in zip(grads, needs, strict=True))

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_out, h0, _checkpoints, u, v, ops, c, a, activation, _every, _extra, needs = inputs
        ctx.save_for_backward(grad_out, h0, u, v)
        ctx.save_for_forward(grad_out, h0, u, v)
        ctx.vjp = (ops.reference, c, a, activation, needs)

    @staticmethod
    def backward(ctx, *cotangents):
        primals = ctx.saved_tensors
        reference, c, a, activation, needs = ctx.vjp
        wanted = [t for t, need in zip(cotangents, needs, strict=True) if need]
        outputs = [p for p, need in zip(primals[1:], needs, strict=True) if need]
        _, pullback = torch.func.vjp(_reference_vjp(reference, c, a, activation, needs), *primals)
        d_grad, d_h0, d_u, d_v = pullback(tuple(_zeros_for_none(wanted, outputs)))
        return (d_grad, d_h0, None, d_u, d_v, None, None, None, None, None, None, None)

    @staticmethod
    def jvp(ctx, grad_dot, h0_dot, _checkpoints_dot, u_dot, v_dot, *_):
        primals = ctx.saved_tensors
        reference, c, a, activation, needs = ctx.vjp
        tangents = _zeros_for_none((grad_dot, h0_dot, u_dot, v_dot), primals)
        _, out = torch.func.jvp(_reference_vjp(reference, c, a, activation, needs), primals, tangents)
        out = iter(out)
        return tuple(next(out) if need else None for need in needs)

    @staticmethod
    def vmap(info, in_dims, grad_out, h0, checkpoints, u, v, ops, c, a, activation, every, extra, needs):
        n = info.batch_size
        g_dim, h_dim, k_dim, u_dim, v_dim = in_dims[:5]
        if u_dim is None and v_dim is None and not (needs[1] or needs[2]):  # ∂h0 row by row: n·B rows
            grads = StackBackwardFunction.apply(
                _fold_b(grad_out, g_dim, n), _fold_b(h0, h_dim, n),
                _checkpoints(checkpoints, k_dim, n, _fold_b), u, v, ops, c, a, activation, every, extra,
                needs)
            return (_unfold(grads[0], n, 1)[0], None, None), (1 if needs[0] else None, None, None)
        # Per-example weight gradients: every vmapped example becomes replicas of its own.
        grads = StackBackwardFunction.apply(
            _fold_r(grad_out, g_dim, n), _fold_r(h0, h_dim, n),
            _checkpoints(checkpoints, k_dim, n, _fold_r), _fold_r(u, u_dim, n), _fold_r(v, v_dim, n),
            ops, c, a, activation, every, extra, needs)
        outs = tuple(_unfold(g, n, 0) for g in grads)
        return tuple(o for o, _ in outs), tuple(d for _, d in outs)


class StackJvpFunction(torch.autograd.Function):
    """The engine's fused jvp as a function of (h0, u, v, ḣ0, u̇, v̇) ↦ ḣ_L; every further
    derivative through the reference."""

    generate_vmap_rule = False

    @staticmethod
    def forward(h0, u, v, h0_dot, u_dot, v_dot, ops, c, a, activation):
        return ops.jvp(h0, u, v, h0_dot, u_dot, v_dot, c, a, activation)[1]

    @staticmethod
    def setup_context(ctx, inputs, output):
        h0, u, v, h0_dot, u_dot, v_dot, ops, c, a, activation = inputs
        primals = _zeros_for_none((h0, u, v, h0_dot, u_dot, v_dot), (h0, u, v, h0, u, v))
        ctx.save_for_backward(*primals)
        ctx.save_for_forward(*primals)
        ctx.jvp_of = (ops.reference, c, a, activation)

    @staticmethod
    def backward(ctx, cotangent):
        grads = reference_jvp_vjp(*ctx.jvp_of, ctx.saved_tensors, cotangent)
        return (*grads, None, None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        primals = ctx.saved_tensors
        tangents = _zeros_for_none(tangents[:6], primals)
        return torch.func.jvp(reference_jvp(*ctx.jvp_of), primals, tangents)[1]

    @staticmethod
    def vmap(info, in_dims, h0, u, v, h0_dot, u_dot, v_dot, ops, c, a, activation):
        n = info.batch_size
        tensors = (h0, u, v, h0_dot, u_dot, v_dot)
        if all(in_dims[i] is None for i in (1, 2, 4, 5)):  # shared weights and their tangents: n·B rows
            h, hd = _fold_b(h0, in_dims[0], n), _fold_b(h0_dot, in_dims[3], n)
            out = StackJvpFunction.apply(h, u, v, hd, u_dot, v_dot, ops, c, a, activation)
            return _unfold(out, n, 1)
        folded = [_fold_r(t, d, n) for t, d in zip(tensors, in_dims[:6], strict=True)]
        out = StackJvpFunction.apply(*folded, ops, c, a, activation)
        return _unfold(out, n, 0)
