"""Forward kernel: a whole stack of residual blocks, eq. (1), in one launch.

    h_l = h_{l-1} + c · σ(a · h_{l-1} u_lᵀ) v_l        h (B, D), u_l, v_l (M, D)

Grid (⌈B / BLOCK_B⌉, R): one program owns a BLOCK_B × D tile of the residual
stream of one replica and keeps it on chip, in float32, for all L layers;
only the checkpoints h_{i·k} (when the caller will run a backward pass) and
h_L go back to memory. The layers run in segments of k: the checkpoint is
stored before a segment, so the loop over a segment's layers has no branch.
Per layer it reads u_l and v_l once, so the M-wide activations σ(z) never
leave the chip either.

Weights are pipelined: with ``num_stages = S`` the compiler's software
pipeliner keeps S − 1 layers' weights in flight (``cp.async`` into shared
memory), so the loads of layer l + 1 and l + 2 overlap layer l's products.
That holds with one hidden tile (``ONE_M_TILE``, M ≤ BLOCK_M); with several,
the pipeliner works on the loop over hidden tiles and the first tile's load
of each layer stays exposed (``tools/kernel_cost`` counts such waits).
The products use :func:`deepres.kernels.dot.matmul` (IEEE, three-pass TF32
or TF32).

Padding: every block dimension is a power of two and at least 16 (the GPU's
``tl.dot`` needs ≥ 16 along each axis). Padded rows and columns are loaded as
zeros; σ(0) = 0 for every supported activation and padded weight rows are
zero, so the padding never leaks into the valid part of h.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import activation
from .dot import matmul

__all__ = ["layer_forward", "stack_forward_kernel"]


@triton.jit
def _forward_m_tile(h, acc, u_ptr, v_ptr, offsets, mask_w, a, c,
                    ACT: tl.constexpr, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr):
    """acc + c · σ(a · h u_tᵀ) v_t for one BLOCK_M tile of hidden units."""
    u_t = tl.load(u_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    v_t = tl.load(v_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    z = matmul(h, tl.trans(u_t), a, PRECISION, HALF_WEIGHTS)
    return acc + matmul(activation(z, ACT), v_t, c, PRECISION, HALF_WEIGHTS)


@triton.jit
def layer_forward(h, u_ptr, v_ptr, w_base, M, D, a, c, offs_m, offs_d, mask_d,
                  ACT: tl.constexpr, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr,
                  ONE_M_TILE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_M: tl.constexpr):
    """One layer of eq. (1) on a (BLOCK_B, BLOCK_D) float32 tile h.

    ``w_base`` is the element offset of u_l (and v_l) in the (R, L, M, D)
    weight tensors. Weights of any float dtype are upcast to float32 on load
    (exact; ``HALF_WEIGHTS`` says they were float16/bfloat16, so three-pass
    TF32 needs only two products). ``ONE_M_TILE`` (M ≤ BLOCK_M) drops the loop
    over hidden tiles, so that the caller's loop over layers is the innermost
    loop and the compiler pipelines the next layers' weights across it.
    """
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    w_tile = offs_m[:, None] * D + offs_d[None, :]
    if ONE_M_TILE:
        mask_w = (offs_m < M)[:, None] & mask_d[None, :]
        acc = _forward_m_tile(h, acc, u_ptr, v_ptr, w_base + w_tile, mask_w, a, c, ACT, PRECISION,
                              HALF_WEIGHTS)
    else:
        for m0 in range(0, M, BLOCK_M):  # loop: m-tile
            mask_w = ((m0 + offs_m) < M)[:, None] & mask_d[None, :]
            acc = _forward_m_tile(h, acc, u_ptr, v_ptr, w_base + m0 * D + w_tile, mask_w, a, c,
                                  ACT, PRECISION, HALF_WEIGHTS)
    return h + acc


@triton.jit
def stack_forward_kernel(
    h0_ptr, u_ptr, v_ptr, out_ptr, ckpt_ptr,
    R, B, D, M, L, every,
    c, a,
    ACT: tl.constexpr, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr,
    SAVE_CHECKPOINTS: tl.constexpr, CHECKPOINT_EVERY_LAYER: tl.constexpr, ONE_M_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """h_L of eq. (1) for one batch tile of one replica.

    Args (pointers to contiguous tensors):
        h0_ptr: h_0, (R, B, D), float32.
        u_ptr, v_ptr: weights, (R, L, M, D), float32/float16/bfloat16.
        out_ptr: h_L, (R, B, D), float32.
        ckpt_ptr: checkpoints, (⌈L/every⌉, R, B, D) float32: h_{i·every} is
            written to slot i when SAVE_CHECKPOINTS (else unused).
        every: the segment length k (any k ≥ 1 without checkpoints).
        c, a: the multiplier and pre-activation scale (float32).
        CHECKPOINT_EVERY_LAYER: SAVE_CHECKPOINTS with every = 1: one flat
            loop over the layers that stores h before each. (The segment loop
            with one-layer segments leaves the pipeliner nothing to overlap:
            the cost model counts two exposed weight waits per layer there.)
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
    if CHECKPOINT_EVERY_LAYER:
        for layer in range(0, L):  # loop: forward-every-layer
            tl.store(ckpt_ptr + (layer * R + r) * B * D + tile, h, mask=mask_bd)
            h = layer_forward(h, u_ptr, v_ptr, (r * L + layer) * M * D, M, D, a, c, offs_m, offs_d, mask_d,
                              ACT, PRECISION, HALF_WEIGHTS, ONE_M_TILE, BLOCK_B, BLOCK_D, BLOCK_M)
    else:
        for segment in range(0, tl.cdiv(L, every)):  # loop: forward-segment
            start = segment * every
            if SAVE_CHECKPOINTS:
                tl.store(ckpt_ptr + (segment * R + r) * B * D + tile, h, mask=mask_bd)
            for layer in range(start, tl.minimum(start + every, L)):  # loop: forward-layer
                h = layer_forward(h, u_ptr, v_ptr, (r * L + layer) * M * D, M, D, a, c, offs_m, offs_d,
                                  mask_d, ACT, PRECISION, HALF_WEIGHTS, ONE_M_TILE,
                                  BLOCK_B, BLOCK_D, BLOCK_M)
    tl.store(out_ptr + r * B * D + tile, h, mask=mask_bd)
