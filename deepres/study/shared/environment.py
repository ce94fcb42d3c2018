"""Where a study runs: its torch threads, and the environment its ``study.json`` records.

The record is :func:`deepres.benchmark.environment.environment`, the one capture of
device, versions, commit, command line and load that the benchmark writes too.
"""

from __future__ import annotations

from typing import Any

import torch

from deepres.benchmark.environment import environment

__all__ = ["set_threads", "study_environment"]


def set_threads(threads: int | None, device: str) -> None:
    """torch's intra-op threads for a study: ``threads`` (``--threads``), or 1 on the CPU by default.

    Args:
        threads: the thread count, or None for the default. device: where the study runs.

    Example:
        >>> before = torch.get_num_threads()
        >>> set_threads(None, "cpu"); torch.get_num_threads()
        1
        >>> torch.set_num_threads(before)
    """
    if threads is None and str(device).startswith("cpu"):
        # NOTE: the study's tensors are small (10 samples, D = 4): intra-op threading costs
        # more than it saves, and on a loaded machine its spin-waits explode. Measured on the
        # 2-core CPU under load 6.7: the quick limit unit took 9.3 s with 1 thread, 320 s with 2.
        # (Ray runs each task with one thread already.)
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def study_environment(device: str, argv: list[str] | None = None) -> dict[str, Any]:
    """The environment of a study that runs on ``device`` (a torch device name).

    Args:
        device: e.g. ``"cpu"``, ``"cuda:1"``. argv: the full command line. Default: the
            interpreter and ``sys.argv``.

    Returns:
        :func:`deepres.benchmark.environment.environment` of the device's type, with
        ``device`` the name as given.

    Example:
        >>> env = study_environment("cpu")
        >>> env["device"], "torch" in env["versions"]
        ('cpu', True)
    """
    return environment(argv, device=torch.device(device).type) | {"device": str(device)}
