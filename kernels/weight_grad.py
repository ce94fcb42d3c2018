"""Weight gradients of a chunk of layers as batched GEMMs (no atomics, fixed reduction order).

For each layer l of a chunk [lo, hi) the backward walk (:mod:`.stack_backward`,
``W_MODE="gemm"``) leaves in a workspace the activations s = σ(z), the
pre-activation gradients p = σ'(z) ⊙ (g v_lᵀ) and the stream gradient g, all
(B, ·) per replica; the layer inputs x = h_{l-1} are in the backward's
scratch buffer (the checkpoints when every = 1). This kernel forms

    ∂loss/∂v_l = c · sᵀ g        ∂loss/∂u_l = c·a · pᵀ x        (M, D) each

Grid (chunk length × R, M tiles × D tiles, 2): one program owns one
(BLOCK_M, BLOCK_D) tile of one gradient of one layer and one replica and
reduces over the whole batch itself, BLOCK_K rows at a time, always in the
same order: the result is bitwise reproducible and needs no float atomics.
The products use :func:`deepres.kernels.dot.matmul` at the stack's precision,
and the K loop is software-pipelined (``num_stages``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .dot import matmul

__all__ = ["weight_grad_kernel"]


@triton.jit
def _batch_reduction(a_ptr, b_ptr, a_stride, b_stride, B, offs_m, offs_d, mask_m, mask_d, scale,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """scale · Σ_b a[b, m] b[b, d] over b < B for a (B, ·) with row stride a_stride (likewise b)."""
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, B, BLOCK_K):  # loop: gemm-k
        rows = k0 + offs_k
        mask_k = rows < B
        a_blk = tl.load(a_ptr + rows[:, None] * a_stride + offs_m[None, :],
                        mask=mask_k[:, None] & mask_m[None, :], other=0.0).to(tl.float32)
        b_blk = tl.load(b_ptr + rows[:, None] * b_stride + offs_d[None, :],
                        mask=mask_k[:, None] & mask_d[None, :], other=0.0)
        acc = acc + matmul(tl.trans(a_blk), b_blk, scale, PRECISION)
    return acc


@triton.jit
def weight_grad_kernel(
    s_ptr, p_ptr, g_ptr, x_ptr, grad_u_ptr, grad_v_ptr,
    R, B, D, M, L, lo,
    c, a,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_D) tile of ∂v_l (axis 2 = 0) or ∂u_l (axis 2 = 1).

    Args (pointers to contiguous tensors):
        s_ptr, p_ptr: (chunk, R, B, M) float32; g_ptr, x_ptr:
            (chunk, R, B, D) float32 — slot i holds layer lo + i.
        grad_u_ptr, grad_v_ptr: (R, L, M, D) float32; layer lo + i is written.
        lo: first layer of the chunk. c, a: the multiplier and pre-activation scale.
    """
    pid = tl.program_id(0)
    slot = pid.to(tl.int64)  # = i · R + r
    r = slot % R
    layer = lo + slot // R
    n_d = tl.cdiv(D, BLOCK_D)
    offs_m = (tl.program_id(1) // n_d) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = (tl.program_id(1) % n_d) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    out = (r * L + layer) * M * D + offs_m[:, None] * D + offs_d[None, :]
    mask = mask_m[:, None] & mask_d[None, :]
    if tl.program_id(2) == 0:
        grad = _batch_reduction(s_ptr + slot * B * M, g_ptr + slot * B * D, M, D, B, offs_m, offs_d, mask_m,
                                mask_d, c, PRECISION, BLOCK_M, BLOCK_D, BLOCK_K)
        tl.store(grad_v_ptr + out, grad, mask=mask)
    else:
        grad = _batch_reduction(p_ptr + slot * B * M, x_ptr + slot * B * D, M, D, B, offs_m, offs_d, mask_m,
                                mask_d, c * a, PRECISION, BLOCK_M, BLOCK_D, BLOCK_K)
        tl.store(grad_u_ptr + out, grad, mask=mask)
