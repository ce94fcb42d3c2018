"""``deepres study --preset shapes``: the joint (L, M, D) limit and its P^(−1/6) rate.

Usage (about 25 minutes on a quiet 2-core CPU; the estimate is printed first)::

    deepres study --preset shapes --out shapes-out

The study trains the reference network (the largest, L = 50, M = D = 2000, K draws
per repetition) and the networks of four sweeps (error vs D at fixed (L, M), vs M
at fixed (L, D), and along a balanced and a contrast family of shapes of growing
parameter budget P = L·M·D), measures each network's error against its
repetition's reference in embedding space and in output space, fits the bound's
constants and the P-slopes with bootstrap CIs (:mod:`deepres.study.shapes.analysis`)
and writes ``study.json`` (with a ``shapes`` section), ``shapes_measurements.csv``,
``shapes_fits.csv`` and the figures. Rerunning the same command resumes from
``OUT/units/`` (one file per unit).

The flags of ``deepres study`` that make sense here keep their meaning (``--seed``,
``--replicas``, ``--etas`` (one η), ``--steps`` (one K), ``--alphas`` (one α),
``--task``, ``--samples``, ``--activation``, ``--bootstrap``, ``--ref-ratio``,
``--dtype``, ``--device``, ``--backend``, ``--threads``, ``--executor``,
``--address``, ``--max-retries``, ``--out``, ``--wait``, ``--no-plots``,
``--no-progress``); the others are refused. The ``--shapes-*`` flags set the sweeps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from deepres.options import OptionError, check_backend, check_device, check_out_folder, print_error
from deepres.study.shapes.config import ShapesConfig, ShapesConfigError, shapes_unit_work
from deepres.study.shapes.network import STEP_IMPLS
from deepres.study.shared.files import OutputLock, run_locked
from deepres.study.shared.report import json_safe, write_json

__all__ = ["add_shapes_arguments", "config_from_args", "main", "run_shapes", "shapes_requested",
           "write_shapes_report"]

_PROG = "deepres study"


def _ints_sep(sep: str, count: int | None) -> Any:
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(sep) if v.strip()]
        except ValueError:
            values = []
        if not values or (count is not None and len(values) != count):
            what = f"{count} ints separated by {sep!r}" if count else f"ints separated by {sep!r}"
            raise argparse.ArgumentTypeError(f"expected {what}; got {text!r}")
        return values

    return parse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers; got {text!r}") from None


def _choice(text: str) -> str:
    if text not in STEP_IMPLS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STEP_IMPLS)}; got {text!r}")
    return text


#: --shapes-* flag → (ShapesConfig field, parser, help).
_SHAPES_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--shapes-repetitions": ("repetitions", int, "draws of the coupled W_E, W_U (the data stay)"),
    "--shapes-reference": ("reference", _ints_sep(":", 3), "L:M:D of the reference network"),
    "--shapes-reference-draws": ("reference_draws", int, "(u, v) draws averaged into the reference (≥ 2)"),
    "--shapes-dim-fixed": ("dim_fixed", _ints_sep(":", 2), "L:M of the sweep in D"),
    "--shapes-dims": ("dims", _ints_sep(",", None), "D values of the sweep in D"),
    "--shapes-width-fixed": ("width_fixed", _ints_sep(":", 2), "L:D of the sweep in M"),
    "--shapes-widths": ("widths", _ints_sep(",", None), "M values of the sweep in M"),
    "--shapes-scales": ("scales", _floats, "scales s of the P families"),
    "--shapes-balanced-base": ("balanced_base", _ints_sep(":", 3),
                               "L0:M0:D0 of the balanced family L = L0·s, M = M0·s³, D = D0·s²"),
    "--shapes-contrast-dim": ("contrast_dim", int, "fixed D of the contrast family"),
    "--shapes-step": ("step", _choice,
                      "gradient step: inplace or engine (deepres.residual_stack + autograd)"),
}
#: ``deepres study`` flag → (ShapesConfig field, takes one value).
_SHARED: dict[str, tuple[str, bool]] = {
    "seeds": ("seed", True), "replicas": ("replicas", False), "etas": ("eta", True), "steps": ("steps", True),
    "alphas": ("alpha", True), "task": ("task", False), "samples": ("samples", False),
    "activation": ("activation", False), "bootstrap": ("bootstrap", False), "ref_ratio": ("ref_ratio", False),
    "dtype": ("dtype", False),
}
#: Options of ``deepres study`` that the shapes study reads outside its config.
_RUNTIME = {"preset", "seed", "device", "backend", "out", "no_plots", "no_progress", "threads", "wait",
            "executor", "address", "max_retries", "handler", "command"}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_shapes_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--shapes-*`` options (used with ``--preset shapes`` only) to ``parser``."""
    group = parser.add_argument_group(
        "shapes preset", "with --preset shapes: the joint (L, M, D) limit and its P^(-1/6) rate "
                         "(see docs/study.md, 'All shapes: the joint limit')")
    defaults = ShapesConfig()
    for flag, (name, kind, text) in _SHAPES_FLAGS.items():
        default = getattr(defaults, name)
        if isinstance(default, list):
            sep = ":" if name in ("reference", "dim_fixed", "width_fixed", "balanced_base") else ","
            default = sep.join(f"{v:g}" for v in default)
        group.add_argument(flag, type=kind, default=None, help=f"{text} (default: {default})")


def shapes_requested(args: argparse.Namespace) -> bool:
    """Whether ``args`` asks for the shapes study (``--preset shapes`` or any ``--shapes-*`` flag)."""
    return args.preset == "shapes" or any(getattr(args, _dest(f), None) is not None for f in _SHAPES_FLAGS)


def _option_defaults() -> tuple[dict[str, Any], dict[str, str]]:
    from deepres.study.convergence.cli import add_arguments
    from deepres.study.phase.cli import add_phase_arguments

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--preset")
    add_arguments(parser)
    add_phase_arguments(parser)
    add_shapes_arguments(parser)
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    return {a.dest: a.default for a in parser._actions}, flags


def config_from_args(args: argparse.Namespace) -> ShapesConfig:
    """The :class:`ShapesConfig` the options ask for; ValueError names a bad or foreign option."""
    if args.preset != "shapes":
        given = next(f for f in _SHAPES_FLAGS if getattr(args, _dest(f), None) is not None)
        raise ValueError(f"argument {given}: needs --preset shapes; got --preset {args.preset}")
    defaults, flags = _option_defaults()
    own = {_dest(f) for f in _SHAPES_FLAGS}
    for dest, value in vars(args).items():
        if dest in _SHARED or dest in _RUNTIME or dest in own or dest not in defaults:
            continue
        if value != defaults[dest]:
            raise ValueError(f"argument {flags.get(dest, dest)}: is not used by --preset shapes; "
                             f"got {value!r}")
    overrides: dict[str, Any] = {}
    flag_of = {name: flag for flag, (name, _, _) in _SHAPES_FLAGS.items()}
    for dest, (name, single) in _SHARED.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        flag_of[name] = flags.get(dest, dest)
        if single:
            if not isinstance(value, list) or len(value) != 1:
                raise ValueError(f"argument {flag_of[name]}: takes one value with --preset shapes; "
                                 f"got {value!r}")
            value = value[0]
        overrides[name] = value
    if getattr(args, "seed", None) is not None:
        overrides["seed"], flag_of["seed"] = args.seed, "--seed"
    if "steps" in overrides:
        # K steps: the errors are recorded at the last step and, when it is ≥ 2, two thirds of the way.
        steps = overrides["steps"]
        overrides["record_steps"] = sorted({max(1, round(2 * steps / 3)), steps}) if steps else [0]
    for flag, (name, _, _) in _SHAPES_FLAGS.items():
        value = getattr(args, _dest(flag), None)
        if value is not None:
            overrides[name] = value
    try:
        return ShapesConfig(**overrides)
    except ShapesConfigError as error:
        raise ValueError(f"argument {flag_of.get(error.field, '--' + error.field)}: {error.detail}") from None
    except TypeError as error:
        raise ValueError(str(error)) from None


# ---------------------------------------------------------------- running

def _probe_rate(config: ShapesConfig, device: str, backend: str) -> tuple[float, float]:
    """Multiply-adds per second of this machine, timed on one mid-size probe unit (not stored)."""
    from deepres.study.shapes.measure import run_shapes_unit

    shape = (min(50, config.reference[0]), min(512, config.reference[1]), min(512, config.reference[2]))
    probe = config.point_unit(-1, shape) | {"replicas": 1}
    start = time.perf_counter()
    run_shapes_unit(probe, device=device, backend=backend)
    seconds = time.perf_counter() - start
    return shapes_unit_work(probe) / seconds, seconds


def _format_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run_shapes(config: ShapesConfig, out: str | Path, *, device: str = "cpu", backend: str = "auto",
               progress: bool = True, plots: bool = True, executor: Any = None, estimate: bool = True,
               wait: bool = False) -> dict[str, Any]:
    """Run (or resume) the shapes study, analyze it and write its report to ``out``.

    Args:
        config: the study. out: output directory (locked for the run).
        device: Default ``"cpu"``. backend: stack backend (``step="engine"``). Default ``"auto"``.
            Both are part of every unit's key.
        progress: tqdm bar weighted by each unit's work. Default True. plots: write PNGs. Default True.
        executor: where the units run (:class:`deepres.study.sweep.LocalExecutor` by default, or a
            :class:`deepres.study.ray_executor.RayExecutor`).
        estimate: time a probe and print the predicted time first. Default True.
        wait: wait for another study holding ``out``'s lock. Default False: raise
            :class:`~deepres.study.files.FolderLockedError`.

    Returns:
        The report written to ``out/study.json``: ``config``, ``environment``, ``units``,
        ``estimate``, ``wall_seconds`` and ``shapes`` (:func:`~deepres.study.shapes.analysis.analyze_shapes`);
        ``failed_units`` (and no analysis) when an executor gave up on units.
    """
    with OutputLock(out).held(wait=wait):
        return _run_locked(config, out, device=device, backend=backend, progress=progress, plots=plots,
                           executor=executor, estimate=estimate)


def _run_locked(config: ShapesConfig, out: str | Path, *, device: str, backend: str, progress: bool,
                plots: bool, executor: Any, estimate: bool) -> dict[str, Any]:
    from deepres.study.shapes.analysis import analyze_shapes
    from deepres.study.shapes.measure import run_shapes_unit
    from deepres.study.shared.environment import study_environment
    from deepres.study.shared.store import ResultStore, unit_key
    from deepres.study.shared.sweep import LocalExecutor

    start = time.perf_counter()
    environment = study_environment(device) | {"executor": type(executor or LocalExecutor()).__name__}
    store = ResultStore(out, device=device, backend=backend)
    units = config.units()
    todo = sorted((u for u in units if not store.has(u)), key=shapes_unit_work)
    predicted = None
    if estimate and todo:
        rate, probe_seconds = _probe_rate(config, device, backend)
        seconds = sum(shapes_unit_work(u) for u in todo) / rate
        references = sum(shapes_unit_work(u) for u in todo if u["kind"] == "shapes_ref") / rate
        predicted = {"seconds": seconds, "reference_seconds": references, "rate_madds_per_s": rate,
                     "probe_seconds": probe_seconds}
        print(f"{_PROG} --preset shapes: {len(todo)} units to run ({len(units) - len(todo)} resumed), "
              f"estimated {_format_seconds(seconds)} on this machine with one worker "
              f"({_format_seconds(references)} of it the reference draws; {rate / 1e9:.1f}·10⁹ "
              f"multiply-adds/s timed on a {probe_seconds:.1f} s probe)", file=sys.stderr, flush=True)
    counts = {"total": len(units), "resumed": len(units) - len(todo), "ran": 0, "failed": 0}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(shapes_unit_work(u) for u in todo) / 1e9, desc="shapes", unit="Gmadd",
                   bar_format="{l_bar}{bar}| {percentage:3.0f}% [{elapsed}<{remaining}] {postfix}")
        bar.set_postfix_str(f"{counts['resumed']} units resumed, {len(todo)} to run")

    def done(unit: dict[str, Any], result: dict[str, Any]) -> None:
        store.save(unit, result)
        counts["ran"] += 1
        if bar is not None:
            bar.update(shapes_unit_work(unit) / 1e9)
            bar.set_postfix_str(f"{unit['kind'][7:]} L{unit['depth']} M{unit['hidden']} D{unit['dim']} "
                                f"{result['seconds']:.1f}s")

    def failed(unit: dict[str, Any], message: str) -> None:
        store.save_failure(unit, message)
        counts["failed"] += 1
        if bar is not None:
            bar.update(shapes_unit_work(unit) / 1e9)
            bar.set_postfix_str(f"{unit_key(unit)[:14]} FAILED")

    def work(unit: dict[str, Any]) -> dict[str, Any]:
        return run_shapes_unit(unit, device=device, backend=backend)

    ran_from = time.perf_counter()
    try:
        (executor or LocalExecutor()).run(work, todo, done, failed)
    finally:
        if bar is not None:
            bar.close()
    ran = time.perf_counter() - ran_from
    report: dict[str, Any] = {"config": config.as_dict(), "environment": environment,
                              "unit_identity": store.identity, "corrupt_files": store.corrupt,
                              "units": counts, "wall_seconds": {"run": ran}}
    if predicted is not None:
        report["estimate"] = predicted | {"measured_seconds": ran}
    else:
        # Everything was read back: keep the estimate and the wall time of the run that computed the units.
        previous = _previous(Path(out) / "study.json")
        if previous.get("estimate") is not None:
            report["estimate"] = previous["estimate"] | {"from_an_earlier_run": True}
        if previous.get("wall_seconds") is not None:
            report["wall_seconds"]["earlier_run"] = previous["wall_seconds"].get("earlier_run",
                                                                                previous["wall_seconds"])
    if counts["failed"]:
        report["failed_units"] = store.failures()
        write_json(report, Path(out) / "study.json")
        return report
    report["shapes"] = analyze_shapes(config, ((u, store.load(u)) for u in units))
    write_shapes_report(report, out, plots=plots)
    report["wall_seconds"]["total"] = time.perf_counter() - start
    report["environment"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    write_json(report, Path(out) / "study.json")
    return report


def _previous(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def write_shapes_report(report: dict[str, Any], out: str | Path, *, plots: bool = True) -> list[Path]:
    """Write ``study.json``, ``shapes_measurements.csv``, ``shapes_fits.csv`` and (optionally) the PNGs."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "study.json", out / "shapes_measurements.csv", out / "shapes_fits.csv"]
    write_json(report, written[0])
    shapes = report["shapes"]
    _write_csv(written[1], shapes["measurements"])
    rows = []
    for step, fits in shapes["fits_by_step"].items():
        for name, fit in fits.items():
            variants = [(name, fit)] + ([(f"{name}_linear", fit["linear"])] if "linear" in fit else [])
            for label, f in variants:
                rows.append({"step": step, "fit": label, "a": f.get("a"), "b": f.get("b"),
                             "ci_a": json.dumps(json_safe(f.get("ci_a"))),
                             "ci_b": json.dumps(json_safe(f.get("ci_b"))), "slope": f.get("slope"),
                             "ci": json.dumps(json_safe(f.get("ci"))),
                             "rms_log_residual": f.get("rms_log_residual"), "points": f.get("points"),
                             "excluded": len(f.get("excluded", []))})
    _write_csv(written[2], rows)
    if plots:
        from deepres.study.shapes.plots import plot_shapes

        written += plot_shapes(report, out)
    return written


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(json_safe(rows))


def _ci(values: list[float] | None) -> str:
    return "" if values is None else f" [{values[0]:.3g}, {values[1]:.3g}]"


def summary(report: dict[str, Any]) -> str:
    """The console summary: units, time, fitted constants, P-slopes against −1/6."""
    fits = report["shapes"]["fits"]
    lines = [f"{_PROG} --preset shapes: {report['units']['ran']} units run, {report['units']['resumed']} "
             f"resumed, {report['wall_seconds']['total']:.0f} s"]
    for space in ("embedding", "output"):
        f = fits[space]
        if f["a"] is None:
            lines.append(f"  {space}: too few points pass the reference rule to fit ({f['points']})")
            continue
        lines.append(f"  {space}: err ≈ √((a·√(D/(L·M)))² + (b/√D)²), a = {f['a']:.3g}{_ci(f['ci_a'])}, "
                     f"b = {f['b']:.3g}{_ci(f['ci_b'])} ({f['points']} points, "
                     f"{len(f['excluded'])} excluded); the reference's own D bias b/√D_ref = "
                     f"{f['reference_dim_bias']:.3g}")
    out = fits["output"]
    if out.get("better_form"):
        lin = out["linear"]
        lines.append(f"  output, D/(L·M) term linear: a = {lin['a']:.3g}{_ci(lin['ci_a'])}, "
                     f"b = {lin['b']:.3g}"
                     f"{_ci(lin['ci_b'])}; the {out['better_form']} form fits better (RMS log residual "
                     f"{out['rms_log_residual']:.3g} under the square root, {lin['rms_log_residual']:.3g} "
                     f"linear: ×{out['residual_ratio']:.2f})")
    for name in ("embedding_vs_P", "output_vs_P", "embedding_vs_P_contrast", "output_vs_P_contrast"):
        f = fits.get(name)
        if not f:
            continue
        if f["slope"] is None:
            lines.append(f"  {name}: too few points pass the reference rule ({f['points']})")
            continue
        verdict = ("agrees with -1/6" if f["agrees"] else "does not agree with -1/6") \
            if f["agrees"] is not None else "no CI"
        lines.append(f"  {name}: slope {f['slope']:+.3f}{_ci(f['ci'])} over {f['points']} points "
                     f"({len(f['excluded'])} excluded): {verdict}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """Run ``deepres study --preset shapes`` with parsed ``args``; returns the exit status."""
    from deepres.study.convergence.cli import executor_from_args
    from deepres.study.shared.environment import set_threads
    from deepres.study.shared.store import CorruptResultWarning

    try:
        config = config_from_args(args)
        if args.executor == "local" and args.address is not None:
            raise OptionError("--address", args.address, "needs --executor ray")
        if args.executor == "local":
            check_backend(args.backend, check_device(args.device or "cpu"))
        elif args.device is not None:
            check_device(args.device, here=False)
        check_out_folder(args.out)
        executor = executor_from_args(args)
    except (ImportError, ValueError) as error:
        return print_error(_PROG, error)
    device = args.device or ("cuda" if getattr(executor, "has_gpus", False) else "cpu")
    set_threads(args.threads, device)

    def shapes(wait: bool) -> dict[str, Any]:
        return run_shapes(config, args.out, device=device, backend=args.backend,
                          progress=not args.no_progress,
                          plots=not args.no_plots, executor=executor, wait=wait)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CorruptResultWarning)
            report = run_locked(shapes, args.out, wait=args.wait, prog=_PROG)
    except OptionError as error:
        return print_error(_PROG, error)
    except KeyboardInterrupt:
        print(f"\n{_PROG}: interrupted; the finished units are stored in {args.out}/units, "
              "rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        close = getattr(executor, "close", None)
        if close is not None:
            close()
    if report["units"]["failed"]:
        for failure in report["failed_units"]:
            print(f"{_PROG}: unit {failure['unit']['kind']} failed: {failure['error']}", file=sys.stderr)
        print(f"{_PROG}: {report['units']['failed']} unit(s) failed; rerun the same command to retry them",
              file=sys.stderr)
        return 1
    print(summary(report))
    print(f"report: {Path(args.out) / 'study.json'}")
    return 0
