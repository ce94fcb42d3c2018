"""Backward kernel: the reverse walk over a stack of residual blocks.

Vector–Jacobian derivation (one layer; docs/design.md §1). With x = h_{l-1} (B, D),
z = a · x u_lᵀ (B, M), s = σ(z) and h_l = x + c · s v_l, let g = ∂loss/∂h_l.
For perturbations δx, δu, δv:

    δh_l = δx + c · δs v_l + c · s δv,     δs = σ'(z) ⊙ (a · (δx u_lᵀ + x δuᵀ))

Pairing with g (⟨A, B⟩ = Σ A ⊙ B) and writing q = g v_lᵀ (B, M), p = σ'(z) ⊙ q:

    ⟨g, δh_l⟩ = ⟨g, δx⟩ + c·⟨g v_lᵀ, δs⟩ + c·⟨sᵀ g, δv⟩
              = ⟨g + c·a · p u_l, δx⟩ + ⟨c·a · pᵀ x, δu⟩ + ⟨c · sᵀ g, δv⟩

so, reading off the three coefficients,

    g_{l-1}  = g + c·a · p u_l       (B, D)
    ∂loss/∂u_l = c·a · pᵀ x           (M, D), summed over the batch
    ∂loss/∂v_l = c · sᵀ g             (M, D), summed over the batch

Only x = h_{l-1} is needed to redo a layer. Grid (⌈B / BLOCK_B⌉, R): a program
carries its tile of g in registers down the layers [lo, hi) (given at launch),
segment by segment, last first. Before walking a segment from its top it
recomputes the segment's layer inputs from the segment's checkpoint into its
rows of a scratch buffer (every, R, B, D) (with every = 1 the checkpoints are
the inputs and nothing is recomputed); a launch that starts lower in a
segment finds them there. Weights are pipelined across the layer loops as in
the forward kernel.

The weight gradients are sums over the batch, i.e. over programs. ``W_MODE``:

* ``"gemm"`` (several batch tiles): the walk stores, per layer of [lo, hi),
  s, p and g (float32) into a workspace; :mod:`.weight_grad` then forms
  ∂v_l = c · sᵀ g and ∂u_l = c·a · pᵀ x as tensor-core GEMMs over the whole
  batch, in a fixed order: deterministic, no float atomics.
* ``"store"`` (one batch tile): the program is the only writer of every
  (replica, layer, hidden tile): it forms both products itself and stores them.
* ``"none"``: only ∂loss/∂h_0.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import activation_and_derivative
from .dot import matmul
from .stack_forward import layer_forward

__all__ = ["stack_backward_kernel"]


@triton.jit
def _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, offsets, mask_w, offsets_t, mask_wt, a, c,
                     grad_u_ptr, grad_v_ptr, ws_s_ptr, ws_p_ptr, ws_mask,
                     ACT: tl.constexpr, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr,
                     W_MODE: tl.constexpr):
    """One BLOCK_M tile of hidden units of one layer: returns g_acc + c·a · p u_t, and
    stores this tile's s, p (``"gemm"``) or its ∂u_t, ∂v_t (``"store"``)."""
    # u_t feeds two products in different shared-memory layouts. Loaded once, the compiler's
    # pipeliner prefetches nothing and the weight loads' latency is exposed every layer (cost
    # model: 2 exposed waits, 296 cycles per layer); loaded once per use — uᵀ through transposed
    # pointers, so that the two loads differ — both are prefetched.
    u_tt = tl.load(u_ptr + offsets_t, mask=mask_wt, other=0.0).to(tl.float32)
    u_t = tl.load(u_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    v_t = tl.load(v_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    z = matmul(x, u_tt, a, PRECISION, HALF_WEIGHTS)
    s, ds = activation_and_derivative(z, ACT)
    p = ds * matmul(g, tl.trans(v_t), 1.0, PRECISION, HALF_WEIGHTS)
    if W_MODE == "gemm":
        tl.store(ws_s_ptr, s.to(ws_s_ptr.dtype.element_ty), mask=ws_mask)
        tl.store(ws_p_ptr, p.to(ws_p_ptr.dtype.element_ty), mask=ws_mask)
    elif W_MODE == "store":
        tl.store(grad_v_ptr + offsets, matmul(tl.trans(s), g, c, PRECISION), mask=mask_w)
        tl.store(grad_u_ptr + offsets, matmul(tl.trans(p), x, c * a, PRECISION), mask=mask_w)
    return g_acc + matmul(p, u_t, c * a, PRECISION, HALF_WEIGHTS)


@triton.jit(do_not_specialize=["lo", "hi"])
def stack_backward_kernel(
    g_ptr, ckpt_ptr, scratch_ptr, u_ptr, v_ptr,
    grad_h_ptr, grad_u_ptr, grad_v_ptr, ws_s_ptr, ws_p_ptr, ws_g_ptr,
    R, B, D, M, L, every, lo, hi,
    c, a,
    ACT: tl.constexpr, PRECISION: tl.constexpr, HALF_WEIGHTS: tl.constexpr, RECOMPUTE: tl.constexpr,
    W_MODE: tl.constexpr, ONE_M_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """Walk layers hi−1 … lo of one batch tile of one replica (see the module docstring).

    Args (pointers to contiguous tensors):
        g_ptr: ∂loss/∂h_hi, (R, B, D), float32.
        ckpt_ptr: checkpoints of the forward pass, (⌈L/every⌉, R, B, D), float32.
        scratch_ptr: (every, R, B, D) float32 layer inputs of the current
            segment when RECOMPUTE (every > 1), else unused.
        u_ptr, v_ptr: weights, (R, L, M, D), float32/float16/bfloat16.
        grad_h_ptr: output ∂loss/∂h_lo, (R, B, D), float32 (may be g_ptr).
        grad_u_ptr, grad_v_ptr: (R, L, M, D) float32 outputs (``"store"``).
        ws_s_ptr, ws_p_ptr: (hi − lo, R, B, M) float32 workspace, and
            ws_g_ptr: (hi − lo, R, B, D) float32 (``"gemm"``): layer l's s, p
            and g in slot l − lo.
        lo, hi: the layers walked; [lo, hi) lies in one segment when W_MODE
            is ``"gemm"`` and every > 1.
        c, a: the multiplier and pre-activation scale (float32).
    """
    pid_b = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask_bd = mask_b[:, None] & mask_d[None, :]
    tile = offs_b[:, None] * D + offs_d[None, :]
    w_tile = offs_m[:, None] * D + offs_d[None, :]
    w_tile_t = offs_d[:, None] + offs_m[None, :] * D  # the same tile, transposed
    ws_tile = offs_b[:, None] * M + offs_m[None, :]

    # Padded rows of g are zero, so they add nothing to the weight gradients.
    g = tl.load(g_ptr + r * B * D + tile, mask=mask_bd, other=0.0)
    first_segment = lo // every
    for t in range(0, tl.cdiv(hi, every) - first_segment):  # loop: walk-segment
        segment = tl.cdiv(hi, every) - 1 - t
        start = segment * every
        top = tl.minimum(tl.minimum(start + every, L), hi)
        bottom = tl.maximum(start, lo)
        # When the walk starts at this segment's top, recompute its layer inputs first. Two ifs: the
        # outer one is resolved at compile time, the inner one at run time.
        if RECOMPUTE:  # noqa: SIM102
            if top == tl.minimum(start + every, L):
                h = tl.load(ckpt_ptr + (segment * R + r) * B * D + tile, mask=mask_bd, other=0.0)
                tl.store(scratch_ptr + r * B * D + tile, h, mask=mask_bd)
                for layer in range(start, top - 1):  # loop: recompute-layer
                    h = layer_forward(h, u_ptr, v_ptr, (r * L + layer) * M * D, M, D, a, c,
                                      offs_m, offs_d, mask_d, ACT, PRECISION, HALF_WEIGHTS, ONE_M_TILE,
                                      BLOCK_B, BLOCK_D, BLOCK_M)
                    tl.store(scratch_ptr + ((layer - start + 1) * R + r) * B * D + tile, h, mask=mask_bd)
                # The inputs are read back below in a different thread layout: make
                # this program's stores visible to all its threads first.
                tl.debug_barrier()
        for t2 in range(0, top - bottom):  # loop: walk-layer
            layer = top - 1 - t2
            if RECOMPUTE:
                x_ptr = scratch_ptr + ((layer - start) * R + r) * B * D
            else:
                x_ptr = ckpt_ptr + (layer * R + r) * B * D
            x = tl.load(x_ptr + tile, mask=mask_bd, other=0.0)
            w_base = (r * L + layer) * M * D
            slot = (layer - lo) * R + r
            if W_MODE == "gemm":
                tl.store(ws_g_ptr + slot * B * D + tile, g, mask=mask_bd)
            g_acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
            if ONE_M_TILE:
                mask_w = (offs_m < M)[:, None] & mask_d[None, :]
                ws_mask = mask_b[:, None] & (offs_m < M)[None, :]
                g_acc = _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, w_base + w_tile, mask_w,
                                         w_base + w_tile_t, tl.trans(mask_w), a, c,
                                         grad_u_ptr, grad_v_ptr,
                                         ws_s_ptr + slot * B * M + ws_tile, ws_p_ptr + slot * B * M + ws_tile,
                                         ws_mask, ACT, PRECISION, HALF_WEIGHTS, W_MODE)
            else:
                for m0 in range(0, M, BLOCK_M):  # loop: m-tile
                    mask_w = ((m0 + offs_m) < M)[:, None] & mask_d[None, :]
                    ws_mask = mask_b[:, None] & ((m0 + offs_m) < M)[None, :]
                    ws_offsets = slot * B * M + m0 + ws_tile
                    g_acc = _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, w_base + m0 * D + w_tile, mask_w,
                                             w_base + m0 * D + w_tile_t, tl.trans(mask_w), a, c,
                                             grad_u_ptr, grad_v_ptr,
                                             ws_s_ptr + ws_offsets, ws_p_ptr + ws_offsets, ws_mask,
                                             ACT, PRECISION, HALF_WEIGHTS, W_MODE)
            g = g + g_acc
        if RECOMPUTE:
            # Other threads may still read this segment's inputs: wait before
            # the next segment overwrites the scratch rows.
            tl.debug_barrier()
    tl.store(grad_h_ptr + r * B * D + tile, g, mask=mask_bd)
