"""What the command line of every study shares: the options a preset takes, and the run around its study.

``deepres study`` has one parser for all studies (:mod:`deepres.study.cli`). A
preset that is a study of its own (``--preset phase``, ``--preset shapes``) reads
some of the convergence study's options into its config, reads a few more at run
time, and refuses the others when they are given: :class:`PresetOptions` does that
once for every such preset. :func:`check_run_options` checks the options of where
the study runs (device, backend, executor, output folder) before any work;
:func:`run_command` runs the study in its locked output folder and turns what can
go wrong into one line on stderr and an exit status, the same for every study.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from deepres.options import OptionError, check_backend, check_device, check_out_folder, print_error
from deepres.study.shared.data import ConfigFieldError
from deepres.study.shared.files import run_locked
from deepres.study.shared.store import CorruptResultError, CorruptResultWarning
from deepres.study.shared.sweep import Executor, LocalExecutor

__all__ = ["PresetOptions", "add_flag_group", "check_run_options", "executor_from_args", "flag_dest",
           "option_defaults", "run_command"]

C = TypeVar("C")


def flag_dest(flag: str) -> str:
    """The argparse ``dest`` of an option: ``"--shapes-dims"`` → ``"shapes_dims"``.

    Example:
        >>> flag_dest("--phase-dim-depth")
        'phase_dim_depth'
    """
    return flag.lstrip("-").replace("-", "_")


def add_flag_group(parser: argparse.ArgumentParser, title: str, description: str,
                   flags: dict[str, tuple[str, Any, str]], config: object,
                   shown: Callable[[str, Any, Any], tuple[str, str | None]]) -> None:
    """Add a preset's own options to ``parser`` as one group, each with its config default in its help.

    Args:
        parser: the parser of ``deepres study``. title, description: the group's heading.
        flags: flag → (config field, argparse type, help text).
        config: the preset's default config, whose fields give the defaults shown.
        shown: ``shown(field, type, default)`` → (the default as written on the command line,
            the option's metavar or None).

    The options themselves default to None: "not given", so that the preset keeps its own value.
    """
    group = parser.add_argument_group(title, description)
    for flag, (name, kind, text) in flags.items():
        default, metavar = shown(name, kind, getattr(config, name))
        group.add_argument(flag, type=kind, default=None, metavar=metavar,
                           help=f"{text} (default: {default})")


def option_defaults(*adders: Callable[[argparse.ArgumentParser], None]
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """The defaults and flag names of the options that ``adders`` add to a parser.

    Args:
        adders: functions that add options to a parser (e.g.
            :func:`deepres.study.convergence.cli.add_arguments`).

    Returns:
        ``(defaults, flags)``: dest → default, and dest → its first flag.

    Example:
        >>> defaults, flags = option_defaults(lambda p: p.add_argument("--dims", default=None))
        >>> defaults["dims"], flags["dims"]
        (None, '--dims')
    """
    parser = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {a.dest: a.default for a in parser._actions}, flags


@dataclass(frozen=True)
class PresetOptions:
    """The options of ``deepres study`` that a preset with a study of its own reads.

    Attributes:
        preset: the preset's name (``"phase"``).
        own: the preset's own flags (``--phase-*``) → their config field.
        shared: dests of ``deepres study`` options the config reads → (config field, takes one value).
        runtime: dests the study reads outside its config (device, output folder, ...).
        say: the message of a bad option, from its flag and what is wrong (``"needs --preset phase; ..."``).
    """

    preset: str
    own: dict[str, str]
    shared: dict[str, tuple[str, bool]]
    runtime: frozenset[str]
    say: Callable[[str, str], str]

    def requested(self, args: argparse.Namespace) -> bool:
        """Whether ``args`` asks for this preset (``--preset NAME`` or any of its own flags)."""
        given = (getattr(args, flag_dest(flag), None) is not None for flag in self.own)
        return args.preset == self.preset or any(given)

    def overrides(self, args: argparse.Namespace, defaults: dict[str, Any], flags: dict[str, str],
                  ) -> tuple[dict[str, Any], dict[str, str]]:
        """The config fields the options set, and the flag that set each one.

        Args:
            args: the parsed options. defaults, flags: :func:`option_defaults` of the
                options that the preset refuses unless it reads them.

        Returns:
            ``(overrides, flag_of)``: config field → value, and config field → flag (for messages).

        Raises:
            ValueError: an own flag without ``--preset NAME``, a foreign option given, or a list
                where the config takes one value (the message from :attr:`say`).
        """
        if args.preset != self.preset:
            given = next(f for f in self.own if getattr(args, flag_dest(f), None) is not None)
            raise ValueError(self.say(given, f"needs --preset {self.preset}; got --preset {args.preset}"))
        own = {flag_dest(f) for f in self.own}
        for dest, value in vars(args).items():
            if dest in self.shared or dest in self.runtime or dest in own or dest not in defaults:
                continue
            if value != defaults[dest]:
                raise ValueError(self.say(flags.get(dest, dest), f"is not used by --preset {self.preset}; "
                                                                 f"got {value!r}"))
        overrides: dict[str, Any] = {}
        flag_of = {name: flag for flag, name in self.own.items()}
        for dest, (name, single) in self.shared.items():
            value = getattr(args, dest, None)
            if value is None:
                continue
            flag_of[name] = flags.get(dest, dest)
            if single:
                if not isinstance(value, list) or len(value) != 1:
                    raise ValueError(self.say(flag_of[name], f"takes one value with --preset {self.preset}; "
                                                             f"got {value!r}"))
                value = value[0]
            overrides[name] = value
        if getattr(args, "seed", None) is not None:
            overrides["seed"], flag_of["seed"] = args.seed, "--seed"
        for flag, name in self.own.items():
            value = getattr(args, flag_dest(flag), None)
            if value is not None:
                overrides[name] = value
        return overrides, flag_of

    def build(self, make: Callable[..., C], overrides: dict[str, Any], flag_of: dict[str, str],
              error_type: type[ConfigFieldError]) -> C:
        """``make(**overrides)``, its config error (with ``field`` and ``detail``) said on the flag.

        Raises:
            ValueError: the config refused a value; the message names the flag that set it.
        """
        try:
            return make(**overrides)
        except error_type as error:
            raise ValueError(self.say(flag_of.get(error.field, "--" + error.field), error.detail)) from None
        except TypeError as error:
            raise ValueError(str(error)) from None


def check_run_options(args: argparse.Namespace) -> None:
    """Check the options of where a study runs, without doing any work.

    ``--address`` needs ``--executor ray``; with the local executor the device must
    exist and work here, with the backend on it; with Ray the units run elsewhere, so
    only the device's name is checked; the output folder must be writable.

    Raises:
        ValueError: naming the option and the value (:class:`deepres.options.OptionError`).
    """
    executor = getattr(args, "executor", "local")
    if executor == "local" and getattr(args, "address", None) is not None:
        raise OptionError("--address", args.address, "needs --executor ray")
    if executor == "local":
        check_backend(args.backend, check_device(args.device or "cpu"))
    elif args.device is not None:
        check_device(args.device, here=False)
    check_out_folder(args.out)


def executor_from_args(args: argparse.Namespace) -> Executor:
    """The executor ``--executor`` (with ``--address``, ``--max-retries``) names: local or Ray."""
    if args.executor == "local":
        return LocalExecutor()
    from deepres.study.shared.ray_executor import RayExecutor

    return RayExecutor(args.address, max_retries=args.max_retries)


def run_command(prog: str, args: argparse.Namespace, study: Callable[[bool], dict[str, Any]],
                summary: Callable[[dict[str, Any]], str], executor: Executor | None = None) -> int:
    """Run ``study(wait)`` in its locked output folder ``args.out``, print its summary; the exit status.

    Args:
        prog: the command, for the messages. args: the parsed options (``out``, ``wait``).
        study: runs the study: takes ``wait`` and returns its report (with ``units``, and
            ``corrupt_files`` and ``failed_units`` when there are some).
        summary: the report's text summary, printed on success.
        executor: closed at the end, whatever happens. Default None.

    Returns:
        0 on success; 2 when another study holds the folder (without ``--wait``); 130 when
        interrupted (the finished units stay stored); 1 when a unit failed or a stored
        result cannot be read back. Each said in one line on stderr.
    """
    try:
        with warnings.catch_warnings():
            # Reported below, from the report, once each.
            warnings.simplefilter("ignore", CorruptResultWarning)
            report = run_locked(study, args.out, wait=args.wait, prog=prog)
    except OptionError as error:
        return print_error(prog, error)
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; the finished units are stored in {args.out}/units, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    except CorruptResultError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    for entry in report.get("corrupt_files", []):
        print(f"{prog}: unreadable result file {entry['file']}: {entry['reason']}; renamed to "
              f"{Path(entry['renamed_to']).name}, its unit was computed again", file=sys.stderr)
    if report["units"].get("failed"):
        for failure in report["failed_units"]:
            print(f"{prog}: unit {failure['unit']['kind']} failed: {failure['error']}", file=sys.stderr)
        print(f"{prog}: {report['units']['failed']} unit(s) failed, listed in "
              f"{Path(args.out) / 'study.json'}; rerun the same command to retry them", file=sys.stderr)
        return 1
    print(summary(report))
    print(f"report: {Path(args.out) / 'study.json'}")
    return 0
