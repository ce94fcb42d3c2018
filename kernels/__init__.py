"""Triton kernels for stacks of two-layer-perceptron residual blocks (installed as ``deepres.kernels``).

* :mod:`.activations` — σ and σ' as ``triton.jit`` helpers (tanh, relu,
  gelu, silu, identity), matching :mod:`deepres.activations`.
* :mod:`.dot` — products at a chosen precision (IEEE, three-pass TF32, TF32).
* :mod:`.stack_forward` — eq. (1) over all L layers in one launch, h held on
  chip, weights prefetched, checkpoints written from inside the kernel.
* :mod:`.stack_backward` — the reverse walk: recompute each checkpoint
  segment, carry ∂loss/∂h, leave what the weight gradients need.
* :mod:`.weight_grad` — ∂u, ∂v of a chunk of layers as GEMMs over the batch.
* :mod:`.plan` — tiles, precision and the launches of each pass (shared by
  the launchers and the cost model).
* :mod:`.launch` — buffers and launches (no autograd here; see
  :mod:`deepres.engines.triton_engine`).
* :mod:`.sass`, :mod:`.cost_model`, :mod:`.compile_check` — compile every
  variant for sm_90a without a GPU, read its SASS, estimate its time.

Importing this package does not import triton; its submodules do.
"""
