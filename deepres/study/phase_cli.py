"""``deepres study --preset phase``: the phase diagram of residual multiplier and learning rate.

Usage (about 5 minutes on a 2-core CPU)::

    deepres study --preset phase --out phase-out

It measures, at every point (β, γ) of a grid and every depth L, what one gradient
step and K steps do (:mod:`deepres.study.phase_measure`), fits the exponents in L with
bootstrap CIs, classifies each point (:mod:`deepres.study.phase_analysis`), does
the same in D at fixed L, M for the (δ, λ) family, and writes ``study.json``
(with a ``phase`` section), ``phase_points.csv``, ``phase_measurements.csv`` and
the figures. Rerunning the same command resumes from ``OUT/units/``.

The flags of ``deepres study`` that make sense here keep their meaning
(``--depths``, ``--widths`` (one M), ``--dims`` (one D), ``--alphas`` (one α),
``--etas`` (one η for the K steps), ``--steps`` (one K), ``--seed``, ``--replicas``,
``--task``, ``--samples``, ``--activation``, ``--bootstrap``, ``--dtype``,
``--device``, ``--backend``, ``--threads``, ``--out``, ``--no-plots``,
``--no-progress``); the others are refused. The ``--phase-*`` flags set the grid.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from deepres.cli_checks import OptionError, check_backend, check_device, check_out_folder, print_error
from deepres.study.files import OutputLock, run_locked
from deepres.study.phase import AXES
from deepres.study.phase_config import PhaseConfig, PhaseConfigError
from deepres.study.phase_measure import phase_unit_cost, run_phase_unit
from deepres.study.report import json_safe, write_json

__all__ = ["add_phase_arguments", "config_from_args", "main", "phase_requested", "run_phase",
           "write_phase_report"]


# ---------------------------------------------------------------- command line

def _pairs(text: str) -> list[list[float]]:
    try:
        items = [item.split(":") for item in text.split(",") if item.strip()]
        return [[float(a), float(b)] for a, b in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pairs x:y, e.g. 1:1,0.5:0; got {text!r}"
                                         ) from None


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints; got {text!r}") from None


#: --phase-* flag → (PhaseConfig field, parser, help).
_PHASE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--phase-points": ("points", _pairs, "points β:γ of the depth diagram, e.g. 1:1,0.5:0 (empty: skip it)"),
    "--phase-first-eta": ("first_eta", float, "first η tried for the first step, halved until the step is "
                                               "linear in η"),
    "--phase-tolerance": ("tolerance", float, "τ of the classification rule: an exponent's sign counts only "
                                              "if its CI clears ±τ"),
    "--phase-dims": ("dims", _ints, "D values of the dimension diagram (empty: skip it)"),
    "--phase-dim-points": ("dim_points", _pairs, "points δ:λ of the dimension diagram"),
    "--phase-dim-depth": ("dim_depth", int, "fixed L of the dimension diagram"),
    "--phase-dim-hidden": ("dim_hidden", int, "fixed M of the dimension diagram"),
    "--phase-dim-replicas": ("dim_replicas", int, "replicas of the dimension diagram"),
}
#: ``deepres study`` flag → (PhaseConfig field, takes one value).
_SHARED: dict[str, tuple[str, bool]] = {
    "depths": ("depths", False), "widths": ("hidden", True), "dims": ("dim", True), "alphas": ("alpha", True),
    "etas": ("eta", True), "steps": ("steps", True), "seeds": ("seed", True), "replicas": ("replicas", False),
    "task": ("task", False), "samples": ("samples", False), "activation": ("activation", False),
    "bootstrap": ("bootstrap", False), "dtype": ("dtype", False),
}
#: Options of ``deepres study`` that the phase study reads outside its config.
_RUNTIME = {"preset", "seed", "device", "backend", "out", "no_plots", "no_progress", "threads", "wait",
            "handler", "command"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_phase_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--phase-*`` options (used with ``--preset phase`` only) to ``parser``."""
    group = parser.add_argument_group(
        "phase preset", "with --preset phase: the (β, γ) phase diagram in depth and the (δ, λ) one in D "
                        "(see docs/study.md, 'Phase diagram')")
    defaults = PhaseConfig()
    for flag, (name, kind, text) in _PHASE_FLAGS.items():
        default = getattr(defaults, name)
        metavar = None
        if kind is _pairs:
            default, metavar = ",".join(f"{a:g}:{b:g}" for a, b in default), "X:Y,..."
        elif kind is _ints:
            default, metavar = ",".join(map(str, default)), "D,..."
        group.add_argument(flag, type=kind, default=None, metavar=metavar,
                           help=f"{text} (default: {default})")


def phase_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` asks for the phase study (``--preset phase`` or any ``--phase-*`` flag)."""
    return args.preset == "phase" or any(getattr(args, _dest(f), None) is not None for f in _PHASE_FLAGS)


def _option_defaults() -> tuple[dict[str, Any], dict[str, str]]:
    """Defaults and flag names of every ``deepres study`` option, read from its parser."""
    from deepres.study.cli import configure_parser

    parser = argparse.ArgumentParser(add_help=False)
    configure_parser(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {a.dest: a.default for a in parser._actions}, flags


def config_from_args(args: argparse.Namespace) -> PhaseConfig:
    """The :class:`PhaseConfig` the options ask for; ValueError names a bad or foreign option."""
    if args.preset != "phase":
        given = next(f for f in _PHASE_FLAGS if getattr(args, _dest(f), None) is not None)
        raise ValueError(f"{given} needs --preset phase; got --preset {args.preset}")
    defaults, flags = _option_defaults()
    own = {_dest(f) for f in _PHASE_FLAGS}
    for dest, value in vars(args).items():
        if dest in _SHARED or dest in _RUNTIME or dest in own or dest not in defaults:
            continue
        if value != defaults[dest]:
            raise ValueError(f"{flags.get(dest, dest)} is not used by --preset phase; got {value!r}")
    overrides: dict[str, Any] = {}
    flag_of = {name: flag for flag, (name, _, _) in _PHASE_FLAGS.items()}
    for dest, (name, single) in _SHARED.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag_of[name] = flags.get(dest, dest)
        if single:
            if not isinstance(value, list) or len(value) != 1:
                raise ValueError(f"{flag_of[name]} takes one value with --preset phase; got {value!r}")
            value = value[0]
        overrides[name] = value
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
        flag_of["seed"] = "--seed"
    for flag, (name, _, _) in _PHASE_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if value is not None:
            overrides[name] = value
    try:
        return PhaseConfig(**overrides)
    except PhaseConfigError as error:
        raise ValueError(f"{flag_of.get(error.field, error.field)} {error.detail}") from None


# ---------------------------------------------------------------- running and reporting

def _environment(device: str) -> dict[str, Any]:
    import numpy

    import deepres

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"deepres": deepres.__version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "device": device, "git_commit": commit,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_phase(config: PhaseConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
              progress: bool = True, plots: bool = True, wait: bool = False) -> dict[str, Any]:
    """Run (or resume) the phase study, analyze it and write its report to ``out``.

    Args:
        config: the study. out: output directory.
        device: Default ``"cpu"``. backend: stack backend. Default ``"auto"``.
        progress: tqdm bar weighted by each unit's cost. Default True. plots: write PNGs. Default True.
        wait: when another study holds ``out``'s lock, wait for it. Default False: raise
            :class:`~deepres.study.files.FolderLockedError`.

    Returns:
        The report written to ``out/study.json``: ``config``, ``environment``, ``units``,
        ``wall_seconds`` and ``phase`` (see :func:`deepres.study.phase_analysis.analyze_phase`).
    """
    with OutputLock(out).held(wait=wait):
        return _run_phase_locked(config, out, device=device, backend=backend, progress=progress, plots=plots)


def _run_phase_locked(config: PhaseConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                      plots: bool) -> dict[str, Any]:
    from deepres.study.phase_analysis import analyze_phase
    from deepres.study.sweep import ResultStore, unit_key

    start = time.perf_counter()
    environment = _environment(device)
    # The device type and the backend are part of every unit's key (see ResultStore).
    store = ResultStore(out, device=device, backend=backend)
    units = config.units()
    todo = sorted((u for u in units if not store.has(u)), key=phase_unit_cost)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # The same float additions in the same order as the updates, so the bar ends at exactly 100 %.
        bar = tqdm(total=sum(phase_unit_cost(u) / 1e3 for u in todo), desc="phase",
                   bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        bar.set_postfix_str(f"{len(units) - len(todo)} units resumed, {len(todo)} to run")
    try:
        for unit in todo:
            result = run_phase_unit(unit, device=device, backend=backend)
            store.save(unit, result)
            if bar is not None:
                bar.update(phase_unit_cost(unit) / 1e3)
                bar.set_postfix_str(f"{unit_key(unit)[:14]} {result['seconds']:.1f}s")
    finally:
        if bar is not None:
            bar.close()
    ran = time.perf_counter() - start
    analysis = analyze_phase(((u, store.load(u)) for u in units), tolerance=config.tolerance,
                             bootstrap=config.bootstrap, level=config.level,
                             linearity_tolerance=config.linearity_tolerance)
    report = {"config": config.as_dict(), "environment": environment, "unit_identity": store.identity,
              "corrupt_files": store.corrupt,
              "units": {"total": len(units), "resumed": len(units) - len(todo), "ran": len(todo)},
              "wall_seconds": {"run": ran}, "phase": analysis}
    write_phase_report(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    report["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_json(report, Path(out) / "study.json")
    return report


def write_phase_report(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``study.json``, ``phase_points.csv``, ``phase_measurements.csv`` and (optionally) the PNGs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.json", out / "phase_points.csv", out / "phase_measurements.csv"]
    write_json(report, written[0])
    phase = report["phase"]
    points = [p for d in ("depth", "dim") for p in phase.get(d, {}).get("points", [])]
    rows = []
    for p in points:
        first, second = AXES[p["diagram"]]
        row = {"diagram": p["diagram"], "x1": p[first], "x2": p[second], "line_offset": p["line_offset"],
               "regime": p["regime"], "theory_regime": p["theory_regime"],
               "signs": " ".join(f"{k}{v}" for k, v in p["signs"].items())}
        for name, fit in p["exponents"].items():
            row |= {name: fit["slope"], f"{name}_ci_low": fit["ci_low"],
                    f"{name}_ci_high": fit["ci_high"], f"{name}_theory": fit["theory"]}
        rows.append(row)
    _write_csv(written[1], rows)
    measurements = [{k: v for k, v in r.items() if k != "loss_curve"}
                    for d in ("depth", "dim") for r in phase.get(d, {}).get("measurements", [])]
    _write_csv(written[2], measurements)
    if plots:
        from deepres.study.phase_plots import plot_phase

        written += plot_phase(report, out)
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(json_safe(rows))


def _summary(report: dict[str, Any]) -> str:
    lines = [f"deepres study --preset phase: {report['units']['ran']} units run, "
             f"{report['units']['resumed']} resumed, {report['wall_seconds']['total']:.1f} s"]
    for diagram, label in (("depth", "(β, γ)"), ("dim", "(δ, λ)")):
        section = report["phase"].get(diagram)
        if not section:
            continue
        quantity = {"depth": "weight_step", "dim": "preact_step"}[diagram]
        lines.append(f"  {diagram} diagram {label}: exponent of the output step, of the unit step -> regime")
        for p in section["points"]:
            first, second = (p[k] for k in AXES[diagram])
            out_fit, unit_fit = p["exponents"]["output_step"], p["exponents"][quantity]
            lines.append(f"    ({first:+.2f}, {second:+.2f})  output {_fmt(out_fit)}  unit {_fmt(unit_fit)}  "
                         f"-> {p['regime']}" + ("" if p["regime"] == p["theory_regime"]
                                                 else f"  (scaling argument: {p['theory_regime']})"))
    for check in report["phase"]["checks"]:
        lines.append(f"  [{'ok' if check['holds'] else 'NO'}] {check['check']}: {check['value']}")
    return "\n".join(lines)


def _fmt(fit: dict[str, Any]) -> str:
    if fit["slope"] is None:
        return "   n/a"
    return f"{fit['slope']:+.3f} [{fit['ci_low']:+.3f}, {fit['ci_high']:+.3f}]"


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study --preset phase`` with parsed ``args``; returns the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"deepres study: {error}", file=sys.stderr)
        return 2
    from deepres.study.cli import set_threads

    device = args.device or "cpu"
    try:
        check_backend(args.backend, check_device(device))
        check_out_folder(args.out)
    except ValueError as error:
        return print_error("deepres study", error)
    set_threads(args.threads, device)

    def phase(wait: bool) -> dict[str, Any]:
        return run_phase(config, args.out, device=device, backend=args.backend,
                         progress=not args.no_progress, plots=not args.no_plots, wait=wait)

    try:
        report = run_locked(phase, args.out, wait=args.wait, prog="deepres study")
    except OptionError as error:
        return print_error("deepres study", error)
    except KeyboardInterrupt:
        print(f"\ndeepres study: interrupted; the finished units are stored in {args.out}/units, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    print(_summary(report))
    print(f"report: {Path(args.out) / 'study.json'}")
    return 0
