"""Matrix products at a chosen precision: IEEE float32 (FFMA), three-pass TF32, or TF32.

``PRECISION`` (a ``tl.constexpr``) picks how ``a @ b`` of two float32 tiles
is computed; the accumulator is always float32:

* ``"ieee"``: ``tl.dot(..., input_precision="ieee")``, FFMA loops (no tensor cores).
* ``"tf32x3"``: three TF32 tensor-core products that together are as
  accurate as float32 (Ootomo and Yokota, "Recovering single precision
  accuracy from Tensor Cores while surpassing the FP32 theoretical peak
  performance", IJHPCA 2022). Each operand is split as ``x = hi + lo`` where
  ``hi`` keeps the top 10 mantissa bits — a bit mask, so ``hi`` is exactly
  representable in TF32 and ``lo = x − hi`` is exact in float32 — and
  ``a_lo·b_hi + a_hi·b_lo + a_hi·b_hi`` is summed, the small terms first.
  The dropped ``a_lo·b_lo`` and the TF32 truncation of ``lo`` cost at most
  about 2⁻²⁰ relative per product. The mask costs one integer op per element
  where Triton's built-in ``"tf32x3"`` rounds (three ops). The three products
  run as independent chains of ``mma.sync``.
* ``"tf32"``: one TF32 product (about 1e-3 relative error).

A weight tile that was float16 or bfloat16 is exact in TF32 (fewer mantissa
bits, an exponent range TF32 covers), so with ``HALF_WEIGHTS`` its ``lo`` part is
zero and ``"tf32x3"`` needs only two products.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["matmul", "split_tf32"]


@triton.jit
def split_tf32(x):
    """(hi, lo) with x = hi + lo exactly and hi representable in TF32 (float32 tiles)."""
    hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
    return hi, x - hi


@triton.jit
def matmul(a, b, scale, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr = False):
    """scale · (a @ b) for float32 tiles a (P, K), b (K, N); float32 result (P, N).

    ``scale`` is a float32 scalar. ``HALF_WEIGHTS``: b is already exact in TF32
    (upcast float16/bfloat16 weights).
    """
    if PRECISION == "tf32x3":
        # Three independent chains of mma.sync instead of one three times as long (each link of a
        # chain waits for the previous mma's result). The terms are scaled before they are added:
        # Triton folds ``dot(x, y) + z`` into ``dot(x, y, acc=z)``, which would chain them again.
        a_hi, a_lo = split_tf32(a)
        if HALF_WEIGHTS:
            big = tl.dot(a_hi, b, input_precision="tf32")
            small = tl.dot(a_lo, b, input_precision="tf32")
            result = scale * small + scale * big
        else:
            b_hi, b_lo = split_tf32(b)
            big = tl.dot(a_hi, b_hi, input_precision="tf32")
            small = tl.dot(a_lo, b_hi, input_precision="tf32")
            small2 = tl.dot(a_hi, b_lo, input_precision="tf32")
            result = (scale * small + scale * small2) + scale * big
    else:
        result = scale * tl.dot(a, b, input_precision=PRECISION)
    return result
