"""Checks of command-line options, shared by the ``deepres`` commands.

Every command checks all its options before it starts any work, and reports a bad
one the argparse way: one line that names the option and the value received, and
exit status 2. :class:`OneLineParser` prints argparse's own errors (unknown
option, bad number, invalid choice) in that form, without the usage block;
:class:`OptionError` carries the errors found by the checks below, which need
more than the value itself (is CUDA there, can the folder be written).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

__all__ = [
    "OneLineParser",
    "OptionError",
    "check_backend",
    "check_device",
    "check_out_folder",
    "finite_float",
    "float_in",
    "int_at_least",
    "ints_at_least",
    "one_of",
    "positive_floats",
    "print_error",
]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``PROG: error: MESSAGE``), exit status 2.

    argparse prints the whole usage block before the message; for a command with
    thirty options that buries the one line that matters. ``--help`` still shows it.
    Sub-command parsers made with ``add_subparsers().add_parser`` are of this class too.

    Example:
        >>> parser = OneLineParser(prog="demo")
        >>> _ = parser.add_argument("--depth", type=int_at_least(1))
        >>> try:
        ...     parser.parse_args(["--depth", "0"])
        ... except SystemExit as exit:
        ...     exit.code
        2
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class OptionError(ValueError):
    """A bad option value found by a check: ``str()`` is ``argument OPTION: REASON; got 'VALUE'``.

    Args:
        option: the flag, e.g. ``"--device"``. value: what was given. reason: what is wrong.
    """

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option, self.value, self.reason = option, value, reason
        super().__init__(f"argument {option}: {reason}; got {str(value)!r}")


def print_error(prog: str, error: BaseException) -> int:
    """Print ``PROG: error: ERROR`` on one line to stderr and return 2 (the exit status)."""
    text = " ".join(str(error).split())  # one line, whatever the message held
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an int ≥ ``low``.

    Example:
        >>> int_at_least(2)("3")
        3
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an int ≥ {low}; got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be ≥ {low}; got {text!r}")
        return value

    parse.__name__ = f"int ≥ {low}"  # argparse names the type in some messages
    return parse


def ints_at_least(low: int | None) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated ints, each ≥ ``low`` (None: any int), at least one.

    Example:
        >>> ints_at_least(1)("4,8, 16")
        [4, 8, 16]
    """

    def parse(text: str) -> list[int]:
        bound = "" if low is None else f" ≥ {low}"
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated ints{bound}; got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one int{bound}; got {text!r}")
        if low is not None and min(values) < low:
            raise argparse.ArgumentTypeError(f"every value must be{bound}; got {text!r}")
        return values

    parse.__name__ = "ints"
    return parse


def one_of(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse ``type``: one of ``choices`` (like ``choices=``, for options whose default is None).

    Example:
        >>> one_of(("euler", "rk4"))("rk4")
        'rk4'
    """

    def parse(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    parse.__name__ = "choice"
    return parse


def finite_float(text: str) -> float:
    """An argparse ``type``: a finite number.

    Example:
        >>> finite_float("1e-3")
        0.001
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite; got {text!r}")
    return value


def float_in(low: float, high: float, *, low_open: bool = True) -> Callable[[str], float]:
    """An argparse ``type``: a number in (low, high] (``low_open``) or [low, high].

    Example:
        >>> float_in(0, 1)("0.25")
        0.25
    """
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        value = finite_float(text)
        if not (low < value <= high if low_open else low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be in {interval}; got {text!r}")
        return value

    parse.__name__ = f"number in {interval}"
    return parse


def positive_floats(*, allow_empty: bool = False) -> Callable[[str], list[float]]:
    """An argparse ``type``: comma-separated finite numbers > 0 (an empty list only if ``allow_empty``).

    Example:
        >>> positive_floats(allow_empty=True)("")
        []
    """

    def parse(text: str) -> list[float]:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers > 0; got {text!r}") from None
        if not values and not allow_empty:
            raise argparse.ArgumentTypeError(f"expected at least one number > 0; got {text!r}")
        if any(not (math.isfinite(v) and v > 0) for v in values):
            raise argparse.ArgumentTypeError(f"every value must be a finite number > 0; got {text!r}")
        return values

    parse.__name__ = "numbers"
    return parse


def check_device(text: str, option: str = "--device", *, here: bool = True) -> torch.device:
    """The torch device named by ``text``, checked to exist and to work on this machine.

    Args:
        text: the option's value. option: its flag, for the message. Default ``"--device"``.
        here: check that the device exists and works on this machine. Default True;
            False checks the name only (for work that runs on other machines).

    Raises:
        OptionError: not a device name, CUDA (or that CUDA index) or MPS missing, the
            ``meta`` device (it holds no values), or a tensor cannot be made there.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
    """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise OptionError(option, text, "not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "meta":
        raise OptionError(option, text, "the meta device holds no values; use cpu or cuda")
    if not here:
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(option, text, "CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise OptionError(option, text, f"this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(option, text, "MPS is not available on this machine")
    try:
        torch.zeros(1, device=device)
    except Exception as error:  # any failure to use the device is an unusable option value
        raise OptionError(option, text, f"cannot make a tensor there ({type(error).__name__})") from None
    return device


def check_backend(backend: str, device: torch.device, option: str = "--backend") -> str:
    """``backend`` if it can run on ``device`` (see :func:`deepres.functional.check_backend`).

    Raises:
        OptionError: an unknown backend, or ``triton`` where it cannot run.

    Example:
        >>> check_backend("auto", torch.device("cpu"))
        'auto'
    """
    from deepres.functional import check_backend as check_engine

    try:
        return check_engine(backend, device)
    except (TypeError, ValueError) as error:
        reason = str(error).removeprefix("backend='triton' cannot run here: ")
        raise OptionError(option, backend, f"cannot run on {device.type}: {reason}") from None


def check_out_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as an output folder: it is a folder, or can be created as one, and is writable.

    Nothing is created: the nearest existing folder on the path must be writable.

    Raises:
        OptionError: a file is in the way, or the folder cannot be written.

    Example:
        >>> import tempfile
        >>> check_out_folder(tempfile.mkdtemp()).is_dir()
        True
    """
    folder = Path(path)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "it" if existing == folder else str(existing)
        raise OptionError(option, path, f"not a folder: {where} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == folder else f" ({existing})"
        raise OptionError(option, path, f"the folder{where} is not writable")
    return folder
