"""Engines: autograd Functions that evaluate a stack of residual blocks.

* :mod:`deepres.engines.torch_engine` — pure PyTorch, any device and dtype.
* :mod:`deepres.engines.cpp_engine` — compiled C++ loops on CPU (float32, float64),
  built at first use by :mod:`deepres.engines.cpp_build`.
* :mod:`deepres.engines.triton_engine` — fused Triton kernels (CUDA, or CPU
  under ``TRITON_INTERPRET=1``).
* :mod:`deepres.engines.reference` — the plain per-layer autograd oracle.

All of them take replica-form tensors (h (R, B, D), u and v (R, L, M, D)) and
trust their arguments; :func:`deepres.residual_stack` checks and dispatches.
"""
