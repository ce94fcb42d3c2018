"""Backward kernel: the vector–Jacobian product of a whole stack, in one launch.

Vector–Jacobian derivation (one layer; DESIGN §1). With x = h_{l-1} (B, D),
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
carries its tile of g in registers from layer L down to layer 1. For each
checkpoint segment, last first, it recomputes the layer inputs from the
segment's checkpoint into its rows of a scratch buffer (every, R, B, D)
(with every = 1 the checkpoints are the inputs and nothing is recomputed),
then walks the segment's layers in reverse. Within a layer it loops over M in
BLOCK_M tiles; all tiles use the same incoming g, so g_{l-1} is accumulated
separately and applied after the last tile.

Weight gradients are sums over the batch, i.e. over programs. Three ways to
combine them (``W_MODE``):

* ``"store"``: a single batch tile — each (replica, layer, M tile) block has
  one writer; plain stores, deterministic.
* ``"atomic"``: float32 atomic adds into one (R, L, M, D) buffer (the
  default; the summation order, hence the last bits, can vary run to run).
* ``"partial"``: each batch tile stores its own partial sums into slot
  ``pid_b`` of an (n_batch_tiles, R, L, M, D) buffer that the launcher then
  reduces in a fixed order: bitwise reproducible, at the cost of
  n_batch_tiles × the weights' size in float32 memory.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .activations import activation_and_derivative
from .stack_forward import layer_forward

__all__ = ["stack_backward_kernel"]


@triton.jit
def _write_weight_grad(ptr, offsets, value, mask, W_MODE: tl.constexpr):
    if W_MODE == "atomic":
        # Relaxed ordering: the adds only have to be atomic, nothing reads the
        # buffer until the kernel has finished.
        tl.atomic_add(ptr + offsets, value, mask=mask, sem="relaxed")
    else:
        tl.store(ptr + offsets, value, mask=mask)


@triton.jit
def _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, grad_u_ptr, grad_v_ptr, offsets, mask_w, a, c,
                     ACT: tl.constexpr, PRECISION: tl.constexpr, NEED_WEIGHTS: tl.constexpr,
                     W_MODE: tl.constexpr):
    """One BLOCK_M tile of hidden units of one layer: returns g_acc + p u_t and
    adds this batch tile's share of ∂u_t, ∂v_t (see the module docstring)."""
    u_t = tl.load(u_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    v_t = tl.load(v_ptr + offsets, mask=mask_w, other=0.0).to(tl.float32)
    z = tl.dot(x, tl.trans(u_t), input_precision=PRECISION) * a
    s, ds = activation_and_derivative(z, ACT)
    p = ds * tl.dot(g, tl.trans(v_t), input_precision=PRECISION)
    if NEED_WEIGHTS:
        grad_v = tl.dot(tl.trans(s), g, input_precision=PRECISION) * c
        grad_u = tl.dot(tl.trans(p), x, input_precision=PRECISION) * (c * a)
        _write_weight_grad(grad_v_ptr, offsets, grad_v, mask_w, W_MODE)
        _write_weight_grad(grad_u_ptr, offsets, grad_u, mask_w, W_MODE)
    return tl.dot(p, u_t, g_acc, input_precision=PRECISION)


@triton.jit
def stack_backward_kernel(
    g_ptr, ckpt_ptr, scratch_ptr, u_ptr, v_ptr,
    grad_h_ptr, grad_u_ptr, grad_v_ptr,
    R, B, D, M, L, every,
    c, a,
    ACT: tl.constexpr, PRECISION: tl.constexpr, RECOMPUTE: tl.constexpr,
    NEED_WEIGHTS: tl.constexpr, W_MODE: tl.constexpr, ONE_M_TILE: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """∂loss/∂h_0, ∂loss/∂u, ∂loss/∂v for one batch tile of one replica.

    Args (pointers to contiguous tensors):
        g_ptr: ∂loss/∂h_L, (R, B, D), float32.
        ckpt_ptr: checkpoints of the forward pass, (⌈L/every⌉, R, B, D), float32.
        scratch_ptr: (every, R, B, D) float32 work space when RECOMPUTE
            (every > 1), else unused.
        u_ptr, v_ptr: weights, (R, L, M, D), float32/float16/bfloat16.
        grad_h_ptr: output ∂loss/∂h_0, (R, B, D), float32.
        grad_u_ptr, grad_v_ptr: float32 weight-gradient buffers, (R, L, M, D)
            (zeroed for "atomic"), or (n_batch_tiles, R, L, M, D) for
            "partial"; unused unless NEED_WEIGHTS.
        c, a: the multiplier and pre-activation scale (float32).
        ONE_M_TILE: M ≤ BLOCK_M: no loop over hidden tiles, so the loop over
            layers is innermost and the compiler can prefetch weights across it.
    """
    pid_b = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    mask_d = offs_d < D
    mask_bd = (offs_b < B)[:, None] & mask_d[None, :]
    tile = offs_b[:, None] * D + offs_d[None, :]
    w_tile = offs_m[:, None] * D + offs_d[None, :]
    ca = c * a
    if W_MODE == "partial":
        # This batch tile's own slot of the (n_batch_tiles, R, L, M, D) buffers.
        grad_u_ptr += pid_b.to(tl.int64) * R * L * M * D
        grad_v_ptr += pid_b.to(tl.int64) * R * L * M * D

    # Padded rows of g are zero, so they add nothing to the weight gradients.
    g = tl.load(g_ptr + r * B * D + tile, mask=mask_bd, other=0.0)
    n_segments = tl.cdiv(L, every)
    for t in range(0, n_segments):
        segment = n_segments - 1 - t
        start = segment * every
        stop = tl.minimum(start + every, L)
        if RECOMPUTE:
            h = tl.load(ckpt_ptr + (segment * R + r) * B * D + tile, mask=mask_bd, other=0.0)
            tl.store(scratch_ptr + r * B * D + tile, h, mask=mask_bd)
            for layer in range(start, stop - 1):  # loop: recompute-layer
                h = layer_forward(h, u_ptr, v_ptr, (r * L + layer) * M * D, M, D, a, c,
                                  offs_m, offs_d, mask_d, ACT, PRECISION, ONE_M_TILE,
                                  BLOCK_B, BLOCK_D, BLOCK_M)
                tl.store(scratch_ptr + ((layer - start + 1) * R + r) * B * D + tile, h, mask=mask_bd)
            # The inputs are read back below in a different thread layout: make
            # this program's stores visible to all its threads first.
            tl.debug_barrier()
        for t2 in range(0, stop - start):  # loop: walk-layer
            layer = stop - 1 - t2
            if RECOMPUTE:
                x_ptr = scratch_ptr + ((layer - start) * R + r) * B * D
            else:
                x_ptr = ckpt_ptr + (layer * R + r) * B * D
            x = tl.load(x_ptr + tile, mask=mask_bd, other=0.0)
            w_base = (r * L + layer) * M * D
            g_acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
            if ONE_M_TILE:
                mask_w = (offs_m < M)[:, None] & mask_d[None, :]
                g_acc = _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, grad_u_ptr, grad_v_ptr, w_base + w_tile,
                                         mask_w, a, c, ACT, PRECISION, NEED_WEIGHTS, W_MODE)
            else:
                for m0 in range(0, M, BLOCK_M):  # loop: m-tile
                    mask_w = ((m0 + offs_m) < M)[:, None] & mask_d[None, :]
                    g_acc = _backward_m_tile(x, g, g_acc, u_ptr, v_ptr, grad_u_ptr, grad_v_ptr,
                                             w_base + m0 * D + w_tile, mask_w, a, c,
                                             ACT, PRECISION, NEED_WEIGHTS, W_MODE)
            g = g + ca * g_acc
        if RECOMPUTE:
            # Other threads may still read this segment's inputs: wait before
            # the next segment overwrites the scratch rows.
            tl.debug_barrier()
    tl.store(grad_h_ptr + r * B * D + tile, g, mask=mask_bd)
