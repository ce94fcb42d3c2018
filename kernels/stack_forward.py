"""Forward kernel: a whole stack of residual blocks, eq. (1), in one launch.

    h_l = h_{l-1} + c · σ(a · h_{l-1} u_lᵀ) v_l        h (B, D), u_l, v_l (M, D)

Grid (⌈B / BLOCK_B⌉, R): one program owns a BLOCK_B × D tile of the residual
stream of one replica and keeps it in registers, in float32, for all L layers;
only the checkpoints h_{i·k} (when the caller will run a backward pass) and
h_L go back to memory. Per layer it reads u_l and v_l once, BLOCK_M rows at a
time, so the M-wide activations σ(z) never leave the chip either.

Padding: every block dimension is a power of two and at least 16 (the GPU's
``tl.dot`` needs ≥ 16 along each axis). Padded rows and columns are loaded as
zeros; σ(0) = 0 for every supported activation and padded weight rows are
zero, so the padding never leaks into the valid part of h.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import activation

__all__ = ["layer_forward", "stack_forward_kernel"]


@triton.jit
def _forward_m_tile(h, acc, u_ptr, v_ptr, offsets, mask_w, a,
                    ACT: tl.constexpr, PRECISION: tl.constexpr):
    """acc + σ(a · h u_tᵀ) v_t for one BLOCK_M tile of hidden units."""
    u_t = tl.load(u_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    v_t = tl.load(v_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    z = tl.dot(h, tl.trans(u_t), input_precision=PRECISION) * a
    return tl.dot(activation(z, ACT), v_t, acc, input_precision=PRECISION)


@triton.jit
def layer_forward(h, u_ptr, v_ptr, w_base, M, D, a, c, offs_m, offs_d, mask_d,
                  ACT: tl.constexpr, PRECISION: tl.constexpr, ONE_M_TILE: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """One layer of eq. (1) on a (BLOCK_B, BLOCK_D) float32 tile h.

    ``w_base`` is the element offset of u_l (and v_l) in the (R, L, M, D)
    weight tensors. Weights of any float dtype are upcast to float32 on load.
    ``ONE_M_TILE`` (M ≤ BLOCK_M) drops the loop over hidden tiles, so that the
    caller's loop over layers is the innermost loop and the compiler can
    prefetch the next layers' weights while this one computes.
    """
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    w_tile = offs_m[:, None] * D + offs_d[None, :]
    if ONE_M_TILE:
        mask_w = (offs_m < M)[:, None] & mask_d[None, :]
        acc = _forward_m_tile(h, acc, u_ptr, v_ptr, w_base + w_tile, mask_w, a, ACT, PRECISION)
    else:
        for m0 in range(0, M, BLOCK_M):  # loop: m-tile
            mask_w = ((m0 + offs_m) < M)[:, None] & mask_d[None, :]
            acc = _forward_m_tile(h, acc, u_ptr, v_ptr, w_base + m0 * D + w_tile, mask_w, a,
                                  ACT, PRECISION)
    return h + c * acc


@triton.jit
def stack_forward_kernel(
    h0_ptr, u_ptr, v_ptr, out_ptr, ckpt_ptr,
    R, B, D, M, L, every,
    c, a,
    ACT: tl.constexpr, PRECISION: tl.constexpr, SAVE_CHECKPOINTS: tl.constexpr, ONE_M_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """h_L of eq. (1) for one batch tile of one replica.

    Args (pointers to contiguous tensors):
        h0_ptr: h_0, (R, B, D), float32.
        u_ptr, v_ptr: weights, (R, L, M, D), float32/float16/bfloat16.
        out_ptr: h_L, (R, B, D), float32.
        ckpt_ptr: checkpoints, (⌈L/every⌉, R, B, D) float32: h_{i·every} is
            written to slot i when SAVE_CHECKPOINTS (else unused).
        c, a: the multiplier and pre-activation scale (float32).
        ONE_M_TILE: M ≤ BLOCK_M (see :func:`layer_forward`).
    """
    pid_b = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_d = offs_d < D
    mask_bd = (offs_b < B)[:, None] & mask_d[None, :]
    tile = offs_b[:, None] * D + offs_d[None, :]

    h = tl.load(h0_ptr + r * B * D + tile, mask=mask_bd, other=0.0).to(tl.float32)
    for layer in range(0, L):  # loop: forward-layer
        # Two ifs: the outer one is resolved at compile time, the inner one at run time.
        if SAVE_CHECKPOINTS:  # noqa: SIM102
            if layer % every == 0:
                slot = layer // every
                tl.store(ckpt_ptr + (slot * R + r) * B * D + tile, h, mask=mask_bd)
        w_base = (r * L + layer) * M * D
        h = layer_forward(h, u_ptr, v_ptr, w_base, M, D, a, c, offs_m, offs_d, mask_d,
                          ACT, PRECISION, ONE_M_TILE, BLOCK_B, BLOCK_D, BLOCK_M)
    tl.store(out_ptr + r * B * D + tile, h, mask=mask_bd)
