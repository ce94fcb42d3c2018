"""Functional API: argument checks and backend dispatch for the residual stack."""

from __future__ import annotations

import torch

from deepres._checks import check_finite_real, check_tensor
from deepres.activations import check_activation
from deepres.engines.common import resolve_checkpoint_every
from deepres.engines.reference import reference_residual_stack
from deepres.engines.torch_engine import torch_residual_stack
from deepres.engines.triton_support import triton_importable, unavailable_reason

__all__ = ["BACKENDS", "residual_stack", "resolve_backend"]

#: Names accepted by the ``backend`` argument.
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton", "reference")

_HALF = (torch.float16, torch.bfloat16)


def resolve_backend(backend: object, device: torch.device) -> str:
    """The engine ``backend`` selects for tensors on ``device``.

    ``"auto"`` is ``"triton"`` for CUDA tensors when triton is importable and
    ``"torch"`` otherwise. ``"triton"`` raises a ValueError saying why when it
    cannot run here.
    """
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, one of {BACKENDS}; got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_importable() else "torch"
    if backend == "triton":
        reason = unavailable_reason(device)
        if reason is not None:
            raise ValueError(f"backend='triton' cannot run here: {reason}")
    return backend


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
    """Apply L two-layer-perceptron residual blocks, eq. (1) of DESIGN §1.

    For l = 1..L: ``h ← h + c · Σ_j v_{l,j} σ(a · u_{l,j}ᵀ h)``, returning h_L.
    Differentiable in h, u and v; the backward pass keeps only h at
    checkpoints and recomputes the rest.

    Args:
        h: the input h_0, (B, D); or (R, B, D) with a replica axis.
        u: input weights, (L, M, D); or (R, L, M, D) with replicas.
        v: output weights, same shape and dtype as ``u``.
        multiplier: the residual multiplier c (finite real).
        pre_scale: the pre-activation scale a (finite real). Default 1.0.
        activation: one of ``"tanh"``, ``"relu"``, ``"gelu"`` (exact erf),
            ``"silu"``, ``"identity"``. Default ``"tanh"``.
        backend: ``"auto"`` (default: Triton for CUDA tensors when triton is
            installed, else the PyTorch engine), ``"torch"`` (pure-PyTorch
            engine, any device and dtype), ``"triton"`` (fused kernels: CUDA,
            or CPU under ``TRITON_INTERPRET=1``) or ``"reference"`` (plain
            per-layer autograd, memory-hungry; for tests).
        checkpoint_every: memory policy of the backward pass. ``None``
            (default) keeps h before every layer (L·B·D numbers); an int k
            keeps it every k layers and recomputes segments (k need not
            divide L); ``"sqrt"`` uses k = ⌈√L⌉. Ignored by ``"reference"``.
        allow_tf32: Triton backend only: let float32 dot products use TF32
            tensor cores (faster, about 1e-3 relative error). Default False
            (IEEE float32).
        deterministic: Triton backend only: reduce weight gradients in a
            fixed order without atomics (bitwise reproducible, uses one fp32
            gradient buffer per batch tile). Default False.

    Returns:
        h_L, with the shape and dtype of ``h``.

    Raises:
        TypeError: a non-tensor, a non-floating or mismatched dtype, a
            non-real multiplier or pre_scale.
        ValueError: wrong ranks or shapes, empty axes, different devices,
            non-finite scalars, an unknown activation/backend/checkpoint
            policy, or ``backend="triton"`` where it cannot run.

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
    _check_shapes(h, u, v)
    _check_dtypes_devices(h, u, v)
    c = check_finite_real(multiplier, "multiplier")
    a = check_finite_real(pre_scale, "pre_scale")
    activation = check_activation(activation)
    depth = u.shape[-3]
    every = resolve_checkpoint_every(depth, checkpoint_every)
    for name, flag in (("allow_tf32", allow_tf32), ("deterministic", deterministic)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {type(flag).__name__} {flag!r}")
    engine = resolve_backend(backend, h.device)
    if backend == "auto" and engine == "triton":
        # "auto" promises the best engine that can take these tensors: where the fused
        # kernels cannot (D too large, float64), the PyTorch engine runs without a warning.
        from deepres.engines.triton_engine import fallback_reason

        if fallback_reason(h, u) is not None:
            engine = "torch"

    if engine == "reference":
        return reference_residual_stack(h, u, v, c, a, activation)
    unbatched = u.dim() == 3
    if unbatched:
        h, u, v = h.unsqueeze(0), u.unsqueeze(0), v.unsqueeze(0)
    if engine == "triton":
        from deepres.engines.triton_engine import triton_residual_stack

        out = triton_residual_stack(h, u, v, c, a, activation, every,
                                    allow_tf32=allow_tf32, deterministic=deterministic)
    else:
        out = torch_residual_stack(h, u, v, c, a, activation, every)
    return out.squeeze(0) if unbatched else out
