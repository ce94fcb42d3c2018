"""Triton kernels for stacks of two-layer-perceptron residual blocks (installed as ``deepres.kernels``).

* :mod:`.activations` — σ and σ' as ``triton.jit`` helpers (tanh, relu,
  gelu, silu, identity), matching :mod:`deepres.activations`.
* :mod:`.dot` — products at a chosen precision (IEEE, three-pass TF32, TF32).
* :mod:`.stack_forward` — eq. (1) over all L layers in one launch, h held on
  chip, weights prefetched, checkpoints written from inside the kernel.
* :mod:`.stack_backward` — the reverse walk: recompute each checkpoint
  segment, carry ∂loss/∂h, leave what the weight gradients need.
* :mod:`.weight_grad` — ∂u, ∂v of a chunk of layers as GEMMs over the batch.
* :mod:`.plan` — tiles, precision, the dtype vocabulary and the launches of
  each pass (shared by the launcher and the offline cost model); imports
  neither triton nor the kernels.

The launcher, the availability checks and the autograd ops live with the
engine, :mod:`deepres.engines.triton`; the offline GPU cost-modelling tools
(compile every variant for sm_90a, read its SASS, estimate its time) live
outside the package, in the repository's ``tools/kernel_cost/``.

Importing this package does not import triton; the kernel modules do.
"""
