"""What every engine shares: the segment layout, autocast isolation, and the autograd
wiring of its custom ops (:func:`register_vjp`, also used by the mean ODE's solve).

The engines are registered as ``torch.library`` custom operators, one forward
and one backward op per engine, so that ``torch.compile`` and ``torch.export``
see the whole stack as one node whatever L is (a Python loop over layers
would be traced layer by layer). :func:`register_vjp` connects a forward op
to its backward (:func:`stack_vjp` builds the stack engines' pair from a
forward op ``(h0, u, v, c, a, activation, every, save, *extra) → (h_L,
checkpoints)`` and its backward op); both ops get their fake (meta) kernels
from :func:`stack_fakes`.

Higher-order gradients. The backward ops compute the first derivative only.
When a caller asks for a differentiable gradient (``create_graph=True``, e.g.
for Hessian–vector products), the registered backward instead recomputes the
stack with the plain per-layer reference under autograd and differentiates
that: the result is exact to all orders, at the reference's memory cost
(everything of every layer is kept), and only for that call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "HALF_DTYPES",
    "autocast_disabled",
    "autocast_enabled",
    "checkpoint_count",
    "differentiable_vjp",
    "register_vjp",
    "segments",
    "stack_fakes",
    "stack_vjp",
]


def segments(depth: int, every: int) -> list[tuple[int, int]]:
    """The [start, stop) layer ranges of the checkpoint segments, first to last.

    Segment i starts at layer i·k from the checkpoint h_{i·k}; the last one may
    be shorter when k does not divide L.

    Example:
        >>> segments(5, 2)
        [(0, 2), (2, 4), (4, 5)]
    """
    return [(start, min(start + every, depth)) for start in range(0, depth, every)]


def checkpoint_count(depth: int, every: int) -> int:
    """⌈L/k⌉, the number of checkpoint segments (works on symbolic sizes too)."""
    return -(-depth // every)


#: The half-precision dtypes: what autocast lowers to, and the half weights of the Triton engine.
HALF_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def autocast_enabled(device_type: str) -> bool:
    """Whether a ``torch.autocast`` region is active for ``device_type`` (only CPU and CUDA have one here).

    Example:
        >>> autocast_enabled("cpu")
        False
    """
    return device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context in which ``torch.autocast`` does not lower the precision of ops on ``device_type``.

    The engines compute the residual stream and every reduction in the inputs'
    precision: an enclosing autocast region must not turn their GEMMs into
    bfloat16/float16 ones (the op's implementation runs under the caller's
    autocast state, forward and backward).
    """
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def stack_fakes(forward_op: torch.library.CustomOpDef, backward_op: torch.library.CustomOpDef, *,
                checkpoints_hold_input: bool, gradient_dtype: Callable[[torch.Tensor], torch.dtype]) -> None:
    """Register the fake (shape and dtype) kernels of an engine's forward and backward ops.

    Args:
        forward_op: ``(h0, u, v, c, a, activation, every, save, *extra) → (h_L, checkpoints)``.
        backward_op: ``(grad_out, h0, checkpoints, u, v, c, a, activation, every, *extra,
            needs) → (grad_h0, grad_u, grad_v)``, an empty tensor for each gradient
            ``needs`` (three bools for h0, u, v) does not ask for.
        checkpoints_hold_input: the forward's checkpoints include slot 0 (h_0 itself);
            otherwise they start at h_k and the backward op takes h_0 separately.
        gradient_dtype: weights ↦ dtype of their gradients.
    """

    @forward_op.register_fake
    def _(h0, u, v, multiplier, pre_scale, activation, every, save_checkpoints, *extra):
        count = checkpoint_count(u.shape[1], every)
        if not checkpoints_hold_input:
            count = count - 1
        shape = (count, *h0.shape) if save_checkpoints else (0,)
        return h0.new_empty(h0.shape), h0.new_empty(shape)

    @backward_op.register_fake
    def _(grad_out, h0, checkpoints, u, v, *options):
        needs = options[-1]
        grad_h = grad_out.new_empty(grad_out.shape) if needs[0] else grad_out.new_empty((0,))
        dtype = gradient_dtype(u)
        grad_u = u.new_empty(u.shape, dtype=dtype) if needs[1] else u.new_empty((0,), dtype=dtype)
        grad_v = u.new_empty(u.shape, dtype=dtype) if needs[2] else u.new_empty((0,), dtype=dtype)
        return grad_h, grad_u, grad_v


def register_vjp(forward_op: torch.library.CustomOpDef, first_order: Callable[..., Sequence[torch.Tensor]],
                 higher_order: Callable[..., Sequence[torch.Tensor | None]], *,
                 saved_outputs: tuple[int, ...], differentiable: int = 3) -> None:
    """Give a custom op its backward: the one autograd wiring of every engine op (stacks and mean ODE).

    The op's first ``differentiable`` arguments are the differentiable tensors (h0, u,
    v); the rest are options, handed back unchanged. Output 0 is the result;
    every other output is marked non-differentiable. A future forward-mode
    (jvp) or vmap rule belongs here too, so that every op gets it at once.

    Args:
        forward_op: the custom op.
        first_order: ``(saved, options, grad_out, needs) → gradients`` of the
            differentiable inputs, by the engine's backward op (``needs``: which
            inputs need one; the others may come back as anything, they are
            dropped). ``saved`` is (the differentiable inputs, then the outputs
            named by ``saved_outputs``).
        higher_order: the same, called when the gradient must itself be
            differentiable (``create_graph=True``): an autograd-traceable
            computation (None for inputs not needed), or a raise.
        saved_outputs: indices of the outputs the backward reads, in order.
        differentiable: how many leading arguments are differentiable. Default 3.
    """

    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        # The other outputs never carry a gradient: without this, autograd hands the backward a
        # zero tensor of each (a checkpoints-sized fill per step: 0.37 ms of a 46 ms step at the
        # (512, 128, 10, 4, 16) study shape).
        ctx.set_materialize_grads(False)
        # The inputs themselves (not copies): h0 may be the first checkpoint, and a differentiable
        # gradient must reach their graphs.
        ctx.save_for_backward(*inputs[:differentiable], *(output[i] for i in saved_outputs))
        ctx.options = tuple(inputs[differentiable:])

    def backward(ctx, grad_out, *_grad_aux):
        needs = list(ctx.needs_input_grad[:differentiable])
        if grad_out is None:  # the result did not reach the loss: no gradient for any input
            return (None,) * (differentiable + len(ctx.options))
        if torch.is_grad_enabled():
            grads = tuple(higher_order(ctx.saved_tensors, ctx.options, grad_out, needs))
        else:
            grads = first_order(ctx.saved_tensors, ctx.options, grad_out, needs)
            grads = tuple(g if need else None for g, need in zip(grads, needs, strict=True))
        return grads + (None,) * len(ctx.options)

    forward_op.register_autograd(backward, setup_context=setup_context)


def stack_vjp(forward_op: torch.library.CustomOpDef, backward_op: torch.library.CustomOpDef,
              reference: Callable[..., torch.Tensor]) -> tuple[Callable, Callable]:
    """The (first_order, higher_order) pair of :func:`register_vjp` for a stack engine.

    Args:
        forward_op: ``(h0, u, v, c, a, activation, every, save, *extra) → (h_L, checkpoints)``.
        backward_op: ``(grad_out, h0, checkpoints, u, v, c, a, activation, every, *extra, needs)
            → (grad_h0, grad_u, grad_v)``.
        reference: ``(h0, u, v, c, a, activation) → h_L``, differentiable by autograd,
            for gradients that must themselves be differentiable (see the module docstring).

    Returns:
        The two callables; register with ``saved_outputs=(1,)`` (the checkpoints).
    """

    def first_order(saved, options, grad_out, needs):
        h0, u, v, checkpoints = saved
        multiplier, pre_scale, activation, every, _save, *extra = options
        if checkpoints.dim() == 1:  # the forward kept none (called without grad): redo it, keeping them
            _, checkpoints = forward_op(h0.detach(), u.detach(), v.detach(), multiplier, pre_scale,
                                        activation, every, True, *extra)
        return backward_op(grad_out, h0, checkpoints, u, v, multiplier, pre_scale, activation, every, *extra,
                           needs)

    def higher_order(saved, options, grad_out, needs):
        h0, u, v, _ = saved
        multiplier, pre_scale, activation = options[:3]
        return differentiable_vjp(lambda *a: reference(*a, multiplier, pre_scale, activation),
                                  (h0, u, v), needs, grad_out)

    return first_order, higher_order


def differentiable_vjp(function: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...],
                       needs: Sequence[bool], grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """∂⟨grad_out, function(*inputs)⟩/∂inputs with its graph kept (for ``create_graph=True``).

    ``function`` is re-run under autograd from the original ``inputs`` (so the
    result is connected to their graphs); entries of ``needs`` that are False
    give None, an input the output does not depend on gives zeros.
    """
    wanted = [t for t, need in zip(inputs, needs, strict=True) if need]
    with torch.enable_grad():
        out = function(*inputs)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = []
    for t, need in zip(inputs, needs, strict=True):
        grad = next(grads) if need else None
        result.append(torch.zeros_like(t) if need and grad is None else grad)
    return tuple(result)
