"""Where and how a benchmark result was produced: device, versions, commit, command line, load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["environment", "git_state", "load_average"]


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> tuple[str | None, bool | None]:
    """(the commit of the checkout deepres runs from, whether tracked files differ from it);
    None where there is no git checkout."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return _git("rev-parse", "HEAD"), None if status is None else bool(status)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes share the CPU), or None off Unix."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _cuda_device() -> dict[str, object]:
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count, "memory_bytes": props.total_memory,
            "cuda_version": torch.version.cuda}


def _transparent_hugepage_mode() -> str | None:
    """The kernel's transparent-huge-page mode (``always``, ``madvise``, ``never``), None off Linux."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    chosen = [word[1:-1] for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def environment(argv: Sequence[str] | None = None, device: str = "cpu") -> dict[str, object]:
    """Where and how a result was produced.

    Args:
        argv: the full command line (default: the interpreter and ``sys.argv``).
        device: ``"cpu"`` or ``"cuda"``. Default ``"cpu"``.

    Returns:
        device name, core count, threads, versions, git commit (and whether the
        tree had uncommitted changes), the full command line, the UTC time, the
        load averages, ``TRITON_INTERPRET``; on CUDA, under ``"cuda"``, the GPU's
        name, compute capability, multiprocessors, memory and the CUDA version.

    Example:
        >>> env = environment(["deepres", "bench"])
        >>> env["command"], env["device"]
        ('deepres bench', 'cpu')
    """
    argv = [sys.executable, *sys.argv] if argv is None else list(argv)
    commit, dirty = git_state()
    cuda = device == "cuda"
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda else _cpu_name(),
        "cpu_name": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "numpy": np.__version__,
            "torchdiffeq": _version("torchdiffeq"),
            "deepres": _version("deepres"),
        },
        "cuda": _cuda_device() if cuda else None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        # Whether PyTorch puts CPU tensors of 2 MiB or more on huge pages, and the kernel's mode:
        # on the 2-core CPU it decided whether two threads ran a C++ training step at A in 39-41 ms
        # or in 57-60 ms (docs/engines.md).
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
        "transparent_hugepage": _transparent_hugepage_mode(),
        "git_commit": commit,
        "git_dirty": dirty,
        "command": shlex.join(argv),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": load_average(),
        "platform": platform.platform(),
    }
