"""Functional API: argument checks, the one place where options are resolved and the engine is chosen.

Every option of the stack is resolved once: :func:`stack_options` turns the
public arguments into a :class:`StackOptions` (checked scalars, the backend
name, the checkpoint segment length k, the precision request), once per call
of :func:`residual_stack` and once at construction for the modules, which
then call :func:`run_stack` with their stored options. :func:`run_stack`
checks the tensors, chooses the engine from the table
:data:`deepres.engines.registry.ENGINES` (:func:`select_engine`) and calls it
with a resolved precision.

Autocast. Inside a ``torch.autocast`` region the stack keeps its float32 residual
stream and float32 accumulation: an autocast region never lowers the precision of
h, of the reductions or of the output. A float16/bfloat16 ``h`` (what an
autocast-ed layer before the stack produces) is taken as float32. Only the Triton
engine has half-precision weights on tensor cores, so only there are float32
weights read in the autocast dtype (the gradients still come back in float32);
the PyTorch engine and the reference compute in float32 throughout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from deepres._checks import (
    check_choice,
    check_finite_real,
    check_tensor,
    resolve_checkpoint_every,
)
from deepres.activations import check_activation
from deepres.engines.common import HALF_DTYPES, autocast_enabled
from deepres.engines.cpp_build import cpp_unavailable_reason, warn_unavailable_once
from deepres.engines.registry import ENGINES, PRECISIONS, unavailable_reason
from deepres.engines.triton.support import triton_importable

__all__ = ["BACKENDS", "PRECISIONS", "StackOptions", "check_backend", "residual_stack", "run_stack",
           "select_engine", "stack_options", "unavailable_reason"]

#: Names accepted by the ``backend`` argument.
BACKENDS: tuple[str, ...] = ("auto", *ENGINES)


def check_backend(backend: object, device: torch.device) -> str:
    """``backend`` if it names an engine that can run on ``device``, else raise.

    The part of :func:`select_engine` that does not depend on the tensors' shapes
    and dtypes (command lines check it before any work;
    :func:`deepres.engines.registry.unavailable_reason` gives the reason alone).

    Raises:
        TypeError: a non-str backend.
        ValueError: an unknown backend, or ``"triton"`` where the kernels cannot
            run at all (no triton; CPU tensors without ``TRITON_INTERPRET=1``).

    Example:
        >>> check_backend("auto", torch.device("cpu"))
        'auto'
    """
    backend = check_choice(backend, "backend", BACKENDS)
    _check_runs_on(backend, device)
    return backend


def _check_runs_on(backend: str, device: torch.device) -> None:
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise ValueError(f"backend={backend!r} cannot run here: {reason}")


def select_engine(backend: object, h: torch.Tensor, u: torch.Tensor) -> str:
    """The engine that runs the stack: the only place where this is decided.

    * ``"torch"`` and ``"reference"`` are taken as they are.
    * ``"auto"`` is ``"cpp"`` for float32/float64 CPU tensors with weights in
      h's dtype when the C++ engine could be built (one warning per process
      when it could not, then ``"torch"``); ``"triton"`` for CUDA tensors when
      triton is installed and the kernels take these tensors (D ≤ 256,
      float32 h); else ``"torch"``, without a word.
    * ``"cpp"`` raises a ValueError saying why where it cannot run (not CPU
      tensors, no build) or cannot take the tensors (half-precision weights).
    * ``"triton"`` raises a ValueError saying why where the kernels cannot run
      at all (no triton; CPU tensors without ``TRITON_INTERPRET=1``); where
      they cannot take these tensors (D > 256, float64 h) it warns and
      returns ``"torch"``.

    Args:
        backend: one of :data:`BACKENDS`.
        h: (B, D) or (R, B, D). u: (L, M, D) or (R, L, M, D).

    Returns:
        ``"torch"``, ``"triton"``, ``"cpp"`` or ``"reference"``.

    Example:
        >>> select_engine("auto", torch.zeros(2, 3), torch.zeros(4, 5, 3).half())
        'torch'
    """
    return _select(check_choice(backend, "backend", BACKENDS), h, u)


def _select(backend: str, h: torch.Tensor, u: torch.Tensor) -> str:
    """:func:`select_engine` for a ``backend`` already checked to be a name of :data:`BACKENDS`."""
    if backend == "auto":
        if h.device.type == "cpu":
            return _auto_on_cpu(h, u)
        if h.device.type != "cuda" or not triton_importable():
            return "torch"
        return "torch" if ENGINES["triton"].fallback_reason(h, u) is not None else "triton"
    _check_runs_on(backend, h.device)
    engine = ENGINES[backend]
    reason = None if engine.fallback_reason is None else engine.fallback_reason(h, u)
    if reason is not None and engine.refuses_unfit:
        raise ValueError(f"backend={backend!r} cannot take these tensors: {reason} (backend='auto' runs "
                         f"the PyTorch engine for them)")
    if reason is not None:
        warnings.warn(f"backend={backend!r} runs the PyTorch engine instead of the fused kernels: {reason}",
                      UserWarning, stacklevel=4)
        return "torch"
    return backend


def _auto_on_cpu(h: torch.Tensor, u: torch.Tensor) -> str:
    """``"auto"`` on the CPU: the C++ engine where it takes the tensors and could be built, else torch."""
    if ENGINES["cpp"].fallback_reason(h, u) is not None:  # e.g. half-precision weights
        return "torch"
    if cpp_unavailable_reason() is not None:  # no compiler, a failed build or DEEPRES_CPP=0
        warn_unavailable_once()
        return "torch"
    return "cpp"


@dataclass(frozen=True)
class StackOptions:
    """The resolved options of a stack (see :func:`residual_stack` for their meaning).

    Attributes:
        multiplier: c, a float. pre_scale: a, a float.
        activation: a name of :data:`deepres.activations.ACTIVATIONS`.
        backend: a name of :data:`BACKENDS`.
        every: the checkpoint segment length k ≥ 1 (``checkpoint_every``
            resolved for the stack's depth).
        precision: None (the chosen engine's default) or a name of
            :data:`PRECISIONS` that the backend computes (with ``"auto"``:
            any; it applies where the Triton engine runs).
    """

    multiplier: float
    pre_scale: float
    activation: str
    backend: str
    every: int
    precision: str | None


def stack_options(depth: int, *, multiplier: object, pre_scale: object = 1.0, activation: object = "tanh",
                  backend: object = "auto", checkpoint_every: object = None,
                  precision: object = None) -> StackOptions:
    """Check and resolve the options of :func:`residual_stack` for a stack of ``depth`` layers, once.

    Args:
        depth: L. The other arguments: as for :func:`residual_stack`.

    Returns:
        A :class:`StackOptions`.

    Raises:
        TypeError, ValueError: as :func:`residual_stack` for these arguments.

    Example:
        >>> stack_options(100, multiplier=0.1, checkpoint_every="sqrt").every
        10
    """
    backend = check_choice(backend, "backend", BACKENDS)
    if precision is not None:
        precision = check_choice(precision, "precision", PRECISIONS)
        if backend != "auto" and precision not in ENGINES[backend].precisions:
            computes = ENGINES[backend].precisions
            raise ValueError(
                f"precision={precision!r} is not what backend={backend!r} computes: it computes "
                f"{' or '.join(map(repr, computes))} (IEEE arithmetic in h's dtype; for cuBLAS, "
                f"torch.backends.cuda.matmul.allow_tf32 decides); the TF32 precisions apply to the "
                f"Triton engine only")
    return StackOptions(
        multiplier=check_finite_real(multiplier, "multiplier"),
        pre_scale=check_finite_real(pre_scale, "pre_scale"),
        activation=check_activation(activation),
        backend=backend,
        every=resolve_checkpoint_every(depth, checkpoint_every),
        precision=precision,
    )


def _check_shapes(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
    if u.dim() not in (3, 4):
        raise ValueError(
            f"u must have shape (L, M, D) or, with replicas, (R, L, M, D); got shape {tuple(u.shape)}"
        )
    if v.shape != u.shape:
        raise ValueError(f"v must have the shape of u, {tuple(u.shape)}; got {tuple(v.shape)}")
    dim = u.shape[-1]
    if u.dim() == 3:
        expected = f"(B, D) = (B, {dim})"
        ok = h.dim() == 2 and h.shape[1] == dim
    else:
        expected = f"(R, B, D) = ({u.shape[0]}, B, {dim})"
        ok = h.dim() == 3 and h.shape[0] == u.shape[0] and h.shape[2] == dim
    if not ok:
        raise ValueError(f"h must have shape {expected} to match u {tuple(u.shape)}; "
                         f"got {tuple(h.shape)}")


def _check_dtypes_devices(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> None:
    if u.dtype != v.dtype:
        raise TypeError(f"u and v must share a dtype; got u {u.dtype} and v {v.dtype}")
    if h.dtype in HALF_DTYPES:
        raise TypeError(
            f"h must be float32 or float64 (the residual stream accumulates in full "
            f"precision); got {h.dtype}"
        )
    if u.dtype != h.dtype and not (h.dtype == torch.float32 and u.dtype in HALF_DTYPES):
        raise TypeError(
            f"u and v must have h's dtype {h.dtype} (or float16/bfloat16 weights with a "
            f"float32 h); got {u.dtype}"
        )
    if not (h.device == u.device == v.device):
        raise ValueError(
            f"h, u and v must be on one device; got h on {h.device}, u on {u.device}, "
            f"v on {v.device}"
        )


def _checked(h: object, u: object, v: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h, u, v checked (tensors, ranks, shapes, dtypes, one device); a half h under autocast as float32."""
    h = check_tensor(h, "h")
    u = check_tensor(u, "u")
    v = check_tensor(v, "v")
    if autocast_enabled(h.device.type) and h.dtype in HALF_DTYPES:
        h = h.float()  # the residual stream is float32 under autocast (module docstring)
    _check_shapes(h, u, v)
    _check_dtypes_devices(h, u, v)
    return h, u, v


def residual_stack(
    h: torch.Tensor,
    u: torch.Tensor,
    v: torch.Tensor,
    *,
    multiplier: float,
    pre_scale: float = 1.0,
    activation: str = "tanh",
    backend: str = "auto",
    checkpoint_every: int | str | None = None,
    precision: str | None = None,
) -> torch.Tensor:
    """Apply L two-layer-perceptron residual blocks (eq. (1) of docs/design.md).

    For l = 1..L: ``h ← h + c · Σ_j v_{l,j} σ(a · u_{l,j}ᵀ h)``, returning h_L.
    Differentiable in h, u and v; the backward pass keeps only h at
    checkpoints and recomputes the rest. The stack is one ``torch.library``
    custom op (``deepres::torch_stack`` or ``deepres::triton_stack``), so
    ``torch.compile`` and ``torch.export`` see one node whatever L is.

    Args:
        h: the input h_0, (B, D); or (R, B, D) with a replica axis.
            float32 or float64 (float16/bfloat16 only inside an autocast
            region, where it is taken as float32).
        u: input weights, (L, M, D); or (R, L, M, D) with replicas; h's
            dtype, or float16/bfloat16 with a float32 h.
        v: output weights, same shape and dtype as ``u``.
        multiplier: the residual multiplier c (finite real; a 0-dim tensor
            that does not require grad is accepted).
        pre_scale: the pre-activation scale a (finite real). Default 1.0.
        activation: one of ``"tanh"``, ``"relu"``, ``"gelu"`` (exact erf),
            ``"silu"``, ``"identity"``. Default ``"tanh"``.
        backend: which engine runs the stack (chosen by :func:`select_engine`):
            ``"auto"`` (default: the C++ engine for float32/float64 CPU
            tensors, Triton for CUDA tensors when triton is installed and the
            kernels take them, else the PyTorch engine), ``"torch"``
            (pure-PyTorch engine, any device and dtype), ``"cpp"`` (compiled
            C++ loops over the whole stack: CPU, float32/float64, built at
            first use), ``"triton"`` (fused kernels: CUDA, or CPU under
            ``TRITON_INTERPRET=1``) or ``"reference"`` (plain per-layer
            autograd, memory-hungry; for tests).
        checkpoint_every: memory policy of the backward pass. ``None``
            (default) keeps h before every layer (L·B·D numbers; the same as
            k = 1); an int k keeps it every k layers and recomputes segments
            (k need not divide L; k ≥ L keeps h_0 only); ``"sqrt"`` uses
            k = ⌈√L⌉. Ignored by ``"reference"``.
        precision: how the Triton kernels compute their float32 dot products:
            ``"tf32x3"`` (three TF32 tensor-core products, float32 accuracy),
            ``"ieee"`` (FFMA; float32 weights only) or ``"tf32"`` (one TF32
            product, faster, about 1e-3 relative error); see docs/engines.md.
            Default None: the engine's default (``"tf32x3"`` for Triton). The
            PyTorch engine, the C++ engine and the reference compute ``"ieee"``
            only: with ``backend="torch"``, ``"cpp"`` or ``"reference"`` any other precision is an
            error; where ``"auto"`` picks the PyTorch engine (or
            ``"triton"`` falls back to it) the request does not apply.

    Second-order gradients (``create_graph=True``) are exact with every
    engine: the gradient is then recomputed through the plain reference,
    with its memory cost, for that call only.

    Returns:
        h_L, with the shape and dtype of ``h``.

    Raises:
        TypeError: a non-tensor, a non-floating or mismatched dtype, a
            non-real multiplier or pre_scale, a non-str option.
        ValueError: wrong ranks or shapes, empty axes, different devices,
            non-finite scalars, an unknown activation/backend/checkpoint
            policy/precision, ``backend="triton"`` where it cannot run, a
            precision the chosen backend does not compute, or
            ``precision="ieee"`` with float16/bfloat16 weights on Triton.

    Example:
        >>> import torch, deepres
        >>> L, M, D = 256, 8, 16
        >>> u, v = torch.randn(L, M, D) * D**0.5, torch.randn(L, M, D) * D**0.5
        >>> h0 = torch.randn(32, D)
        >>> hL = deepres.residual_stack(h0, u, v, multiplier=1 / (L * M), pre_scale=1 / D)
        >>> hL.shape
        torch.Size([32, 16])
    """
    h, u, v = _checked(h, u, v)
    options = stack_options(u.shape[-3], multiplier=multiplier, pre_scale=pre_scale, activation=activation,
                            backend=backend, checkpoint_every=checkpoint_every, precision=precision)
    return _dispatch(h, u, v, options)


def run_stack(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, options: StackOptions) -> torch.Tensor:
    """:func:`residual_stack` with options resolved beforehand by :func:`stack_options` (the modules' path).

    Args:
        h, u, v: as for :func:`residual_stack` (checked here).
        options: from :func:`stack_options` for u's depth.

    Returns:
        h_L, with the shape and dtype of ``h``.

    Example:
        >>> u = v = torch.zeros(4, 2, 3)
        >>> run_stack(torch.ones(5, 3), u, v, stack_options(4, multiplier=0.5)).sum().item()
        15.0
    """
    h, u, v = _checked(h, u, v)
    return _dispatch(h, u, v, options)


def _dispatch(h: torch.Tensor, u: torch.Tensor, v: torch.Tensor, options: StackOptions) -> torch.Tensor:
    engine = ENGINES[_select(options.backend, h, u)]
    # A precision the chosen engine does not compute was asked of "auto" (or of a "triton" that fell
    # back): it applies to the Triton engine only (stack_options refused it for explicit backends).
    precision = options.precision if options.precision in engine.precisions else engine.default_precision
    unbatched = u.dim() == 3
    if unbatched:
        h, u, v = h.unsqueeze(0), u.unsqueeze(0), v.unsqueeze(0)
    if engine.half_weights and u.dtype == torch.float32 and autocast_enabled(h.device.type):
        half = torch.get_autocast_dtype(h.device.type)
        u, v = u.to(half), v.to(half)
    out = engine.run(h, u, v, options.multiplier, options.pre_scale, options.activation, options.every,
                     precision)
    return out.squeeze(0) if unbatched else out
