"""``deepres bench``: throughput and memory of every provider, side by side, in one run.

The ``deepres`` console script adds this as its ``bench`` subcommand through
:func:`configure_parser` and :func:`main`; ``python -m deepres.benchmark`` runs
it on its own.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from deepres.activations import ACTIVATIONS
from deepres.benchmark.harness import BenchConfig, run_benchmark
from deepres.benchmark.providers import DTYPES, MODES, WORKLOADS, Case, meanode_providers, stack_providers
from deepres.benchmark.report import format_table, write_csv, write_json, write_plot
from deepres.benchmark.timing import TimingOptions

__all__ = ["PRESETS", "configure_parser", "main"]


@dataclass(frozen=True)
class Preset:
    """Defaults of a named measurement; options given on the command line override them."""

    description: str
    values: dict[str, object] = field(default_factory=dict)


#: Named measurements (``--preset NAME``).
PRESETS: dict[str, Preset] = {
    "issue2": Preset(
        "engine vs plain reference, training step, L=2048 B=256 D=32 M=128",
        {"workload": "stack", "mode": "train", "depths": [2048], "batch": [256], "dims": [32],
         "hidden": [128], "providers": ["eager", "reference", "deepres-torch", "deepres-torch-sqrt"]}),
    "issue2-overhead": Preset(
        "the same where per-layer overhead dominates: L=2048 B=64 D=M=16",
        {"workload": "stack", "mode": "train", "depths": [2048], "batch": [64], "dims": [16],
         "hidden": [16], "providers": ["eager", "reference", "deepres-torch", "deepres-torch-sqrt"]}),
    "issue6": Preset(
        "every provider, training step, L=4096 B=64 D=16 M=64",
        {"workload": "stack", "mode": "train", "depths": [4096], "batch": [64], "dims": [16],
         "hidden": [64]}),
    "growth": Preset(
        "growth in L of time and memory, L=512..4096 B=64 D=16 M=64",
        {"workload": "stack", "mode": "train", "depths": [512, 1024, 2048, 4096], "batch": [64],
         "dims": [16], "hidden": [64],
         "providers": ["eager", "reference", "deepres-torch", "deepres-torch-sqrt", "eager-checkpoint"]}),
    "replicas": Preset(
        "one replica launch of R=32 networks vs 32 looped models, L=1024 B=64 D=16 M=64",
        {"workload": "stack", "mode": "train", "depths": [1024], "batch": [64], "dims": [16], "hidden": [64],
         "replicas": [32], "checkpoint_every": [None],
         "providers": ["eager", "deepres-torch", "deepres-torch-loop"]}),
    "meanode": Preset(
        "MeanODE forward+gradient: K=16384 particles, D=8, 10 samples, 64 rk4 steps",
        {"workload": "meanode", "mode": "train", "depths": [64], "batch": [10], "dims": [8],
         "hidden": [16384]}),
    "gpu": Preset(
        "CUDA check of the Triton engine against the PyTorch engine and the eager module",
        {"workload": "stack", "mode": "train", "device": "cuda", "depths": [1024, 4096], "batch": [256],
         "dims": [64], "hidden": [64],
         "providers": ["eager", "deepres-torch", "deepres-torch-sqrt", "deepres-triton",
                       "deepres-triton-sqrt",
                       "compile", "compile-reduce-overhead"]}),
}

_DEFAULTS: dict[str, dict[str, object]] = {
    "stack": {"depths": [256, 1024], "batch": [64], "dims": [16], "hidden": [64]},
    "meanode": {"depths": [16, 64], "batch": [10], "dims": [8], "hidden": [4096]},
}
_QUICK: dict[str, dict[str, object]] = {
    "stack": {"depths": [64, 256], "batch": [32], "dims": [16], "hidden": [32]},
    "meanode": {"depths": [8, 16], "batch": [10], "dims": [8], "hidden": [1024]},
}
_GENERAL: dict[str, object] = {
    "workload": "stack", "mode": "train", "device": "cpu", "dtype": "float32", "replicas": [1],
    "activation": ["tanh"], "checkpoint_every": [None, "sqrt"], "providers": None, "alpha": 1.0, "seed": 0,
    "warmup": 1, "min_repeats": 3, "max_repeats": 20, "min_time": 1.0, "max_time": 30.0,
    "isolation": "auto", "provider_timeout": 1800.0, "threads": None, "interleave": True,
}
_QUICK_TIMING: dict[str, object] = {"min_repeats": 2, "max_repeats": 5, "min_time": 0.1, "max_time": 2.0}


def _ints(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _policies(text: str) -> list[int | str | None]:
    out: list[int | str | None] = []
    for item in (s.strip().lower() for s in text.split(",") if s.strip()):
        if item == "none":
            out.append(None)
        elif item == "sqrt":
            out.append("sqrt")
        elif item.isdigit() and int(item) >= 1:
            out.append(int(item))
        else:
            raise argparse.ArgumentTypeError(
                f"checkpoint policies are 'none', 'sqrt' or positive integers, comma-separated; got {item!r}")
    if not out:
        raise argparse.ArgumentTypeError("expected at least one checkpoint policy")
    return out


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _activations(text: str) -> list[str]:
    names = _names(text)
    bad = [n for n in names if n not in ACTIVATIONS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"activations must be among {ACTIVATIONS}; got {text!r}")
    return names


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``deepres bench`` to ``parser``.

    Args:
        parser: the (sub)parser to fill; :func:`main` takes its parsed namespace.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> configure_parser(p)
        >>> p.parse_args(["--quick"]).quick
        True
    """
    stack_names = ", ".join(p.name for p in stack_providers([None, "sqrt"]))
    meanode_names = ", ".join(p.name for p in meanode_providers())
    parser.description = (
        "Measure time and memory of every way to run a deep residual stack (or the MeanODE limit) on the "
        "same inputs, in one run: deepres engines against the eager nn.ModuleList a user would write, "
        "torch.utils.checkpoint, torch.compile, looped replicas, torchdiffeq. Reports median and "
        "10/90 % quantiles after warm-up, samples/s, layer-updates/s, speedup and memory ratios to the "
        "baseline (eager, or autograd-rk4 for meanode), peak memory of one step, the bytes saved for "
        "backward, the agreement of outputs and gradients, growth exponents in L, and on CUDA achieved "
        "TFLOP/s and GB/s against measured ceilings. Providers that cannot run here are listed with "
        "the reason.")
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
                      help="a small grid and short repeats, torch.compile left out: about one minute "
                           "on an idle 2-core CPU")
    what.add_argument("--workload", choices=WORKLOADS, default=None,
                      help="stack: the residual stack of eq. (1); meanode: the Neural Mean ODE with rk4 "
                           "(default stack)")
    what.add_argument("--mode", choices=MODES, default=None,
                      help="forward: inference under no_grad; train: forward + backward of "
                           "loss = sum(probe * output) (default train)")
    what.add_argument("--providers", type=_names, default=None,
                      help="comma-separated provider names to run (default: all of the workload)")
    where = parser.add_argument_group("device and numbers")
    where.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default cpu")
    where.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default float32")
    grid = parser.add_argument_group("grid (comma-separated lists; every combination is a case)")
    grid.add_argument("--depths", type=_ints, default=None,
                      help="depths L (meanode: rk4 steps N); default 256,1024 "
                           "(meanode 16,64; --quick 64,256)")
    grid.add_argument("--batch", type=_ints, default=None,
                      help="batch sizes B (meanode: samples); default 64 (meanode 10; --quick 32)")
    grid.add_argument("--dims", type=_ints, default=None,
                      help="widths D of the stream; default 16 (meanode 8)")
    grid.add_argument("--hidden", type=_ints, default=None,
                      help="units per block M (meanode: particles K); default 64 (meanode 4096; --quick 32)")
    grid.add_argument("--replicas", type=_ints, default=None,
                      help="replicas R: R independent networks; deepres runs them in one launch, the "
                           "eager/compile providers loop over R models (default 1)")
    grid.add_argument("--activation", type=_activations, default=None,
                      help=f"activations among {', '.join(ACTIVATIONS)} (default tanh)")
    grid.add_argument("--checkpoint-every", dest="checkpoint_every", type=_policies, default=None,
                      help="checkpoint policies of the deepres engines: none, sqrt, or an integer k; each "
                           "is a provider (default none,sqrt)")
    grid.add_argument("--alpha", type=float, default=None,
                      help="alpha of the mlu parameterization (default 1)")
    grid.add_argument("--seed", type=int, default=None, help="seed of the inputs (default 0)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 1)")
    timing.add_argument("--min-repeats", dest="min_repeats", type=int, default=None,
                        help="timed steps at least (default 3; --quick 2)")
    timing.add_argument("--repeats", dest="max_repeats", type=int, default=None,
                        help="timed steps at most (default 20; --quick 5)")
    timing.add_argument("--min-time", dest="min_time", type=float, default=None,
                        help="repeat until this many seconds are timed (default 1.0; --quick 0.1)")
    timing.add_argument("--max-time", dest="max_time", type=float, default=None,
                        help="stop repeating after this many seconds (default 30; --quick 2)")
    timing.add_argument("--isolation", choices=("auto", "subprocess", "inprocess"), default=None,
                        help="auto: one process per provider on CPU (peak RSS), in-process on CUDA")
    timing.add_argument("--no-interleave", dest="interleave", action="store_const", const=False, default=None,
                        help="time each provider alone right after its memory step, instead of all "
                             "providers of a case together in shuffled rounds (the default, which "
                             "exposes all providers to the same load on a shared machine)")
    timing.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every provider (default: PyTorch's, one per core)")
    timing.add_argument("--provider-timeout", dest="provider_timeout", type=float, default=None,
                        help="seconds one provider's process may take for the whole grid (default 1800)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", default=None, metavar="PATH", help="write the full report as JSON")
    out.add_argument("--csv", default=None, metavar="PATH", help="write one row per provider and case")
    out.add_argument("--plot", default=None, metavar="PATH",
                     help="write log-log PNG plots of time and memory vs L (needs matplotlib)")


def resolve(args: argparse.Namespace) -> dict[str, object]:
    """Merge command-line options over the preset, ``--quick`` and workload defaults."""
    preset = PRESETS[args.preset].values if getattr(args, "preset", None) else {}
    explicit = {k: v for k, v in vars(args).items() if v is not None and k in
                ("workload", "mode", "device", "dtype", "depths", "batch", "dims", "hidden", "replicas",
                 "activation", "checkpoint_every", "providers", "alpha", "seed", "warmup", "min_repeats",
                 "max_repeats", "min_time", "max_time", "isolation", "provider_timeout", "threads",
                 "interleave")}
    workload = explicit.get("workload", preset.get("workload", "stack"))
    quick = bool(getattr(args, "quick", False))
    merged: dict[str, object] = {**_GENERAL, **_DEFAULTS[str(workload)]}
    if quick:
        merged.update(_QUICK[str(workload)])
        merged.update(_QUICK_TIMING)
    merged.update(preset)
    merged.update(explicit)
    merged["workload"] = workload
    merged["excluded"] = {}
    if quick and merged["providers"] is None:
        # NOTE: torch.compile of one block takes about 20 s on the 2-core CPU, once in the
        # memory process and again in the timing process: alone more than the minute --quick aims at.
        merged["excluded"] = {name: "left out of --quick: torch.compile takes ~20 s per process on a "
                                    "small CPU; run without --quick or name it in --providers"
                              for name in ("compile", "compile-reduce-overhead")}
    return merged


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
                       interleave=bool(options["interleave"]), excluded=dict(options.get("excluded", {})))


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
        0 on success, 2 on invalid options (the message goes to stderr).
    """
    try:
        options = resolve(args)
        config = build_config(options)
        config.selected_providers()  # unknown provider names fail now, not after minutes
    except (ValueError, TypeError) as error:
        print(f"deepres bench: error: {error}", file=sys.stderr)
        return 2
    report = run_benchmark(config, argv=_command_line(), quick=bool(getattr(args, "quick", False)))
    report["config"]["preset"] = getattr(args, "preset", None)
    report["config"]["quick"] = bool(getattr(args, "quick", False))
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(report, args.csv)
        print(f"wrote {args.csv}")
    if args.plot:
        write_plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0
