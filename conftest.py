"""Shared test configuration (tests and the doctests of deepres/ and kernels/).

Without a CUDA device the Triton kernels can still be tested on the CPU in
Triton's interpreter, which must be switched on before the kernels are
defined (``triton.jit`` reads ``TRITON_INTERPRET`` when a module of kernels is
imported). Importing torch does not import triton, so setting the variable
here, before any test module is collected, is early enough. An explicit
``TRITON_INTERPRET`` in the environment wins.

Hypothesis runs derandomized (profile ``ci``): every run of the suite, in CI and
locally, draws the same examples, and no example database is written, so a run
never depends on what an earlier one found. To explore with fresh examples, pass
a seed (``--hypothesis-seed=N``: Hypothesis ignores seeds when derandomized, so a
seed selects the profile ``random``), or choose a profile with
``--hypothesis-profile=random`` or ``HYPOTHESIS_PROFILE=random``. A failure
prints the ``@reproduce_failure`` blob that replays it.
"""

import os

import torch
from hypothesis import settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", derandomize=False, database=None, print_blob=True)


def pytest_configure(config):
    # Hypothesis's own plugin loads a profile given with --hypothesis-profile.
    if config.getoption("--hypothesis-profile", default=None):
        return
    if os.environ.get("HYPOTHESIS_PROFILE"):
        settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
    elif config.getoption("--hypothesis-seed", default=None) is not None:
        settings.load_profile("random")
    else:
        settings.load_profile("ci")
