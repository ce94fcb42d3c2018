"""``deepres bench``: throughput and memory of every provider, side by side, in one run.

The ``deepres`` console script adds this as its ``bench`` subcommand through
:func:`configure_parser` and :func:`main`; ``python -m deepres.benchmark`` runs
it on its own. Every option is checked before any measurement starts; a bad
one ends the command with one line on stderr that names the option and the
value, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from collections.abc import Callable

import torch

from deepres.activations import ACTIVATIONS
from deepres.benchmark.case import DTYPES, MODES, WORKLOADS, Case
from deepres.benchmark.config import ISOLATIONS, BenchConfig
from deepres.benchmark.harness import run_benchmark
from deepres.benchmark.presets import DEFAULTS, GENERAL, PRESETS, QUICK, QUICK_EXCLUDED, QUICK_TIMING
from deepres.benchmark.providers import meanode_providers, stack_providers
from deepres.benchmark.report import format_table, write_csv, write_json, write_plot
from deepres.benchmark.timing import TimingOptions
from deepres.options import (
    MAX_INT,
    OptionError,
    check_out_file,
    one_line_errors,
    print_error,
    threads_option,
    typed,
)

__all__ = ["COMPILE_BACKENDS", "PRESETS", "OptionError", "build_config", "check_options", "configure_parser",
           "main", "resolve"]

#: ``torch.compile`` backends ``--compile-backend`` accepts.
COMPILE_BACKENDS: tuple[str, ...] = ("inductor", "aot_eager", "eager")

# Option names on the command line, for the keys of the resolved options.
_FLAGS: dict[str, str] = {
    "workload": "--workload", "mode": "--mode", "device": "--device", "dtype": "--dtype",
    "depths": "--depths", "batch": "--batch", "dims": "--dims", "hidden": "--hidden",
    "replicas": "--replicas", "activation": "--activation", "checkpoint_every": "--checkpoint-every",
    "providers": "--providers", "alpha": "--alpha", "seed": "--seed", "warmup": "--warmup",
    "min_repeats": "--min-repeats", "max_repeats": "--repeats", "min_time": "--min-time",
    "max_time": "--max-time", "isolation": "--isolation", "provider_timeout": "--provider-timeout",
    "threads": "--threads", "interleave": "--no-interleave", "compile_backend": "--compile-backend",
}


def _int_at_least(low: int) -> Callable[[str], int | None]:
    return lambda text: value if low <= (value := int(text)) <= MAX_INT else None


def _float_where(ok: Callable[[float], bool]) -> Callable[[str], float | None]:
    return lambda text: value if math.isfinite(value := float(text)) and ok(value) else None


def _list(item: Callable[[str], object]) -> Callable[[str], list[object] | None]:
    def parse(text: str) -> list[object] | None:
        values = [item(part.strip()) for part in text.split(",") if part.strip()]
        return values if values and all(v is not None for v in values) else None

    return parse


#: Command-line spelling of a checkpoint policy → its ``checkpoint_every`` value. ``every-layer`` is
#: the default policy, h kept before every layer (k = 1, ``None``); it was once spelled ``none``,
#: which read as "no checkpointing" and is refused now.
CHECKPOINT_SPELLINGS: dict[str, str | None] = {"every-layer": None, "sqrt": "sqrt"}


def _policy(text: str) -> int | str | bool | None:
    text = text.lower()
    if text in CHECKPOINT_SPELLINGS:
        return CHECKPOINT_SPELLINGS[text]
    return int(text) if text.isdigit() and int(text) >= 1 else False


def _policies(text: str) -> list[int | str | None] | None:
    values = [_policy(part.strip()) for part in text.split(",") if part.strip()]
    return values if values and all(v is not False for v in values) else None


_POSITIVE_INTS = typed(_list(_int_at_least(1)), "comma-separated positive integers")
_COUNT = typed(_int_at_least(0), "an integer >= 0")
_POSITIVE_INT = typed(_int_at_least(1), "an integer >= 1")
_POSITIVE = typed(_float_where(lambda x: x > 0), "a finite number > 0")
_NON_NEGATIVE = typed(_float_where(lambda x: x >= 0), "a finite number >= 0")
_ACTIVATION_LIST = typed(_list(lambda name: name if name in ACTIVATIONS else None),
                         f"comma-separated activations among {', '.join(ACTIVATIONS)}")
_POLICY_LIST = typed(_policies, "comma-separated checkpoint policies: every-layer, sqrt or positive "
                                "integers (every-layer keeps h before every layer, k = 1; once spelled "
                                "none)")
_NAMES = typed(_list(lambda name: name), "comma-separated provider names")


# ------------------------------------------------------------------------------------ parser


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``deepres bench`` to ``parser``.

    Args:
        parser: the (sub)parser to fill; :func:`main` takes its parsed namespace. Its
            errors, unknown options included, become one line
            (``PROG: error: argument --X: ...``), exit status 2.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> configure_parser(p)
        >>> p.parse_args(["--quick"]).quick
        True
    """
    one_line_errors(parser)
    stack_names = ", ".join(p.name for p in stack_providers([None, "sqrt"]))
    meanode_names = ", ".join(p.name for p in meanode_providers())
    parser.description = (
        "Measure time and memory of every way to run a deep residual stack (or the MeanODE limit) on the "
        "same inputs, in one run: deepres engines against the eager nn.ModuleList a user would write, "
        "torch.utils.checkpoint, torch.compile (of one block, and of the deepres module), looped "
        "replicas, torchdiffeq. Reports median and 10/90 % quantiles after warm-up, samples/s, "
        "layer-updates/s, speedup and memory ratios to the baseline (eager, or autograd-rk4 for "
        "meanode), peak memory of one step, the bytes saved for backward, the agreement of outputs and "
        "gradients, the compile time of the first step for the compiling providers, growth exponents "
        "in L, and on CUDA achieved TFLOP/s and GB/s against measured ceilings. Providers that cannot "
        "run here are listed with the reason.")
    parser.epilog = (
        f"stack providers: {stack_names} (deepres-torch-k<k> for integer --checkpoint-every k). "
        f"meanode providers: {meanode_names}. Presets: "
        + "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items())
        + ". Memory on the CPU: each provider runs in its own process and reports its peak resident "
        "memory during one step above the resident memory just before it; on CUDA, "
        "torch.cuda.max_memory_allocated above the allocation before the step. See bench/README.md.")
    what = parser.add_argument_group("what to run")
    what.add_argument("--preset", choices=sorted(PRESETS), default=None,
                      help="a named measurement (see below); explicit options override its values")
    what.add_argument("--quick", action="store_true",
                      help="a small grid and short repeats, the torch.compile providers left out: about "
                           "one minute on an idle 2-core CPU")
    what.add_argument("--workload", choices=WORKLOADS, default=None,
                      help="stack: the residual stack h <- h + c*sum_j v_j sigma(a*u_j.h); meanode: the "
                           "Neural Mean ODE with rk4 (default stack)")
    what.add_argument("--mode", choices=MODES, default=None,
                      help="forward: inference under no_grad; train: forward + backward of "
                           "loss = sum(probe * output) (default train)")
    what.add_argument("--providers", type=_NAMES, default=None,
                      help="comma-separated provider names to run (default: all of the workload)")
    where = parser.add_argument_group("device and numbers")
    where.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cpu")
    where.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default float32")
    grid = parser.add_argument_group("grid (comma-separated lists; every combination is a case)")
    grid.add_argument("--depths", type=_POSITIVE_INTS, default=None,
                      help="depths L (meanode: rk4 steps N); default 256,1024 "
                           "(meanode 16,64; --quick 64,256)")
    grid.add_argument("--batch", type=_POSITIVE_INTS, default=None,
                      help="batch sizes B (meanode: samples); default 64 (meanode 10; --quick 32)")
    grid.add_argument("--dims", type=_POSITIVE_INTS, default=None,
                      help="widths D of the stream; default 16 (meanode 8)")
    grid.add_argument("--hidden", type=_POSITIVE_INTS, default=None,
                      help="units per block M (meanode: particles K); default 64 (meanode 4096; --quick 32)")
    grid.add_argument("--replicas", type=_POSITIVE_INTS, default=None,
                      help="replicas R: R independent networks; deepres runs them in one launch, the "
                           "eager/compile providers loop over R models (stack only; default 1)")
    grid.add_argument("--activation", type=_ACTIVATION_LIST, default=None,
                      help=f"activations among {', '.join(ACTIVATIONS)} (default tanh)")
    grid.add_argument("--checkpoint-every", dest="checkpoint_every", type=_POLICY_LIST, default=None,
                      help="checkpoint policies of the deepres engines: every-layer (h kept before every "
                           "layer, k = 1), sqrt (k = ceil(sqrt(L))), or an integer k; each is a provider "
                           "(default every-layer,sqrt)")
    grid.add_argument("--alpha", type=_POSITIVE, default=None,
                      help="alpha of the mlu parameterization, > 0 (default 1)")
    grid.add_argument("--seed", type=_COUNT, default=None, help="seed of the inputs, >= 0 (default 0)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=_COUNT, default=None, help="untimed steps first (default 1)")
    timing.add_argument("--min-repeats", dest="min_repeats", type=_POSITIVE_INT, default=None,
                        help="timed steps at least (default 3; --quick 2)")
    timing.add_argument("--repeats", dest="max_repeats", type=_POSITIVE_INT, default=None,
                        help="timed steps at most, >= --min-repeats (default 20; --quick 5)")
    timing.add_argument("--min-time", dest="min_time", type=_NON_NEGATIVE, default=None,
                        help="repeat until this many seconds are timed (default 1.0; --quick 0.1)")
    timing.add_argument("--max-time", dest="max_time", type=_POSITIVE, default=None,
                        help="stop repeating after this many seconds (default 30; --quick 2)")
    timing.add_argument("--isolation", choices=ISOLATIONS, default=None,
                        help="auto: one process per provider on CPU (peak RSS), in-process on CUDA")
    timing.add_argument("--no-interleave", dest="interleave", action="store_const", const=False, default=None,
                        help="time each provider alone right after its memory step, instead of all "
                             "providers of a case together in shuffled rounds (the default, which "
                             "exposes all providers to the same load on a shared machine)")
    timing.add_argument("--threads", type=threads_option(), default=None,
                        help="torch.set_num_threads for every provider (default: PyTorch's, one per core)")
    timing.add_argument("--provider-timeout", dest="provider_timeout", type=_POSITIVE, default=None,
                        help="seconds one provider's process may take for the whole grid (default 1800)")
    timing.add_argument("--compile-backend", dest="compile_backend", choices=COMPILE_BACKENDS, default=None,
                        help="torch.compile backend of the compile and deepres-compiled providers; eager "
                             "and aot_eager trace without generating code (default inductor)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    out.add_argument("--csv", default=None, metavar="PATH", help="write one row per provider and case")
    out.add_argument("--plot", default=None, metavar="PATH",
                     help="write log-log PNG plots of time and memory vs L (needs matplotlib)")


# ------------------------------------------------------------------------ resolve and check


def resolve(args: argparse.Namespace) -> dict[str, object]:
    """Merge command-line options over the preset, ``--quick`` and workload defaults.

    Returns:
        Every option's value (keys of the general defaults), plus ``"excluded"``
        (provider → why ``--quick`` leaves it out) and ``"from_preset"`` (the keys
        whose value the preset set).
    """
    preset = PRESETS[args.preset].values if getattr(args, "preset", None) else {}
    explicit = {k: v for k, v in vars(args).items() if v is not None and k in _FLAGS}
    workload = explicit.get("workload", preset.get("workload", "stack"))
    quick = bool(getattr(args, "quick", False))
    merged: dict[str, object] = {**GENERAL, **DEFAULTS[str(workload)]}
    if quick:
        merged.update(QUICK[str(workload)])
        merged.update(QUICK_TIMING)
    merged.update(preset)
    merged.update(explicit)
    merged["workload"] = workload
    merged["from_preset"] = sorted(set(preset) - set(explicit))
    merged["excluded"] = dict(QUICK_EXCLUDED) if quick and merged["providers"] is None else {}
    return merged


def _writable(option: str, path: str | None) -> None:
    if path is not None:
        check_out_file(path, option)


def check_options(options: dict[str, object], args: argparse.Namespace) -> None:
    """Check the resolved options together, before any work: raise :class:`OptionError`.

    Checks what no single option's parser can: values a preset set, the repeat
    bounds together, replicas of the meanode workload, CUDA where ``--device cuda``,
    the provider names of the workload, and that the output files can be written
    (and plotted: matplotlib).
    """

    def flag(key: str) -> str:
        preset = f" (from --preset {args.preset})" if key in options["from_preset"] else ""  # type: ignore[operator]
        return _FLAGS[key] + preset

    if options["min_repeats"] > options["max_repeats"]:  # type: ignore[operator]
        raise OptionError(flag("max_repeats"), options["max_repeats"],
                          f"must be >= --min-repeats {options['min_repeats']}")
    if options["workload"] == "meanode" and options["replicas"] != [1]:
        raise OptionError(flag("replicas"), options["replicas"],
                          "the meanode workload has no replica axis: use 1")
    if options["device"] == "cuda" and not torch.cuda.is_available():
        raise OptionError(flag("device"), "cuda", "CUDA is not available on this machine "
                                                  "(torch.cuda.is_available() is False)")
    if options["providers"] is not None:
        names = [p.name for p in (stack_providers(options["checkpoint_every"])  # type: ignore[arg-type]
                                  if options["workload"] == "stack" else meanode_providers())]
        unknown = [n for n in options["providers"] if n not in names]  # type: ignore[union-attr]
        if unknown:
            raise OptionError(flag("providers"), ",".join(unknown),
                              f"not a provider of the {options['workload']} workload with these "
                              f"--checkpoint-every policies; choose from {', '.join(names)}")
    for option in ("json", "csv", "plot"):
        _writable(f"--{option}", getattr(args, option, None))
    if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
        raise OptionError("--plot", args.plot, "needs matplotlib (pip install 'deepres[plot]')")


def build_config(options: dict[str, object]) -> BenchConfig:
    """The :class:`BenchConfig` of resolved options (see :func:`resolve`)."""
    cases = [
        Case(workload=options["workload"], mode=options["mode"], depth=depth, batch=batch, dim=dim,
             hidden=hidden, replicas=replicas, activation=activation, dtype=options["dtype"],
             device=options["device"], alpha=float(options["alpha"]), seed=int(options["seed"]))
        for activation in options["activation"]
        for replicas in options["replicas"]
        for dim in options["dims"]
        for hidden in options["hidden"]
        for batch in options["batch"]
        for depth in options["depths"]
    ]
    timing = TimingOptions(warmup=options["warmup"], min_repeats=options["min_repeats"],
                           max_repeats=options["max_repeats"], min_time=options["min_time"],
                           max_time=options["max_time"])
    return BenchConfig(cases, providers=options["providers"],
                       checkpoint_policies=list(options["checkpoint_every"]),
                       timing=timing, isolation=options["isolation"],
                       provider_timeout=float(options["provider_timeout"]), threads=options["threads"],
                       interleave=bool(options["interleave"]), excluded=dict(options.get("excluded", {})),
                       compile_backend=str(options["compile_backend"]))


def _command_line() -> list[str]:
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        return [sys.executable, "-m", "deepres.benchmark", *argv[1:]]
    return [sys.executable, *argv]


def main(args: argparse.Namespace) -> int:
    """Run ``deepres bench`` with parsed options; print the table, write the requested files.

    Args:
        args: the namespace of a parser filled by :func:`configure_parser`.

    Returns:
        0 on success, 2 on invalid options (one line on stderr, nothing measured).
    """
    try:
        options = resolve(args)
        check_options(options, args)
        config = build_config(options)
    except (ValueError, TypeError) as error:  # OptionError, or a value no check above foresaw
        return print_error("deepres bench", error)
    report = run_benchmark(config, argv=_command_line(), quick=bool(getattr(args, "quick", False)))
    report["config"]["preset"] = getattr(args, "preset", None)
    report["config"]["quick"] = bool(getattr(args, "quick", False))
    print(format_table(report))
    for option, write in (("json", write_json), ("csv", write_csv), ("plot", write_plot)):
        path = getattr(args, option, None)
        if path:
            write(report, path)
            print(f"wrote {path}")
    return 0
