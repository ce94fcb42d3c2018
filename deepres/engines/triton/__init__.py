"""The Triton engine as one vertical slice: availability → launcher → autograd ops.

* :mod:`.support` — whether the kernels can run on a device or take given
  tensors, and why not (imports neither triton nor the kernels).
* :mod:`.launch` — buffers and launches of the kernels through one dispatch
  table (the only module here that imports triton).
* :mod:`.op` — the ``torch.library`` custom ops and their autograd, and
  :func:`~.op.triton_residual_stack`, the engine's entry.

The slice is cut the way the kernels' users read it (an op, what it launches,
whether it can run), not by layer: the ``@triton.jit`` kernels and their
plans stay in ``kernels/`` (``deepres.kernels``), which knows nothing of
autograd. Importing this package does not import triton.
"""

from deepres.engines.triton.op import check_precision, triton_residual_stack
from deepres.engines.triton.support import fallback_reason, triton_importable, unavailable_reason

__all__ = ["check_precision", "fallback_reason", "triton_importable", "triton_residual_stack",
           "unavailable_reason"]
