"""Shared test configuration.

Without a CUDA device the Triton kernels can still be tested on the CPU in
Triton's interpreter, which must be switched on before the kernels are
defined (``triton.jit`` reads ``TRITON_INTERPRET`` when a module of kernels is
imported). Importing torch does not import triton, so setting the variable
here, before any test module is collected, is early enough. An explicit
``TRITON_INTERPRET`` in the environment wins.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
