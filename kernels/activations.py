"""Activations σ and their derivatives σ' as ``triton.jit`` helpers.

They must agree with :mod:`deepres.activations` (the PyTorch engine's pairs):
tanh, relu, gelu (exact erf), silu and identity. The activation is chosen by
a ``tl.constexpr`` string, so each kernel is compiled for one activation and
the branch costs nothing at run time.

Everything here is float32 and uses only ``tl`` primitives that both the GPU
compiler and Triton's interpreter implement (libdevice functions do not run in
the interpreter).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["activation", "activation_and_derivative", "tanh"]

_INV_SQRT2 = tl.constexpr(0.7071067811865476)  # 1/√2
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1/√(2π)


@triton.jit
def tanh(z):
    """tanh(z) in float32 to a few ulp (Cephes ``tanhf``).

    ``1 − 2/(e^{2|z|} + 1)`` alone loses relative accuracy near 0 (at z = 1e-4
    it is off by ~3e-4 relative), so |z| < 0.625 uses Cephes' odd minimax
    polynomial instead; measured against float64 tanh on a dense grid the
    largest relative error is 7.4e-7.
    """
    x = tl.abs(z)
    s = z * z
    poly = ((((-5.70498872745e-3 * s + 2.06390887954e-2) * s - 5.37397155531e-2) * s
             + 1.33314422036e-1) * s - 3.33332819422e-1) * s * z + z
    # exp overflows to inf for |z| > 44: 2/inf = 0 gives tanh = ±1 exactly.
    big = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    big = tl.where(z < 0.0, -big, big)
    return tl.where(x < 0.625, poly, big)


@triton.jit
def activation(z, ACT: tl.constexpr):
    """σ(z) elementwise for the activation named ``ACT`` (float32 tile)."""
    if ACT == "tanh":
        s = tanh(z)
    elif ACT == "relu":
        s = tl.where(z > 0.0, z, 0.0)
    elif ACT == "gelu":
        s = z * (0.5 * (1.0 + tl.erf(z * _INV_SQRT2)))
    elif ACT == "silu":
        s = z * tl.sigmoid(z)
    else:
        tl.static_assert(ACT == "identity", "unknown activation")
        s = z
    return s


@triton.jit
def activation_and_derivative(z, ACT: tl.constexpr):
    """(σ(z), σ'(z)) elementwise for the activation named ``ACT`` (float32 tiles)."""
    if ACT == "tanh":
        s = tanh(z)
        ds = 1.0 - s * s
    elif ACT == "relu":
        positive = z > 0.0
        s = tl.where(positive, z, 0.0)
        ds = tl.where(positive, 1.0, 0.0)
    elif ACT == "gelu":
        # σ = z Φ(z), σ' = Φ(z) + z φ(z)
        cdf = 0.5 * (1.0 + tl.erf(z * _INV_SQRT2))
        s = z * cdf
        ds = cdf + z * (tl.exp(-0.5 * z * z) * _INV_SQRT_2PI)
    elif ACT == "silu":
        # σ = z·sig(z), σ' = sig(z)·(1 + z·(1 − sig(z)))
        sig = tl.sigmoid(z)
        s = z * sig
        ds = sig * (1.0 + z * (1.0 - sig))
    else:
        tl.static_assert(ACT == "identity", "unknown activation")
        s = z
        ds = tl.full(z.shape, 1.0, tl.float32)
    return s, ds
