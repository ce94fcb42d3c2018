"""The command-line option toolkit of every ``deepres`` command: value parsers, checks, one-line errors.

Every command (``deepres study``, its phase preset, ``deepres bench``, ``deepres
demo``, the top-level ``deepres``) checks all its options before it starts any
work, and reports a bad one the argparse way: one line that names the option and
the value received, and exit status 2. :class:`OneLineParser` (or
:func:`one_line_errors` on a parser made elsewhere) prints argparse's own errors
(unknown option, bad number, invalid choice) in that form, without the usage
block; :class:`OptionError` carries the errors found by the checks below, which
need more than the value itself (is CUDA there, can the folder be written).

It sits beside the studies and the benchmark, which import it, and below the
command line; it reads the engines' own answers (the backend names, why Triton
cannot run) instead of their messages.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import torch

from deepres._checks import check_choice
from deepres.engines.registry import unavailable_reason
from deepres.functional import BACKENDS

__all__ = [
    "MAX_INT",
    "OneLineParser",
    "OptionError",
    "check_backend",
    "check_device",
    "check_out_file",
    "check_out_folder",
    "finite_float",
    "float_in",
    "int_at_least",
    "ints_at_least",
    "max_threads",
    "one_line_errors",
    "one_of",
    "positive_floats",
    "print_error",
    "threads_option",
    "typed",
    "unique_values",
]

#: The largest int any option takes unless it says less: every count and size fits a 64-bit
#: int with room to multiply (a larger one would overflow inside torch, not fail here).
MAX_INT = 2**62


def max_threads() -> int:
    """The most torch threads an option may ask for: the machine's logical CPUs.

    More threads than CPUs only wait on each other, and torch's thread pools crash on
    very large counts (a segfault at 100000, a libgomp error at 20000).

    Example:
        >>> max_threads() >= 1
        True
    """
    return os.cpu_count() or 1


def threads_option() -> Callable[[str], int]:
    """An argparse ``type`` for ``--threads``: an int in [1, :func:`max_threads`].

    Example:
        >>> threads_option()("1")
        1
    """
    return int_at_least(1, max_threads(), why=f"the {max_threads()} logical CPUs of this machine")


def unique_values(values: Sequence[object], text: str) -> None:
    """Refuse ``values`` that repeat one (an argparse type's check: an axis holds each value once).

    Raises:
        argparse.ArgumentTypeError: naming the repeated values.

    Example:
        >>> unique_values([4, 8], "4,8")
    """
    seen: list[object] = []
    repeated: list[object] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.append(value)
    if repeated:
        shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in repeated)
        raise argparse.ArgumentTypeError(f"every value must appear once ({shown} repeated); got {text!r}")


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


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make ``parser`` end on a bad or unknown option with one line naming it, exit status 2.

    For a parser made elsewhere (a subcommand's, handed over by the caller), the
    behaviour of :class:`OneLineParser`. Unknown options are refused by this parser
    itself: as a subcommand it would otherwise leave them to the top-level parser,
    which prints its usage first.

    Args:
        parser: the parser to change, in place.

    Example:
        >>> parser = argparse.ArgumentParser(prog="demo")
        >>> one_line_errors(parser)
        >>> try:
        ...     parser.parse_args(["--deep", "3"])
        ... except SystemExit as exit:
        ...     exit.code
        2
    """

    def error(message: str) -> NoReturn:
        parser.exit(2, f"{parser.prog}: error: {message}\n")

    known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # type: ignore[no-untyped-def]
        parsed, extras = known(args, namespace)
        if extras:
            error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, []

    parser.error = error  # type: ignore[method-assign]
    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


class OptionError(ValueError):
    """A bad option value found by a check: ``str()`` is ``argument OPTION: REASON; got VALUE``.

    VALUE is written as Python writes it: a str, a number or a list as themselves
    (``'cuda'``, ``3``, ``[2]``), any other object (a path) by its text (``'out'``).

    Args:
        option: the flag, e.g. ``"--device"``. value: what was given. reason: what is wrong.

    Example:
        >>> str(OptionError("--replicas", [2], "use 1"))
        'argument --replicas: use 1; got [2]'
    """

    def __init__(self, option: str, value: object, reason: str) -> None:
        self.option, self.value, self.reason = option, value, reason
        shown = value if isinstance(value, (str, int, float, list, tuple)) or value is None else str(value)
        super().__init__(f"argument {option}: {reason}; got {shown!r}")


def print_error(prog: str, error: BaseException) -> int:
    """Print ``PROG: error: ERROR`` on one line to stderr and return 2 (the exit status)."""
    text = " ".join(str(error).split())  # one line, whatever the message held
    print(f"{prog}: error: {text}", file=sys.stderr)
    return 2


def typed(parse: Callable[[str], object], expected: str) -> Callable[[str], object]:
    """An argparse ``type``: ``parse(text)``, or an error saying what was expected.

    Args:
        parse: returns the value, or None (or raises ValueError/TypeError) for a bad text.
        expected: what a good text is, for the message (``"an integer >= 1"``).

    Example:
        >>> positive = typed(lambda text: value if (value := int(text)) >= 1 else None, "an integer >= 1")
        >>> positive("3")
        3
    """

    def convert(text: str) -> object:
        try:
            value = parse(text)
        except (ValueError, TypeError):
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"expected {expected}; got {text!r}")
        return value

    return convert


def int_at_least(low: int, high: int = MAX_INT, *, why: str = "") -> Callable[[str], int]:
    """An argparse ``type``: an int in [``low``, ``high``].

    Args:
        low, high: the bounds (included). high: Default :data:`MAX_INT`.
        why: what the upper bound is, for the message (e.g. ``"the CPUs of this machine"``).

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
        if value > high:
            reason = f" ({why})" if why else ""
            raise argparse.ArgumentTypeError(f"must be ≤ {high}{reason}; got {text!r}")
        return value

    parse.__name__ = f"int ≥ {low}"  # argparse names the type in some messages
    return parse


def ints_at_least(low: int | None, high: int = MAX_INT) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated ints, each in [``low``, ``high``] (low None: ≥ −high),
    at least one, none repeated.

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
        if max(abs(v) for v in values) > high:
            raise argparse.ArgumentTypeError(f"every value must be ≤ {high} in size; got {text!r}")
        unique_values(values, text)
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


def positive_floats(*, allow_empty: bool = False, unique: bool = True) -> Callable[[str], list[float]]:
    """An argparse ``type``: comma-separated finite numbers > 0 (an empty list only if ``allow_empty``),
    none repeated unless not ``unique``.

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
        if unique:
            unique_values(values, text)
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
    """``backend`` if it names an engine that can run on ``device``.

    The reason an engine cannot run comes from
    :func:`deepres.engines.registry.unavailable_reason`, the engines' own answer.

    Raises:
        OptionError: an unknown backend, or one that cannot run on ``device``.

    Example:
        >>> check_backend("auto", torch.device("cpu"))
        'auto'
    """
    try:
        backend = check_choice(backend, "backend", BACKENDS)
    except (TypeError, ValueError) as error:
        raise OptionError(option, backend, f"cannot run on {device.type}: {error}") from None
    reason = unavailable_reason(backend, device)
    if reason is not None:
        raise OptionError(option, backend, f"cannot run on {device.type}: {reason}")
    return backend


def _probe(folder: Path) -> str | None:
    """Why no file can be created in ``folder`` (None: one can): it tries, and removes it."""
    try:
        fd, name = tempfile.mkstemp(prefix=".deepres-probe-", dir=folder)
    except OSError as error:
        return error.strerror or type(error).__name__
    os.close(fd)
    os.unlink(name)
    return None


def check_out_folder(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` as an output folder: it is a folder, or can be created as one, and is writable.

    Nothing is left behind: a file is created and removed in the nearest existing folder on
    the path (permission bits alone do not say it: root may write anywhere but in
    ``/proc`` or ``/sys``).

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
    reason = "no permission" if not os.access(existing, os.W_OK | os.X_OK) else _probe(existing)
    if reason is not None:
        where = "" if existing == folder else f" ({existing})"
        raise OptionError(option, path, f"the folder{where} is not writable: {reason}")
    return folder


def check_out_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a file to write: its folder exists and takes a new file; it is not a folder.

    Raises:
        OptionError: naming the option, before any work.

    Example:
        >>> import tempfile
        >>> check_out_file(Path(tempfile.mkdtemp()) / "report.json", "--json").name
        'report.json'
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise OptionError(option, path, "a file to write, not a directory")
    if not parent.is_dir():
        raise OptionError(option, path, f"its folder {str(parent)!r} does not exist")
    reason = "no permission" if not os.access(parent, os.W_OK | os.X_OK) else _probe(parent)
    if reason is not None:
        raise OptionError(option, path, f"cannot be written: {reason}")
    return target
