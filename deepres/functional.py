"""Functional API: argument checks, the one place where the engine is chosen, and dispatch.

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

import torch

from deepres._checks import (
    check_bool,
    check_choice,
    check_finite_real,
    check_tensor,
    resolve_checkpoint_every,
)
from deepres.activations import ACTIVATIONS
from deepres.engines.cpp_build import cpp_unavailable_reason, warn_unavailable_once
from deepres.engines.cpp_engine import cpp_refusal, cpp_residual_stack
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_engine import torch_residual_stack
from deepres.engines.triton_support import fallback_reason, triton_importable, unavailable_reason

__all__ = ["BACKENDS", "check_backend", "residual_stack", "select_engine"]

#: Names accepted by the ``backend`` argument.
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "cpp", "reference")

_HALF = (torch.float16, torch.bfloat16)


def check_backend(backend: object, device: torch.device) -> str:
    """``backend`` if it names an engine that can run on ``device``, else raise.

    The part of :func:`select_engine` that does not depend on the tensors' shapes
    and dtypes (command lines check it before any work).

    Raises:
        TypeError: a non-str backend.
        ValueError: an unknown backend, or ``"triton"`` where the kernels cannot
            run at all (no triton; CPU tensors without ``TRITON_INTERPRET=1``).

    Example:
        >>> check_backend("auto", torch.device("cpu"))
        'auto'
    """
    backend = check_choice(backend, "backend", BACKENDS)
    if backend == "cpp":  # the C++ CPU engine (built at its first use)
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors; got device {device}")
        reason = cpp_unavailable_reason()
        if reason is not None:
            raise ValueError(f"backend='cpp' cannot run here: {reason}")
    if backend == "triton":
        reason = unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run here: {reason}")
    return backend


def select_engine(backend: object, h: torch.Tensor, u: torch.Tensor) -> str:
    """The engine that runs the stack: the only place where this is decided.

    * ``"torch"`` and ``"reference"`` are taken as they are.
    * ``"auto"`` is ``"triton"`` for CUDA tensors when triton is installed and
      the kernels take these tensors (D ≤ 256, float32 h); ``"cpp"`` for CPU
      tensors when the C++ engine takes them (h, u, v all float32 or all
      float64) and could be built (if not: one warning per process); else
      ``"torch"``.
    * ``"cpp"`` raises a ValueError where the C++ engine cannot be built, or
      does not take these tensors (half-precision weights).
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
    backend = check_backend(backend, h.device)
    if backend in ("torch", "reference"):
        return backend
    # --- the C++ CPU engine ---
    if backend == "cpp":
        refusal = cpp_refusal(h, u)
        if refusal is not None:
            raise ValueError(f"backend='cpp' cannot take these tensors: {refusal} (backend='auto' runs the "
                             f"PyTorch engine for them)")
        return "cpp"
    if backend == "auto" and h.device.type == "cpu" and cpp_refusal(h, u) is None:
        if cpp_unavailable_reason() is None:
            return "cpp"
        warn_unavailable_once()
        return "torch"
    # ---
    if backend == "auto":
        if h.device.type != "cuda" or not triton_importable():
            return "torch"
        return "torch" if fallback_reason(h, u) is not None else "triton"
    reason = fallback_reason(h, u)
    if reason is not None:
        warnings.warn(f"backend='triton' runs the PyTorch engine instead of the fused kernels: {reason}",
                      UserWarning, stacklevel=3)
        return "torch"
    return "triton"


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
    if h.dtype in _HALF:
        raise TypeError(
            f"h must be float32 or float64 (the residual stream accumulates in full "
            f"precision); got {h.dtype}"
        )
    if u.dtype != h.dtype and not (h.dtype == torch.float32 and u.dtype in _HALF):
        raise TypeError(
            f"u and v must have h's dtype {h.dtype} (or float16/bfloat16 weights with a "
            f"float32 h); got {u.dtype}"
        )
    if not (h.device == u.device == v.device):
        raise ValueError(
            f"h, u and v must be on one device; got h on {h.device}, u on {u.device}, "
            f"v on {v.device}"
        )


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
    allow_tf32: bool = False,
    deterministic: bool = False,
) -> torch.Tensor:
    """Apply L two-layer-perceptron residual blocks (eq. (1) of docs/design.md).

    For l = 1..L: ``h ← h + c · Σ_j v_{l,j} σ(a · u_{l,j}ᵀ h)``, returning h_L.
    Differentiable in h, u and v; the backward pass keeps only h at
    checkpoints and recomputes the rest. The stack is one ``torch.library``
    custom op (``deepres::torch_stack``, ``deepres::cpp_stack`` or ``deepres::triton_stack``), so
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
            ``"auto"`` (default: Triton for CUDA tensors when triton is
            installed and the kernels take them, the C++ engine for CPU
            tensors, else the PyTorch engine),
            ``"torch"`` (pure-PyTorch engine, any device and dtype),
            ``"cpp"`` (compiled C++ loops on CPU, float32 or float64; the
            ``"auto"`` choice for CPU tensors where it builds),
            ``"triton"`` (fused kernels: CUDA, or CPU under
            ``TRITON_INTERPRET=1``) or ``"reference"`` (plain per-layer
            autograd, memory-hungry; for tests).
        checkpoint_every: memory policy of the backward pass. ``None``
            (default) keeps h before every layer (L·B·D numbers); an int k
            keeps it every k layers and recomputes segments (k need not
            divide L); ``"sqrt"`` uses k = ⌈√L⌉. Ignored by ``"reference"``.
        allow_tf32: let the Triton kernels' float32 dot products use one
            TF32 tensor-core product (faster, about 1e-3 relative error).
            Default False: float32 accuracy (three TF32 products per product,
            see docs/engines.md). With ``backend="torch"`` or ``"reference"``,
            True is an error; where ``"auto"`` picks the PyTorch engine it
            does not apply.
        deterministic: kept for compatibility; changes nothing. Default
            False. Every engine is bitwise reproducible on a given device:
            the Triton kernels reduce the weight gradients in a fixed order
            without float atomics.

    Second-order gradients (``create_graph=True``) are exact with every
    engine: the gradient is then recomputed through the plain reference,
    with its memory cost, for that call only.

    Returns:
        h_L, with the shape and dtype of ``h``.

    Raises:
        TypeError: a non-tensor, a non-floating or mismatched dtype, a
            non-real multiplier or pre_scale.
        ValueError: wrong ranks or shapes, empty axes, different devices,
            non-finite scalars, an unknown activation/backend/checkpoint
            policy, ``backend="triton"`` where it cannot run, or
            ``allow_tf32=True`` with an engine that has no TF32 option.

    Example:
        >>> import torch, deepres
        >>> L, M, D = 256, 8, 16
        >>> u, v = torch.randn(L, M, D) * D**0.5, torch.randn(L, M, D) * D**0.5
        >>> h0 = torch.randn(32, D)
        >>> hL = deepres.residual_stack(h0, u, v, multiplier=1 / (L * M), pre_scale=1 / D)
        >>> hL.shape
        torch.Size([32, 16])
    """
    h = check_tensor(h, "h")
    u = check_tensor(u, "u")
    v = check_tensor(v, "v")
    device_type = h.device.type
    autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
    if autocast and h.dtype in _HALF:
        h = h.float()  # the residual stream is float32 under autocast (module docstring)
    _check_shapes(h, u, v)
    _check_dtypes_devices(h, u, v)
    c = check_finite_real(multiplier, "multiplier")
    a = check_finite_real(pre_scale, "pre_scale")
    activation = check_choice(activation, "activation", ACTIVATIONS)
    every = resolve_checkpoint_every(u.shape[-3], checkpoint_every)
    check_bool(allow_tf32, "allow_tf32")
    check_bool(deterministic, "deterministic")
    engine = select_engine(backend, h, u)
    if allow_tf32 and backend in ("torch", "cpp", "reference"):
        raise ValueError(f"allow_tf32=True applies to the Triton engine only; backend={backend!r} computes "
                         f"in IEEE {h.dtype} (for cuBLAS, torch.backends.cuda.matmul.allow_tf32 decides)")

    if engine == "reference":
        return reference_residual_stack(h, u, v, c, a, activation)
    unbatched = u.dim() == 3
    if unbatched:
        h, u, v = h.unsqueeze(0), u.unsqueeze(0), v.unsqueeze(0)
    if engine == "triton":
        from deepres.engines.triton_engine import triton_residual_stack

        if autocast and u.dtype == torch.float32:
            half = torch.get_autocast_dtype(device_type)
            u, v = u.to(half), v.to(half)
        out = triton_residual_stack(h, u, v, c, a, activation, every, allow_tf32=allow_tf32)
    elif engine == "cpp":
        out = cpp_residual_stack(h, u, v, c, a, activation, every)
    else:
        out = torch_residual_stack(h, u, v, c, a, activation, every)
    return out.squeeze(0) if unbatched else out
