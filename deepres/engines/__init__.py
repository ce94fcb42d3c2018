"""Engines: ``torch.library`` custom ops that evaluate a stack of residual blocks.

* :mod:`deepres.engines.registry` — the one table of engines (:data:`~.registry.ENGINES`):
  what each computes, where it runs, how to call it. A new engine is an entry there.
* :mod:`deepres.engines.torch_engine` — pure PyTorch, any device and dtype.
* :mod:`deepres.engines.cpp_engine` — compiled C++ loops on CPU (float32, float64),
  built at first use by :mod:`deepres.engines.cpp_build`.
* :mod:`deepres.engines.triton` — fused Triton kernels (CUDA, or CPU under
  ``TRITON_INTERPRET=1``) as one slice: availability, launcher, ops.
* :mod:`deepres.engines.reference` — the plain per-layer autograd oracle.
* :mod:`deepres.engines.common` — what they share, among it the one autograd
  wiring of every custom op (:func:`~.common.register_vjp`, also used by the mean ODE).

All of them take replica-form tensors (h (R, B, D), u and v (R, L, M, D)) and
trust their arguments; :func:`deepres.residual_stack` checks, resolves the
options once (:func:`deepres.functional.stack_options`) and dispatches.
"""
