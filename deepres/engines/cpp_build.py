"""Build, cache and load the C++ CPU engine (``deepres/engines/csrc/``).

The extension is compiled just in time, at its first use (never at ``import
deepres``), with ``torch.utils.cpp_extension.load`` and ninja, at ``-O3
-march=native`` with OpenMP. It is cached under the torch extensions folder
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) in a folder
named by a hash of everything the binary depends on: the source, the torch and
Python versions, the compiler and its flags, and the CPU (model and instruction
set flags, since ``-march=native`` targets it). A cached build is imported
directly; a new one prints one line to stderr first. Two processes building at
once are safe: torch's builder holds a lock file in the build folder.

Prebuild (e.g. in a Docker image or on a cluster's login node)::

    python -m deepres.engines.prebuild_cpp

Where no build is possible (no compiler, no ninja, a failed compile, or
``DEEPRES_CPP=0`` in the environment), :func:`cpp_unavailable_reason` says why:
``backend="auto"`` then warns once and runs the PyTorch engine, and
``backend="cpp"`` raises a ValueError with that reason.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["BUILD_FLAGS", "cpp_module", "cpp_unavailable_reason", "extension_name", "main"]

_SOURCE = Path(__file__).with_name("csrc") / "stack.cpp"
_HEADERS = (_SOURCE.with_name("stack_blocks.h"), _SOURCE.with_name("outputs.h"))

#: Compiler flags of the extension (OpenMP for ATen's parallel_for; C++20 for templated lambdas).
#: -march=native: built for the x86-64 baseline instead, a training step took 5-10x longer
#: (docs/engines.md); the cache key holds the CPU's flags, so a build is reused only where it runs.
BUILD_FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-fopenmp", "-std=c++20")
_LINK_FLAGS: tuple[str, ...] = ("-fopenmp",)

# Measured: a first build took 75 s on a nearly idle 2-core EPYC (one compiler process),
# 166–250 s of wall time while other processes shared the cores (docs/engines.md).
_BUILD_SECONDS = "about 2 minutes"


def _cpu_signature() -> str:
    """The CPU model and instruction-set flags (what ``-march=native`` compiles for)."""
    model, flags = platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model.endswith(value.strip()):
                model += " " + value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = value.strip()
                break
    except OSError:
        model += " " + platform.processor()
    return f"{model}|{flags}"


def extension_name() -> str:
    """The extension's name: ``deepres_cpp_`` and a hash of source, versions, compiler, flags and CPU.

    Example:
        >>> extension_name().startswith("deepres_cpp_")
        True
    """
    key = "\n".join([
        *(path.read_text() if path.exists() else "" for path in (_SOURCE, *_HEADERS)),
        torch.__version__, sys.version, sysconfig.get_platform(),
        os.environ.get("CXX", "c++"), " ".join(BUILD_FLAGS + _LINK_FLAGS), _cpu_signature(),
    ])
    return "deepres_cpp_" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _build_directory(name: str) -> Path:
    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()
    return Path(root) / "deepres" / name


def _find_ninja() -> None:
    """Put the ``ninja`` of the ninja wheel on PATH when none is there (a venv used without activating it)."""
    if shutil.which("ninja") is not None:
        return
    try:
        import ninja  # the PyPI wheel: a dependency of deepres
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _import_built(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(name: str, directory: Path, announce: bool) -> ModuleType:
    from torch.utils import cpp_extension

    if os.environ.get("DEEPRES_CPP", "1") == "0":
        raise RuntimeError("DEEPRES_CPP=0 is set in the environment")
    missing = [path.name for path in (_SOURCE, *_HEADERS) if not path.exists()]
    if missing:
        raise RuntimeError(f"the engine's sources {missing} are not installed")
    library = directory / f"{name}{sysconfig.get_config_var('EXT_SUFFIX') or '.so'}"
    plain = directory / f"{name}.so"
    for candidate in (plain, library):
        if candidate.exists() and not (directory / "lock").exists():
            return _import_built(name, candidate)
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} is not on PATH (set CXX to one)")
    _find_ninja()
    if shutil.which("ninja") is None:
        raise RuntimeError("ninja is not installed (pip install ninja)")
    if announce:
        print(f"deepres: compiling the C++ CPU engine for this machine and torch {torch.__version__} "
              f"({_BUILD_SECONDS}, once; cached in {directory.parent})", file=sys.stderr, flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(name=name, sources=[str(_SOURCE)], extra_cflags=list(BUILD_FLAGS),
                              extra_ldflags=list(_LINK_FLAGS), build_directory=str(directory), verbose=False)


def _short(error: BaseException) -> str:
    """The last informative line of a build error (the full compiler log is not a user message)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines
              if "error" in line.lower() and not line.startswith("ninja: build stopped")]
    text = (errors[0] if errors else lines[-1] if lines else type(error).__name__)
    return text[:300]


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ModuleType | None, str | None]:
    name = extension_name()
    try:
        return _build(name, _build_directory(name), announce=True), None
    except Exception as error:
        return None, f"{type(error).__name__}: {_short(error)}"


def cpp_module() -> ModuleType:
    """The compiled extension, built at the first call (see the module docstring).

    Raises:
        RuntimeError: the engine cannot be built here (the message says why).
    """
    module, reason = _load()
    if module is None:
        raise RuntimeError(f"the C++ CPU engine is not available: {reason}")
    return module


@torch.compiler.assume_constant_result
def cpp_unavailable_reason() -> str | None:
    """None when the C++ engine can run (building it on the first call), else why not.

    Example:
        >>> reason = cpp_unavailable_reason()
        >>> reason is None or isinstance(reason, str)
        True
    """
    return _load()[1]


_warned = False


def warn_unavailable_once() -> None:
    """One UserWarning per process saying that ``backend="auto"`` runs the PyTorch engine on CPU, and why."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"deepres: the C++ CPU engine is not available ({cpp_unavailable_reason()}); "
                      "backend='auto' runs the PyTorch engine on CPU", UserWarning, stacklevel=4)


def main() -> int:
    """Build (or find) the extension, say where (``python -m deepres.engines.prebuild_cpp``)."""
    start = time.perf_counter()
    name = extension_name()
    try:
        module = _build(name, _build_directory(name), announce=True)
    except Exception as error:
        print(f"deepres: the C++ CPU engine could not be built: {type(error).__name__}: {_short(error)}",
              file=sys.stderr)
        return 1
    print(f"deepres: C++ CPU engine ready ({time.perf_counter() - start:.1f} s): {module.__file__}")
    return 0

