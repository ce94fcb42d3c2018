"""GPU check of the Triton backend: correctness, speed against the baselines, device ceilings, memory.

Usage (on a CUDA machine; about 5–8 minutes, bounded by ``--budget``)::

    python -m bench.gpu_check --out bench/results/gpu_check.json
    python -m bench.gpu_check --quick --out bench/results/gpu_check_quick.json   # target shape only

What it does, in this order (so that a run cut short still has the essentials):

1. Device ceilings measured in the same run: copy bandwidth (GB/s, a 1 GiB
   ``copy_``) and float32 matmul throughput (TFLOP/s, 8192³, IEEE and TF32).
2. Correctness of ``backend="triton"`` against the PyTorch engine in float64
   on fresh random inputs at several shapes (odd B, D, M; replicas; every
   activation; D = 256; deterministic mode; bfloat16/float16 weights; TF32):
   relative error of h_L, ∂h_0, ∂u, ∂v, a NaN/inf check, and every output
   element written (PyTorch fills fresh allocations with NaN during the check).
3. Timing, forward (under ``torch.no_grad``) and forward+backward, CUDA events
   after warm-up, median over repeats, for L ∈ {1024, 4096, 16384},
   D = M ∈ {32, 64, 128}, B ∈ {64, 1024} (the target shape L = 4096, D = M = 64
   first), of: the Triton backend (``checkpoint_every`` None and "sqrt"), the
   PyTorch engine, eager per-layer autograd (an ``nn.ModuleList`` of blocks),
   and ``torch.compile(block, mode="reduce-overhead")`` applied in a loop
   (CUDA graphs; one graph is recorded per call in the chain, so its warm-up
   is long: by default it runs up to L = 4096, see ``--compile-max-depth``).
   Achieved TFLOP/s and GB/s use the model of docs/design.md §6: forward
   4·B·M·D·L FLOPs, forward+backward 16·B·M·D·L (backward ≈ 3× forward);
   weight traffic 8·M·D·L bytes per pass (float32 u and v), one pass forward,
   three forward+backward (read, read again, write the gradients).
4. Peak memory (``torch.cuda.max_memory_allocated``) of forward+backward at
   the target shape, against weights + gradients.

Everything goes into one JSON file with the GPU name, torch/triton/CUDA
versions, the git commit and the command line. Each measurement is guarded:
an error is recorded and the run goes on; past ``--budget`` seconds the
remaining measurements are recorded as skipped.

Without CUDA the script exits with status 2 and says so. ``--dry-run`` runs a
tiny version on the CPU instead (Triton's interpreter, no ceilings worth the
name, no memory or CUDA-graph part) to check the script itself.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

__all__ = ["main"]

DEFAULT_OUT = "bench/results/gpu_check.json"
TARGET = {"L": 4096, "D": 64, "M": 64}
TARGET_RATIOS = {"vs_eager": 30.0, "vs_compiled": 5.0, "memory_ratio": 1.25}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check",
        description="Correctness, speed and memory of the Triton backend on a GPU.")
    parser.add_argument("--out", default=None,
                        help=f"JSON file to write (default {DEFAULT_OUT}; with --dry-run nothing is written "
                             "unless given)")
    parser.add_argument("--budget", type=float, default=360.0,
                        help="seconds after which remaining measurements are skipped (default 360; a "
                             "measurement already started finishes, so leave a margin under 8 minutes)")
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
            parser.error(f"--{name} must be comma-separated integers; got {getattr(args, name)!r}")
        if not values or min(values) < 1:
            parser.error(f"--{name} must list positive integers; got {getattr(args, name)!r}")
        setattr(args, name, values)
    if args.budget <= 0:
        parser.error(f"--budget must be positive; got {args.budget}")
    if args.quick:
        args.depths, args.dims, args.batches = [TARGET["L"]], [TARGET["D"]], [64, 1024]
        args.budget = min(args.budget, 240.0)
    return args


class Run:
    """Shared state of one check: device, clock, budget and the report being built."""

    def __init__(self, args: argparse.Namespace, device, torch_module) -> None:
        self.args = args
        self.device = device
        self.torch = torch_module
        self.start = time.monotonic()
        self.deadline = self.start + args.budget
        self.report: dict = {"skipped": [], "errors": []}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def guarded(self, what: str, fn: Callable[[], object]) -> object | None:
        """fn() unless the budget is spent; errors are recorded, not raised."""
        if self.left() <= 0:
            self.report["skipped"].append({"what": what, "why": "time budget spent"})
            return None
        try:
            return fn()
        except Exception as error:  # one failed measurement must not lose the others
            self.report["errors"].append({"what": what, "error": repr(error),
                                          "traceback": traceback.format_exc(limit=8)})
            print(f"[gpu_check] ERROR in {what}: {error!r}", file=sys.stderr)
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            return None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time_ms(self, fn: Callable[[], object], *, warmup: int, max_repeats: int = 10, min_repeats: int = 3,
                max_seconds: float = 2.0) -> dict:
        """Median wall time of fn() in ms (CUDA events on a GPU) after warm-up."""
        torch = self.torch
        for _ in range(warmup):
            fn()
        self.synchronize()
        times: list[float] = []
        began = time.monotonic()
        while len(times) < max_repeats:
            if self.device.type == "cuda":
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                stop.record()
                stop.synchronize()
                times.append(start.elapsed_time(stop))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            if len(times) >= min_repeats and time.monotonic() - began > max_seconds:
                break
        return {"median_ms": statistics.median(times), "min_ms": min(times), "repeats": len(times)}


def _git_commit() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
        return {"commit": commit or "unknown", "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def _environment(run: Run) -> dict:
    torch = run.torch
    import triton

    info = {
        "command": " ".join([sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]]),
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "dry_run": run.args.dry_run,
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }
    if run.device.type == "cuda":
        props = torch.cuda.get_device_properties(run.device)
        info["gpu"] = {"name": props.name, "multiprocessors": props.multi_processor_count,
                       "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}"}
    else:
        info["gpu"] = None
    return info


def _ceilings(run: Run) -> dict:
    """Copy GB/s and float32 matmul TFLOP/s on this device, measured now."""
    torch = run.torch
    out: dict = {}
    numel = (1 << 28) if run.device.type == "cuda" else (1 << 22)  # 1 GiB of float32 on a GPU
    buffers = [torch.empty(numel, device=run.device).uniform_(), torch.empty(numel, device=run.device)]
    t = run.time_ms(lambda: buffers[1].copy_(buffers[0]), warmup=3, max_repeats=20)
    out["copy_GBps"] = 2 * numel * 4 / (t["median_ms"] * 1e-3) / 1e9
    buffers.clear()
    n = 8192 if run.device.type == "cuda" else 512
    a = torch.randn(n, n, device=run.device)
    b = torch.randn(n, n, device=run.device)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, tf32 in (("fp32_matmul_TFLOPs", False), ("tf32_matmul_TFLOPs", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            t = run.time_ms(lambda: a @ b, warmup=3, max_repeats=10)
            out[name] = 2 * n**3 / (t["median_ms"] * 1e-3) / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return out


# --- correctness -------------------------------------------------------------------------------------------

def _correctness_cases(dry_run: bool) -> list[dict]:
    if dry_run:
        return [{"R": 2, "B": 5, "D": 6, "M": 7, "L": 5, "every": 2, "activation": "tanh"}]
    base = {"R": 1, "weights": "float32", "tf32": False, "deterministic": False}
    cases = [
        {"B": 1024, "D": 64, "M": 64, "L": 256, "every": 16, "activation": "tanh"},
        {"R": 2, "B": 100, "D": 33, "M": 70, "L": 50, "every": 7, "activation": "gelu"},
        {"B": 64, "D": 256, "M": 256, "L": 64, "every": 8, "activation": "silu"},
        {"R": 3, "B": 1000, "D": 128, "M": 200, "L": 40, "every": 1, "activation": "relu"},
        {"B": 300, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "identity", "deterministic": True},
        {"B": 256, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "tanh", "weights": "bfloat16"},
        {"B": 2000, "D": 48, "M": 24, "L": 30, "every": 5, "activation": "gelu", "weights": "float16"},
        {"B": 256, "D": 64, "M": 64, "L": 64, "every": 8, "activation": "tanh", "tf32": True},
    ]
    return [{**base, **case} for case in cases]


def _check_case(run: Run, case: dict) -> dict:
    torch = run.torch
    from deepres.engines.torch_engine import torch_residual_stack
    from deepres.engines.triton_engine import triton_residual_stack

    case = {"R": 1, "weights": "float32", "tf32": False, "deterministic": False, **case}
    R, B, D, M, L = case["R"], case["B"], case["D"], case["M"], case["L"]
    wdtype = getattr(torch, case["weights"])
    generator = torch.Generator(device=run.device).manual_seed(1234 + B + D + M + L)

    def draw(*shape):
        return torch.randn(shape, device=run.device, dtype=torch.float64, generator=generator)

    # mlu-like scaling with α = 2: c = 2/(L·M), a = 1/√D on unit-variance weights keeps σ non-linear.
    c, a = 2.0 / (L * M), D**-0.5
    h64, u64, v64 = draw(R, B, D), draw(R, L, M, D).to(wdtype).double(), draw(R, L, M, D).to(wdtype).double()
    probe = draw(R, B, D)
    ref_in = [t.clone().requires_grad_() for t in (h64, u64, v64)]
    ref_out = torch_residual_stack(*ref_in, c, a, case["activation"], case["every"])
    ref = [ref_out.detach(), *torch.autograd.grad((ref_out * probe).sum(), ref_in)]

    def fused():
        args = [h64.float().requires_grad_(), u64.to(wdtype).requires_grad_(),
                v64.to(wdtype).requires_grad_()]
        out = triton_residual_stack(*args, c, a, case["activation"], case["every"], allow_tf32=case["tf32"],
                                    deterministic=case["deterministic"])
        return [out.detach(), *torch.autograd.grad((out * probe.float()).sum(), args)]

    # Fresh allocations are NaN while the kernels run: an element a kernel never writes shows as NaN.
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        got = fused()
        again = fused() if case["deterministic"] else None
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.utils.deterministic.fill_uninitialized_memory = previous[2]
    run.synchronize()
    names = ("h_L", "grad_h", "grad_u", "grad_v")
    errors = {name: float(((x.double() - r).norm() / r.norm()).item()) for name, x, r in zip(names, got, ref,
                                                                                           strict=True)}
    finite = all(bool(torch.isfinite(x).all()) for x in got)
    # Half-precision weight gradients come back rounded to the weights' dtype.
    half_eps = torch.finfo(wdtype).eps if wdtype != torch.float32 else 0.0
    tolerance = {name: 1e-2 if case["tf32"] else max(1e-5, half_eps if name.startswith("grad_") else 0.0)
                 for name in names}
    tolerance["grad_h"] = 1e-2 if case["tf32"] else 1e-5
    passed = finite and all(errors[name] <= tolerance[name] for name in names)
    result = {**case, "relative_error": errors, "tolerance": tolerance, "finite_and_all_written": finite}
    if again is not None:
        result["bitwise_reproducible"] = all(torch.equal(x, y) for x, y in zip(got, again, strict=True))
        passed = passed and result["bitwise_reproducible"]
    result["passed"] = passed
    return result


# --- timing ------------------------------------------------------------------------------------------------

def _inputs(run: Run, L: int, D: int, M: int, B: int) -> tuple:
    torch = run.torch
    generator = torch.Generator(device=run.device).manual_seed(L + 7 * D + 11 * B)
    h = torch.randn(B, D, device=run.device, generator=generator)
    u = torch.randn(L, M, D, device=run.device, generator=generator) * D**0.5
    v = torch.randn(L, M, D, device=run.device, generator=generator) * D**0.5
    probe = torch.randn(B, D, device=run.device, generator=generator)
    return h, u, v, probe, 1.0 / (L * M), 1.0 / D  # the mlu parameterization with α = 1


def _provider_fns(run: Run, provider: str, h, u, v, probe, c: float, a: float):
    """(forward, forward+backward, tensors holding the trained weights) for one provider."""
    torch = run.torch
    from deepres import residual_stack
    from deepres.activations import activation as sigma

    act = "tanh"
    if provider.startswith(("triton", "torch_engine")):
        backend, _, policy = provider.partition(":")
        backend = "triton" if backend == "triton" else "torch"
        every = None if policy in ("", "none") else policy
        weights = [u.clone().requires_grad_(), v.clone().requires_grad_()]
        x = h.clone().requires_grad_()

        def stack():
            return residual_stack(x, *weights, multiplier=c, pre_scale=a, activation=act, backend=backend,
                                  checkpoint_every=every)
    elif provider in ("eager", "compiled"):
        weights = [torch.nn.Parameter(t.clone()) for pair in zip(u, v, strict=True) for t in pair]
        if provider == "compiled":
            # Plain leaf tensors, not Parameters: CUDA-graph trees treat Parameters as static inputs and
            # would re-record a graph for each layer's distinct weight address.
            weights = [w.detach().clone().requires_grad_() for w in weights]
        x = h.clone().requires_grad_()

        def block(h, u_l, v_l):
            return h + c * (sigma(act, a * (h @ u_l.t())) @ v_l)

        if provider == "compiled":
            step = torch.compile(block, mode="reduce-overhead", fullgraph=True, dynamic=False)
        else:
            layers = torch.nn.ModuleList()
            for u_l, v_l in zip(weights[0::2], weights[1::2], strict=True):
                module = torch.nn.Module()
                module.u, module.v = u_l, v_l
                layers.append(module)

        def stack():
            y = x
            if provider == "compiled":
                torch.compiler.cudagraph_mark_step_begin()
                for u_l, v_l in zip(weights[0::2], weights[1::2], strict=True):
                    y = step(y, u_l, v_l)
            else:
                for layer in layers:
                    y = block(y, layer.u, layer.v)
            return y
    else:
        raise ValueError(f"unknown provider {provider!r}")

    def forward():
        with torch.no_grad():
            return stack()

    def forward_backward():
        for w in (x, *weights):
            w.grad = None
        (stack() * probe).sum().backward()

    return forward, forward_backward, weights


def _timing_shapes(args: argparse.Namespace) -> list[tuple[int, int, int]]:
    shapes = [(L, D, B) for L in args.depths for D in args.dims for B in args.batches]
    targets = [s for s in shapes if s[0] == TARGET["L"] and s[1] == TARGET["D"]]
    return targets + sorted((s for s in shapes if s not in targets), key=lambda s: (s[0], s[1], -s[2]))


def _time_shape(run: Run, L: int, D: int, B: int, providers: list[str], ceilings: dict) -> list[dict]:
    torch = run.torch
    M = D
    rows = []
    h, u, v, probe, c, a = _inputs(run, L, D, M, B)
    for provider in providers:
        if provider == "compiled" and run.args.compile_max_depth < L:
            run.report["skipped"].append({"what": f"compiled L={L} D={D} B={B}",
                                          "why": f"L > --compile-max-depth {run.args.compile_max_depth}"})
            continue
        fns = run.guarded(f"setup {provider} L={L} D={D} B={B}",
                          lambda provider=provider: _provider_fns(run, provider, h, u, v, probe, c, a))
        if fns is None:
            continue
        forward, forward_backward, _ = fns
        # CUDA-graph trees need warm-up runs before they record, then replay.
        warmup = 3 if provider == "compiled" else 1
        for pass_name, fn in (("forward", forward), ("forward+backward", forward_backward)):
            what = f"{provider} {pass_name} L={L} D={D} M={M} B={B}"
            timing = run.guarded(what, lambda fn=fn, warmup=warmup: run.time_ms(fn, warmup=warmup))
            if timing is None:
                continue
            flops = (4 if pass_name == "forward" else 16) * B * M * D * L
            weight_bytes = (1 if pass_name == "forward" else 3) * 8 * M * D * L
            seconds = timing["median_ms"] * 1e-3
            row = {"provider": provider, "pass": pass_name, "L": L, "D": D, "M": M, "B": B, **timing,
                   "model_TFLOPs": flops / seconds / 1e12, "model_weight_GBps": weight_bytes / seconds / 1e9}
            if ceilings.get("fp32_matmul_TFLOPs"):
                row["fraction_of_fp32_matmul"] = row["model_TFLOPs"] / ceilings["fp32_matmul_TFLOPs"]
            if ceilings.get("copy_GBps"):
                row["fraction_of_copy_bandwidth"] = row["model_weight_GBps"] / ceilings["copy_GBps"]
            rows.append(row)
            print(f"[gpu_check] {what}: {timing['median_ms']:.3f} ms", flush=True)
        del fns, forward, forward_backward
        if provider == "compiled":
            torch._dynamo.reset()
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _speedups(rows: list[dict]) -> list[dict]:
    index = {(r["provider"], r["pass"], r["L"], r["D"], r["B"]): r["median_ms"] for r in rows}
    out = []
    for (provider, pass_name, L, D, B), ms in index.items():
        if provider != "triton:none":
            continue
        best = min(ms, index.get(("triton:sqrt", pass_name, L, D, B), math.inf))
        entry = {"pass": pass_name, "L": L, "D": D, "B": B, "triton_best_ms": best}
        for baseline in ("eager", "compiled", "torch_engine"):
            other = index.get((baseline, pass_name, L, D, B))
            entry[f"vs_{baseline}"] = other / best if other else None
        out.append(entry)
    return out


# --- memory ------------------------------------------------------------------------------------------------

def _peak_memory(run: Run, provider: str, L: int, D: int, B: int) -> dict:
    torch = run.torch
    h, u, v, probe, c, a = _inputs(run, L, D, D, B)
    _, forward_backward, weights = _provider_fns(run, provider, h, u, v, probe, c, a)
    del u, v
    forward_backward()  # compile and warm up outside the measured window
    for w in weights:
        w.grad = None
    run.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    forward_backward()
    run.synchronize()
    peak = torch.cuda.max_memory_allocated()
    weights_and_grads = 2 * sum(w.numel() * w.element_size() for w in weights)
    return {"provider": provider, "L": L, "D": D, "M": D, "B": B, "peak_bytes": peak,
            "weights_plus_grads_bytes": weights_and_grads, "ratio": peak / weights_and_grads}


# --- driver ------------------------------------------------------------------------------------------------

def _targets(report: dict) -> dict:
    out = {}
    for entry in report.get("speedups", []):
        if (entry["L"], entry["D"], entry["pass"]) != (TARGET["L"], TARGET["D"], "forward+backward"):
            continue
        for key in ("vs_eager", "vs_compiled"):
            if entry.get(key) is not None:
                out[f"B={entry['B']} {key}"] = {"measured": entry[key], "target": TARGET_RATIOS[key],
                                                "met": entry[key] >= TARGET_RATIOS[key]}
    for entry in report.get("memory", []):
        if entry["provider"] == "triton:sqrt":
            out[f"B={entry['B']} memory_ratio"] = {"measured": entry["ratio"],
                                                   "target": TARGET_RATIOS["memory_ratio"],
                                                   "met": entry["ratio"] <= TARGET_RATIOS["memory_ratio"]}
    return out


def _write(report: dict, out: str | None) -> None:
    """Write the report (also after each section, so that a run cut short keeps what it measured)."""
    if out is None:
        return
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=1, default=str) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit status (0 done, 1 a correctness case failed, 2 no CUDA)."""
    args = _parse(argv)
    if args.dry_run:
        # The interpreter must be on before the kernels are defined (first use of the Triton engine).
        os.environ.setdefault("TRITON_INTERPRET", "1")
        args.depths, args.dims, args.batches = [4, 8], [16], [5]
        args.skip_compile = True
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("bench.gpu_check needs a CUDA device and torch.cuda.is_available() is False on this machine; "
              "nothing was measured. Run it on a GPU machine, or pass --dry-run to exercise the script on "
              "the CPU with tiny shapes.", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # IEEE float32 baselines, like the kernels' default
    torch.backends.cudnn.allow_tf32 = False
    for name in ("cache_size_limit", "recompile_limit"):  # one compiled block per (D, B, grad mode)
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    run = Run(args, device, torch)
    report = run.report
    out = args.out or (None if args.dry_run else DEFAULT_OUT)
    report["environment"] = _environment(run)
    report["budget_s"] = args.budget
    report["flop_model"] = "forward 4·B·M·D·L, forward+backward 16·B·M·D·L (docs/design.md §6)"
    report["byte_model"] = "8·M·D·L weight bytes per pass; forward 1 pass, forward+backward 3"

    report["ceilings"] = run.guarded("ceilings", lambda: _ceilings(run)) or {}
    checks = (run.guarded(f"correctness {case}", lambda case=case: _check_case(run, case))
              for case in _correctness_cases(args.dry_run))
    report["correctness"] = [result for result in checks if result is not None]
    _write(report, out)
    providers = ["triton:none", "triton:sqrt", "torch_engine", "eager"]
    if not args.skip_compile:
        providers.append("compiled")
    timing: list[dict] = []
    memory: list[dict] = []
    report["timing"], report["memory"] = timing, memory
    for index, (L, D, B) in enumerate(_timing_shapes(args)):
        rows = run.guarded(f"timing L={L} D={D} B={B}",
                           lambda L=L, D=D, B=B: _time_shape(run, L, D, B, providers, report["ceilings"]))
        timing.extend(rows or [])
        report["speedups"] = _speedups(timing)
        if device.type == "cuda" and (TARGET["L"], TARGET["D"]) == (L, D):
            for provider in ("triton:sqrt", "triton:none", "torch_engine", "eager"):
                entry = run.guarded(f"memory {provider} B={B}",
                                    lambda p=provider, L=L, D=D, B=B: _peak_memory(run, p, L, D, B))
                if entry is not None:
                    memory.append(entry)
        if index == 0 and device.type != "cuda":
            report["skipped"].append({"what": "memory", "why": "needs CUDA"})
        report["elapsed_s"] = time.monotonic() - run.start
        _write(report, out)
    report["speedups"] = _speedups(timing)
    report["targets"] = _targets(report)
    report["elapsed_s"] = time.monotonic() - run.start
    failed = [case for case in report["correctness"] if not case["passed"]]
    report["all_correctness_passed"] = not failed and len(report["correctness"]) > 0

    if out is not None:
        _write(report, out)
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
