"""Triton kernels for stacks of two-layer-perceptron residual blocks (installed as ``deepres.kernels``).

* :mod:`.activations` — σ and σ' as ``triton.jit`` helpers (tanh, relu,
  gelu, silu, identity), matching :mod:`deepres.activations`.
* :mod:`.stack_forward` — eq. (1) over all L layers in one launch, h held on
  chip, checkpoints written from inside the kernel.
* :mod:`.stack_backward` — the reverse walk: recompute each checkpoint
  segment, carry ∂loss/∂h, accumulate ∂u, ∂v in float32.
* :mod:`.launch` — tile choice, grids and buffers (no autograd here; see
  :mod:`deepres.engines.triton_engine`).

Importing this package does not import triton; its submodules do.
"""
