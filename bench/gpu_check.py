"""GPU check of the Triton backend: correctness, speed against the baselines, device ceilings, memory.

Usage (on a CUDA machine; at most ``--budget`` seconds, 300 by default)::

    python -m bench.gpu_check --out bench/results/gpu_check.json
    python -m bench.gpu_check --quick --out bench/results/gpu_check_quick.json   # target shape only

What it does, in this order (so that a run cut short still has the essentials):

1. Device ceilings measured in the same run (:func:`deepres.benchmark.ceilings.measure_ceilings`):
   copy bandwidth (GB/s, a 1 GiB ``copy_``) and matmul throughput (TFLOP/s,
   8192³, IEEE float32 and TF32).
2. Correctness of ``backend="triton"`` against the PyTorch engine in float64
   on fresh random inputs at several shapes (odd B, D, M; replicas; every
   activation; D = 256; bfloat16/float16 weights; TF32): relative error of
   h_L, ∂h_0, ∂u, ∂v, a NaN/inf check, every output element written (PyTorch
   fills fresh allocations with NaN during the check), and a second call
   bitwise equal to the first (the kernels reduce in a fixed order).
3. Timing, forward (under ``torch.no_grad``) and forward+backward, CUDA events
   after warm-up, median over repeats, for L ∈ {1024, 4096, 16384},
   D = M ∈ {32, 64, 128}, B ∈ {64, 1024} (the target shape L = 4096, D = M = 64
   first), of the providers of ``deepres bench`` on the same inputs
   (:mod:`deepres.benchmark.providers`): ``deepres-triton`` and
   ``deepres-triton-sqrt`` (``checkpoint_every`` None and "sqrt"),
   ``deepres-torch`` (the PyTorch engine), ``eager`` (an ``nn.ModuleList`` of
   blocks with PyTorch's own activations) and ``compile-reduce-overhead`` (one
   block under ``torch.compile(mode="reduce-overhead")`` applied in a loop, its
   weights ``nn.Parameter``\\ s so that CUDA-graph replays read them in place;
   one graph is recorded per call in the chain, so its warm-up is long: by
   default it runs up to L = 4096, see ``--compile-max-depth``). Achieved
   TFLOP/s and GB/s use the benchmark's cost model (:meth:`Case.model_flops`,
   :meth:`Case.model_bytes`: forward 4·B·M·D·L FLOPs, forward+backward
   12·B·M·D·L, recomputation not counted). Speed-ups are reported for the best
   checkpoint policy and for ``checkpoint_every="sqrt"`` alone.
4. Peak memory (``torch.cuda.max_memory_allocated``) of forward+backward at
   the target shape, against weights + gradients.

Everything goes into one JSON file with the environment of ``deepres bench``
(:func:`deepres.benchmark.environment.environment`: GPU, versions, commit,
command line). The file is rewritten after every measurement, so a fault
partway leaves every finished one on disk. Each measurement is guarded: an
error is recorded and the run goes on; after an error that leaves the CUDA
context unusable (a sticky fault such as an illegal memory access), the
remaining measurements are recorded as skipped with that reason; past
``--budget`` seconds they are recorded as skipped too.

Without CUDA the script exits with status 2 and says so. ``--dry-run`` runs a
tiny version on the CPU instead (Triton's interpreter, no ceilings worth the
name, no memory or CUDA-graph part) to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

DEFAULT_OUT = "bench/results/gpu_check.json"
TARGET = {"L": 4096, "D": 64, "M": 64}
TARGET_RATIOS = {"vs_eager": 30.0, "vs_compiled": 5.0, "memory_ratio": 1.25}
# The providers of ``deepres bench`` timed here, and their short names in the speed-ups.
TRITON = {"none": "deepres-triton", "sqrt": "deepres-triton-sqrt"}
BASELINES = {"eager": "eager", "compiled": "compile-reduce-overhead", "torch_engine": "deepres-torch"}
PASSES = {"forward": "forward", "forward+backward": "train"}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description="Correctness, speed and memory of the Triton backend on a GPU.")
    parser.add_argument("--out", default=None,
                        help=f"JSON file to write (default {DEFAULT_OUT}; with --dry-run nothing is written "
                             "unless given)")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds after which remaining measurements are skipped (default 300; a "
                             "measurement already started finishes, so leave a margin)")
    parser.add_argument("--depths", default="1024,4096,16384", help="L values (default %(default)s)")
    parser.add_argument("--dims", default="32,64,128", help="D = M values (default %(default)s)")
    parser.add_argument("--batches", default="64,1024", help="B values (default %(default)s)")
    parser.add_argument("--compile-max-depth", type=int, default=4096,
                        help="largest L timed with torch.compile(reduce-overhead) (default 4096)")
    parser.add_argument("--skip-compile", action="store_true", help="do not time the torch.compile baseline")
    parser.add_argument("--quick", action="store_true",
                        help="only the target shape L=4096, D=M=64, B in {64, 1024}, budget 240 s "
                             "(for a short time on a GPU)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU (Triton interpreter) to check the script without a GPU")
    args = parser.parse_args(argv)
    for name in ("depths", "dims", "batches"):
        try:
            values = [int(part) for part in getattr(args, name).split(",") if part]
        except ValueError:
            parser.error(f"argument --{name}: expected comma-separated integers; got {getattr(args, name)!r}")
        if not values or min(values) < 1:
            parser.error(f"argument --{name}: expected positive integers; got {getattr(args, name)!r}")
        setattr(args, name, values)
    if not (math.isfinite(args.budget) and args.budget > 0):
        parser.error(f"argument --budget: expected a finite number > 0; got {args.budget}")
    if args.quick:
        args.depths, args.dims, args.batches = [TARGET["L"]], [TARGET["D"]], [64, 1024]
        args.budget = min(args.budget, 240.0)
    if args.dry_run:
        args.depths, args.dims, args.batches = [4, 8], [16], [5]
        args.skip_compile = True
    return args


def _write(report: dict, out: str | None) -> None:
    """Write the report atomically (a reader never sees half a file)."""
    if out is None:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1, default=str) + "\n")
    partial.replace(path)


class Run:
    """Shared state of one check: device, clock, budget, the report being built and where it goes."""

    def __init__(self, args: argparse.Namespace, device, torch_module, out: str | None) -> None:
        self.args = args
        self.device = device
        self.torch = torch_module
        self.out = out
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.unusable: str | None = None  # why the device cannot run anything more
        self.report: dict = {"skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        if "timing" in self.report:
            self.report["speedups"] = _speedups(self.report["timing"])
        self.report["elapsed_s"] = time.monotonic() - self.start
        _write(self.report, self.out)

    def check_device(self) -> None:
        """Free what the failed measurement left; raises if the CUDA context is unusable."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()

    def guarded(self, what: str, fn: Callable[[], object], into: list | None = None) -> object | None:
        """fn() unless the budget is spent or the device unusable; errors are recorded, not raised.

        A result is appended to ``into`` (a list of the report), then the report is
        written, whatever the outcome.
        """
        why = self.unusable or ("time budget spent" if self.left() <= 0 else None)
        if why is not None:
            self.report["skipped"].append({"what": what, "why": why})
            return None
        result = None
        try:
            result = fn()
        except Exception as error:  # one failed measurement must not lose the others
            self.report["errors"].append({"what": what, "error": repr(error),
                                          "traceback": traceback.format_exc(limit=8)})
            print(f"[gpu_check] ERROR in {what}: {error!r}", file=sys.stderr)
            try:
                self.check_device()
            except Exception as again:  # a sticky CUDA error: every later call would fail too
                self.unusable = f"the device is unusable after the error in {what}: {again!r}"
                self.report["device_unusable"] = self.unusable
                print(f"[gpu_check] {self.unusable}; skipping the rest", file=sys.stderr)
        if result is not None and into is not None:
            into.append(result)
        self.save()
        return result


# --- correctness -------------------------------------------------------------------------------------------

def _correctness_cases(dry_run: bool) -> list[dict]:
    if dry_run:
        return [{"R": 2, "B": 5, "D": 6, "M": 7, "L": 5, "every": 2, "activation": "tanh"}]
    cases = [
        {"B": 1024, "D": 64, "M": 64, "L": 256, "every": 16, "activation": "tanh"},
        {"R": 2, "B": 100, "D": 33, "M": 70, "L": 50, "every": 7, "activation": "gelu"},
        {"B": 64, "D": 256, "M": 256, "L": 64, "every": 8, "activation": "silu"},
        {"R": 3, "B": 1000, "D": 128, "M": 200, "L": 40, "every": 1, "activation": "relu"},
        {"B": 300, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "identity"},
        {"B": 256, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "tanh", "weights": "bfloat16"},
        {"B": 2000, "D": 48, "M": 24, "L": 30, "every": 5, "activation": "gelu", "weights": "float16"},
        {"B": 256, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "tanh", "precision": "tf32"},
    ]
    return cases


def _check_case(run: Run, case: dict) -> dict:
    torch = run.torch
    from deepres import residual_stack

    case = {"R": 1, "weights": "float32", "precision": None, **case}
    R, B, D, M, L = case["R"], case["B"], case["D"], case["M"], case["L"]
    wdtype = getattr(torch, case["weights"])
    generator = torch.Generator(device=run.device).manual_seed(1234 + B + D + M + L)

    def draw(*shape):
        return torch.randn(shape, device=run.device, dtype=torch.float64, generator=generator)

    # mlu-like scaling with α = 2: c = 2/(L·M), a = 1/√D on unit-variance weights keeps σ non-linear.
    options = {"multiplier": 2.0 / (L * M), "pre_scale": D**-0.5, "activation": case["activation"],
               "checkpoint_every": case["every"]}
    h64, u64, v64 = draw(R, B, D), draw(R, L, M, D).to(wdtype).double(), draw(R, L, M, D).to(wdtype).double()
    probe = draw(R, B, D)
    ref_in = [t.clone().requires_grad_() for t in (h64, u64, v64)]
    ref_out = residual_stack(*ref_in, backend="torch", **options)
    ref = [ref_out.detach(), *torch.autograd.grad((ref_out * probe).sum(), ref_in)]

    def fused():
        args = [h64.float().requires_grad_(), u64.to(wdtype).requires_grad_(),
                v64.to(wdtype).requires_grad_()]
        out = residual_stack(*args, backend="triton", precision=case["precision"], **options)
        return [out.detach(), *torch.autograd.grad((out * probe.float()).sum(), args)]

    # Fresh allocations are NaN while the kernels run: an element a kernel never writes shows as NaN.
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        got = fused()
        again = fused()
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
    names = ("h_L", "grad_h", "grad_u", "grad_v")
    errors = {name: float(((x.double() - r).norm() / r.norm()).item())
              for name, x, r in zip(names, got, ref, strict=True)}
    finite = all(bool(torch.isfinite(x).all()) for x in got)
    # Half-precision weight gradients come back rounded to the weights' dtype.
    half_eps = torch.finfo(wdtype).eps if wdtype != torch.float32 else 0.0
    # One TF32 product per product: about 1e-3 relative; the default precision is float32-accurate.
    tf32 = case["precision"] == "tf32"
    tolerance = {name: 1e-2 if tf32 else max(1e-5, half_eps if name.startswith("grad_") else 0.0)
                 for name in names}
    tolerance["grad_h"] = 1e-2 if tf32 else 1e-5
    passed = finite and all(errors[name] <= tolerance[name] for name in names)
    result = {**case, "relative_error": errors, "tolerance": tolerance, "finite_and_all_written": finite}
    result["bitwise_reproducible"] = all(torch.equal(x, y) for x, y in zip(got, again, strict=True))
    passed = passed and result["bitwise_reproducible"]
    result["passed"] = passed
    return result


# --- timing ------------------------------------------------------------------------------------------------

def _providers(run: Run) -> list:
    from deepres.benchmark.providers import stack_providers

    names = [TRITON["none"], TRITON["sqrt"], BASELINES["torch_engine"], BASELINES["eager"]]
    if not run.args.skip_compile:
        names.append(BASELINES["compiled"])
    by_name = {p.name: p for p in stack_providers([None, "sqrt"])}
    return [by_name[name] for name in names]


def _case(run: Run, L: int, D: int, B: int, mode: str = "train"):
    from deepres.benchmark.case import Case

    return Case(depth=L, batch=B, dim=D, hidden=D, mode=mode, device=run.device.type)


def _build(run: Run, provider, case, inputs):
    """The provider's runner; in a dry run the Triton engine runs in the interpreter."""
    reason = provider.unavailable_reason(case)
    if reason is not None and not (run.args.dry_run and provider.name in TRITON.values()):
        raise RuntimeError(f"{provider.name} cannot run here: {reason}")
    return provider.build(case, inputs)


def _time_pass(run: Run, provider, case, inputs, ceilings: dict) -> dict:
    from deepres.benchmark.timing import TimingOptions, time_step

    runner = _build(run, provider, case, inputs)

    def step():
        runner.step()
        runner.clear()

    # CUDA-graph trees need warm-up runs before they record, then replay.
    warmup = 3 if provider.compiles else 1
    result = time_step(step, run.device, TimingOptions(warmup=warmup, min_repeats=3, max_repeats=10,
                                                       min_time=2.0, max_time=2.0))
    seconds = result.median
    pass_name = next(name for name, mode in PASSES.items() if mode == case.mode)
    row = {"provider": provider.name, "pass": pass_name, "L": case.depth, "D": case.dim, "M": case.hidden,
           "B": case.batch, "median_ms": seconds * 1e3, "min_ms": result.min * 1e3,
           "p10_ms": result.p10 * 1e3, "p90_ms": result.p90 * 1e3, "repeats": result.repeats,
           "model_TFLOPs": case.model_flops() / seconds / 1e12,
           "model_GBps": case.model_bytes() / seconds / 1e9}
    if ceilings.get("matmul_tflops"):
        row["fraction_of_fp32_matmul"] = row["model_TFLOPs"] / ceilings["matmul_tflops"]
    if ceilings.get("copy_gbytes_per_s"):
        row["fraction_of_copy_bandwidth"] = row["model_GBps"] / ceilings["copy_gbytes_per_s"]
    print(f"[gpu_check] {provider.name} {pass_name} L={case.depth} D={case.dim} B={case.batch}: "
          f"{row['median_ms']:.3f} ms", flush=True)
    return row


def _time_shape(run: Run, L: int, D: int, B: int, providers: list, timing: list[dict]) -> None:
    from deepres.benchmark.case import make_inputs

    inputs = make_inputs(_case(run, L, D, B))  # the same for both passes and every provider
    for provider in providers:
        if provider.compiles and run.args.compile_max_depth < L:
            run.report["skipped"].append({"what": f"{provider.name} L={L} D={D} B={B}",
                                          "why": f"L > --compile-max-depth {run.args.compile_max_depth}"})
            continue
        for pass_name, mode in PASSES.items():
            case = _case(run, L, D, B, mode)
            run.guarded(f"{provider.name} {pass_name} L={L} D={D} M={D} B={B}",
                        lambda p=provider, c=case: _time_pass(run, p, c, inputs, run.report["ceilings"]),
                        into=timing)
        if provider.compiles:
            run.torch._dynamo.reset()


def _timing_shapes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    shapes = [(L, D, B) for L in args.depths for D in args.dims for B in args.batches]
    targets = [s for s in shapes if s[0] == TARGET["L"] and s[1] == TARGET["D"]]
    return targets + sorted((s for s in shapes if s not in targets), key=lambda s: (s[0], s[1], -s[2]))


def _ratios(ms: float | None, index: dict, key: tuple) -> dict:
    return {f"vs_{short}": (index[(name, *key)] / ms if ms and (name, *key) in index else None)
            for short, name in BASELINES.items()}


def _speedups(rows: list[dict]) -> list[dict]:
    """Per (pass, L, D, B): the Triton engine against each baseline, with its best checkpoint
    policy (``"best"``) and with ``checkpoint_every="sqrt"`` alone (``"sqrt"``)."""
    index = {(r["provider"], r["pass"], r["L"], r["D"], r["B"]): r["median_ms"] for r in rows}
    keys = sorted({k[1:] for k in index if k[0] in TRITON.values()})
    out = []
    for key in keys:
        times = {policy: index.get((name, *key)) for policy, name in TRITON.items()}
        policy, best = min(((p, t) for p, t in times.items() if t is not None), key=lambda item: item[1])
        pass_name, L, D, B = key
        out.append({"pass": pass_name, "L": L, "D": D, "B": B,
                    "best": {"policy": policy, "ms": best, **_ratios(best, index, key)},
                    "sqrt": {"ms": times["sqrt"], **_ratios(times["sqrt"], index, key)}})
    return out


# --- memory ------------------------------------------------------------------------------------------------

def _peak_memory(run: Run, provider, L: int, D: int, B: int) -> dict:
    from deepres.benchmark.case import make_inputs

    torch = run.torch
    case = _case(run, L, D, B)
    inputs = make_inputs(case)
    runner = _build(run, provider, case, inputs)
    # The runner holds its own copies of the weights: drop the drawn ones so they are counted once.
    inputs.u = inputs.v = torch.empty(0)
    runner.step()  # compile and warm up outside the measured window
    runner.clear()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    runner.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    weights_and_grads = 2 * sum(p.numel() * p.element_size() for p in runner.params)
    return {"provider": provider.name, "L": L, "D": D, "M": D, "B": B, "peak_bytes": peak,
            "weights_plus_grads_bytes": weights_and_grads, "ratio": peak / weights_and_grads}


# --- driver ------------------------------------------------------------------------------------------------

def _targets(report: dict) -> dict:
    out = {}
    for entry in report.get("speedups", []):
        if (entry["L"], entry["D"], entry["pass"]) != (TARGET["L"], TARGET["D"], "forward+backward"):
            continue
        for policy in ("best", "sqrt"):
            for key in ("vs_eager", "vs_compiled"):
                measured = entry[policy].get(key)
                if measured is not None:
                    target = TARGET_RATIOS[key]
                    out[f"B={entry['B']} {policy} {key}"] = {"measured": measured, "target": target,
                                                             "met": measured >= target}
    for entry in report.get("memory", []):
        if entry["provider"] == TRITON["sqrt"]:
            out[f"B={entry['B']} memory_ratio"] = {"measured": entry["ratio"],
                                                   "target": TARGET_RATIOS["memory_ratio"],
                                                   "met": entry["ratio"] <= TARGET_RATIOS["memory_ratio"]}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status (0 done, 1 a correctness case failed, 2 no CUDA)."""
    args = _parse(argv)
    if args.dry_run:
        # The interpreter must be on before the kernels are defined (first use of the Triton engine).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from deepres.benchmark.ceilings import measure_ceilings
    from deepres.benchmark.environment import environment

    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu_check needs a CUDA device and torch.cuda.is_available() is False on this machine; "
              "nothing was measured. Run it on a GPU machine, or pass --dry-run to exercise the script on "
              "the CPU with tiny shapes.", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    # IEEE float32 baselines (the kernels' default, three-pass TF32, is float32-accurate too).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled block per (D, B, grad mode)
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    out = args.out or (None if args.dry_run else DEFAULT_OUT)
    run = Run(args, device, torch, out)
    report = run.report
    command = [sys.executable, "-m", "bench.gpu_check", *(sys.argv[1:] if argv is None else argv)]
    report["environment"] = {**environment(command, device.type), "dry_run": args.dry_run}
    report["budget_s"] = args.budget
    report["flop_model"] = "forward 4·B·M·D·L, forward+backward 12·B·M·D·L (recomputation not counted)"
    report["byte_model"] = ("weights 8·M·D·L bytes per pass (forward 1 pass, forward+backward 3) "
                            "and the stream h read and written")
    report["ceilings"] = {}
    run.guarded("ceilings",
                lambda: report["ceilings"].update(measure_ceilings(device.type, quick=args.dry_run)))
    report["correctness"] = []
    for case in _correctness_cases(args.dry_run):
        run.guarded(f"correctness {case}", lambda case=case: _check_case(run, case),
                    into=report["correctness"])
    providers = run.guarded("providers", lambda: _providers(run)) or []
    report["timing"], report["memory"], report["speedups"] = [], [], []
    for L, D, B in _timing_shapes(args):
        _time_shape(run, L, D, B, providers, report["timing"])
        if device.type == "cuda" and (TARGET["L"], TARGET["D"]) == (L, D):
            for provider in providers:
                if not provider.compiles:
                    run.guarded(f"memory {provider.name} L={L} D={D} B={B}",
                                lambda p=provider, L=L, D=D, B=B: _peak_memory(run, p, L, D, B),
                                into=report["memory"])
    if device.type != "cuda":
        report["skipped"].append({"what": "memory", "why": "needs CUDA"})
    report["targets"] = _targets(report)
    failed = [case for case in report["correctness"] if not case["passed"]]
    report["all_correctness_passed"] = not failed and len(report["correctness"]) > 0
    run.save()
    if out is not None:
        print(f"[gpu_check] wrote {out}")
    else:
        print(json.dumps(report, indent=1, default=str))
    for name, target in report["targets"].items():
        print(f"[gpu_check] target {name}: {target['measured']:.3g} (target {target['target']}, "
              f"{'met' if target['met'] else 'NOT met'})")
    print(f"[gpu_check] correctness: {len(report['correctness']) - len(failed)}/{len(report['correctness'])} "
          f"passed; {len(report['errors'])} errors; {len(report['skipped'])} skipped; "
          f"{report['elapsed_s']:.0f} s")
    return 1 if failed or not report["correctness"] else 0


if __name__ == "__main__":
    sys.exit(main())
