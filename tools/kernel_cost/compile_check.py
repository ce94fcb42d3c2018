"""Compile every kernel variant the launchers can launch, for a GPU architecture, without a GPU.

Triton's interpreter accepts programs that the GPU compiler rejects or that
spill registers, so this builds the real sm_90a binaries (the Triton wheel
bundles ptxas and nvdisasm). The variants are not a hand-kept list: for each
case (shape and options) it asks the launcher's own plans
(:func:`deepres.kernels.plan.forward_plan` and ``backward_plan``) which
launches they make, and compiles each distinct one, taking the kernel from the
launcher's dispatch table (:data:`deepres.engines.triton.launch.KERNELS`),
with the JIT's own argument specialization (ints equal to 1 or divisible by
16). Per variant it reads registers, spill bytes and shared memory
(``ptxas -v``), and from the SASS the instructions of the hot loop per layer
and its exposed global-load waits; with ``--cost`` it also estimates step
times with :mod:`.cost_model`. **Every time it prints is an estimate**: no
GPU runs here.

Run from the repository root as
``python -m tools.kernel_cost.compile_check [--cost] [--quick] [--json PATH]``
with ``TRITON_INTERPRET`` unset (under the interpreter nothing is compiled).
This folder is not part of the installed package: it imports deepres, never
the other way round.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

__all__ = ["CompiledVariant", "compile_launch", "default_cases", "estimate_step", "main", "variant_record"]

#: What the cost model assumes a launch sees (H100/H200 SXM).
MULTIPROCESSORS = 132


@dataclass(frozen=True)
class CompiledVariant:
    """What compiling one :class:`~deepres.engines.triton.launch.KernelLaunch` gives.

    Attributes:
        registers: per thread. spill_bytes: spill stores per thread (``ptxas -v``).
        shared_bytes: per program. sass: the disassembly (``nvdisasm -g -hex``).
    """

    registers: int
    spill_bytes: int
    shared_bytes: int
    sass: str


def _check_not_interpreted() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_check needs TRITON_INTERPRET unset: under the interpreter the kernels "
                           "are not compiled")


def _ptxas_resources(ptx: str, arch: int) -> tuple[int, int]:
    from .sass import tool_path

    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    errors = []
    try:
        # The newest bundled ptxas first: Triton may emit a PTX version the older one lacks.
        for name in ("ptxas-blackwell", "ptxas"):
            try:
                ptxas = tool_path(name)
            except FileNotFoundError:
                continue
            # sm_90a and later: the arch-specific ("a") variant Triton targets (wgmma etc.).
            gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            run = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", handle.name, "-o", os.devnull],
                                 capture_output=True, text=True)
            if run.returncode == 0:
                log = run.stdout + run.stderr
                registers = int(re.search(r"Used (\d+) registers", log).group(1))
                spill = re.search(r"(\d+) bytes spill stores", log)
                return registers, int(spill.group(1)) if spill else 0
            errors.append(run.stderr.strip())
    finally:
        os.unlink(handle.name)
    raise RuntimeError(f"no bundled ptxas could assemble the kernel: {errors or 'ptxas not found'}")


def _signature(fn, launch) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as the JIT would build them for this launch's arguments."""
    import torch
    from deepres.kernels.plan import DTYPES
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    pointers = dict(launch.pointer_dtypes)
    scalars = dict(launch.scalars)
    constexprs = dict(launch.constexprs)
    signature, attrs = {}, {}
    keep = {param.name for param in fn.params if param.do_not_specialize}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        if name.endswith("_ptr"):
            value = torch.empty(4, dtype=DTYPES[pointers.get(name, "fp32")])
        else:
            value = scalars[name]
        kind, spec = native_specialize_impl(CUDABackend, value, False, name not in keep, True)
        if kind == "constexpr":
            signature[name], constexprs[name] = "constexpr", value
        else:
            signature[name] = kind
            if spec and "D" in spec:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def variant_key(launch) -> tuple:
    """What makes two launches compile to the same binary."""
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.runtime.jit import native_specialize_impl

    from deepres.engines.triton.launch import KERNELS

    keep = {param.name for param in KERNELS[launch.kernel].params if param.do_not_specialize}
    scalars = tuple((name, native_specialize_impl(CUDABackend, value, False, name not in keep, True))
                    for name, value in launch.scalars)
    return (launch.kernel, launch.constexprs, launch.num_warps, launch.num_stages, launch.pointer_dtypes,
            scalars, getattr(launch, "maxnreg", None))


# A representative launch of each variant key (the caches below key on the variant alone: launches
# that differ only in unspecialized scalars, such as a walk's layer range, share a binary).
_REPRESENTATIVE: dict = {}


@functools.lru_cache(maxsize=4096)
def _compile_cached(key: tuple, arch: int) -> CompiledVariant:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from deepres.engines.triton.launch import KERNELS

    from .sass import disassemble

    launch = _REPRESENTATIVE[key]
    fn = KERNELS[launch.kernel]
    signature, constexprs, attrs = _signature(fn, launch)
    options = {"num_warps": launch.num_warps, "num_stages": launch.num_stages}
    if getattr(launch, "maxnreg", None):
        options["maxnreg"] = launch.maxnreg
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    registers, spill = _ptxas_resources(compiled.asm["ptx"], arch)
    return CompiledVariant(registers, spill, compiled.metadata.shared, disassemble(compiled.asm["cubin"]))


def compile_launch(launch, arch: int = 90) -> CompiledVariant:
    """Compile one launch of a plan for ``sm_{arch}`` (cached per distinct variant).

    Raises:
        RuntimeError: TRITON_INTERPRET=1 is set, or no bundled ptxas works.
    """
    _check_not_interpreted()
    key = variant_key(launch)
    _REPRESENTATIVE.setdefault(key, launch)
    return _compile_cached(key, arch)


@functools.lru_cache(maxsize=1)
def loop_markers() -> dict[tuple[str, int], str]:
    """(source file name, line) of every ``# loop: NAME`` marker in the kernels → NAME."""
    import deepres.kernels

    folder = os.path.dirname(os.path.abspath(deepres.kernels.__file__))
    markers = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                for number, text in enumerate(handle, start=1):
                    match = re.search(r"#\s*loop:\s*([\w-]+)", text)
                    if match:
                        markers[(name, number)] = match.group(1)
    return markers


def name_loops(instructions, loops) -> dict:
    """SASS loop → marker name: each ``# loop:`` marker line goes to the innermost loop whose own
    instructions (nested loops excluded) come from the marked ``for`` line (its increment and compare).
    Several loops can carry one name (the loop over hidden tiles is inlined in two places)."""
    markers = loop_markers()
    claimed: set = set()
    names = {}
    for loop in sorted(loops, key=lambda x: x.tail - x.head):  # innermost first
        nested = [inner for inner in loops if loop.contains(inner)]
        owned = {(os.path.basename(ins.file), ins.line) for ins in instructions[loop.head:loop.tail + 1]
                 if not any(inner.head <= ins.index <= inner.tail for inner in nested)}
        candidates = sorted(owned & set(markers) - claimed)
        if candidates:
            # A loop the compiler removed (one iteration) leaves its marker in the enclosing
            # loop: the enclosing loop's own marker is the earlier line.
            claimed.add(candidates[0])
            names[loop] = markers[candidates[0]]
    return names


@dataclass(frozen=True)
class HotLoop:
    """A hot loop of a compiled variant, timed by the cost model (cycles are SM cycles)."""

    name: str
    instructions: int
    cycles: float
    exposed_waits: float
    exposed_wait_cycles: float
    global_bytes: int


def hot_loops(launch, compiled: CompiledVariant, resident: int = 1,
              global_bytes_per_cycle: float | None = None) -> dict[str, HotLoop]:
    """Every marked loop of the launch's kernel that its plan runs, simulated (see :mod:`.cost_model`)."""
    names = tuple(sorted(name for name, _ in launch.loops))
    key = variant_key(launch)
    _REPRESENTATIVE.setdefault(key, launch)
    return dict(_hot_loops_cached(key, launch.trips, names, resident, global_bytes_per_cycle, compiled))


@functools.lru_cache(maxsize=4096)
def _hot_loops_cached(key, trips_by_name, names, resident, global_bytes_per_cycle, compiled):
    from .cost_model import build_trace, simulate
    from .sass import find_loops, parse_sass

    num_warps = _REPRESENTATIVE[key].num_warps
    instructions = parse_sass(compiled.sass)
    loops = find_loops(instructions)
    loop_names = name_loops(instructions, loops)
    trips_of = dict(trips_by_name)
    trips = {loop: trips_of.get(name, 1) for loop, name in loop_names.items()}
    result = []
    for name in names:
        candidates = [loop for loop, loop_name in loop_names.items() if loop_name == name]
        if not candidates:
            continue
        # A source loop may appear more than once (versioned copies): keep the largest.
        hot = max(candidates, key=lambda x: x.tail - x.head)
        trace = build_trace(instructions, loops, hot, trips)
        timing = simulate(trace, num_warps, programs=resident, global_bytes_per_cycle=global_bytes_per_cycle)
        result.append((name, HotLoop(name, len(trace), timing.cycles, timing.exposed_waits,
                                     timing.exposed_wait_cycles, timing.global_bytes)))
    return tuple(result)


def launch_cost(launch, arch: int = 90, multiprocessors: int = MULTIPROCESSORS) -> tuple[float, dict]:
    """(estimated seconds, hot loops) of one launch."""
    from .cost_model import HOPPER, launch_seconds, occupancy

    hw = HOPPER
    compiled = compile_launch(launch, arch)
    fit = occupancy(compiled.registers, compiled.shared_bytes, launch.num_warps, hw)
    resident = max(1, min(fit, -(-launch.programs // multiprocessors)))
    active = min(launch.programs, multiprocessors)
    share = min(hw.sm_global_bytes_per_cycle, hw.l2_bytes_per_second / active / (hw.clock_ghz * 1e9))
    loops = hot_loops(launch, compiled, resident, share)
    counts = dict(launch.loops)
    timing = {name: (loop.cycles, counts[name], loop.global_bytes * resident) for name, loop in loops.items()
              if counts[name]}
    seconds = launch_seconds(launch.programs, timing, resident=resident, hw=hw, dram_bytes=launch.dram_bytes)
    return seconds, loops


def variant_record(launch, arch: int = 90) -> dict:
    """The JSON record of one variant: resources and, per hot loop, the cost model's figures."""
    from .cost_model import HOPPER

    compiled = compile_launch(launch, arch)
    loops = hot_loops(launch, compiled)
    options = launch.options
    scalars = dict(launch.scalars)
    weights = dict(launch.pointer_dtypes).get("u_ptr", dict(launch.pointer_dtypes).get("s_ptr", "fp32"))
    return {
        "kernel": launch.kernel,
        "variant": ",".join(f"{k}={v}" for k, v in launch.constexprs)
        + f",num_warps={launch.num_warps},num_stages={launch.num_stages}"
        + ",R=1" * (scalars.get("R") == 1),
        "D": scalars.get("D"), "M": scalars.get("M"), "B": scalars.get("B"), "R": scalars.get("R"),
        "precision": options.get("PRECISION"), "weight_dtype": weights,
        "regs": compiled.registers, "spill_bytes": compiled.spill_bytes,
        "shared_bytes": compiled.shared_bytes,
        # A program asking for more shared memory than the SM gives one cannot launch.
        "launchable": compiled.shared_bytes <= HOPPER.shared_bytes_per_program,
        "num_warps": launch.num_warps,
        # Per layer per program (all warps); the per-warp count is the hot loop's trace length.
        "sass_per_layer": sum(loop.instructions for loop in loops.values()) * launch.num_warps,
        "sass_per_layer_per_warp": {name: loop.instructions for name, loop in loops.items()},
        "exposed_waits": {name: loop.exposed_waits for name, loop in loops.items()},
        "est_cycles_per_layer": {name: round(loop.cycles, 1) for name, loop in loops.items()},
    }


def estimate_step(depth: int, batch: int, dim: int, width: int, replicas: int = 1, *,
                  precision: str | None = None, checkpoint_every: int | str | None = "sqrt",
                  weight_dtype: str = "fp32", activation: str = "tanh", arch: int = 90) -> dict:
    """Estimated forward and backward milliseconds of one training step (an estimate, not a measurement).

    Args:
        depth, batch, dim, width, replicas: L, B, D, M, R.
        precision: dot precision; default: what the launchers pick.
        checkpoint_every: as in ``deepres.residual_stack``. Default ``"sqrt"``.
        weight_dtype: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"``.
        activation: compiled in. Default ``"tanh"``.
        arch: compute capability × 10. Default 90.

    Returns:
        A dict with ``L, B, D, M, R, precision, default_precision,
        weight_dtype, checkpoint_every, every, est_forward_ms,
        est_backward_ms`` and ``launches`` (their number).
    """
    from deepres.kernels.plan import DEFAULT_PRECISION, plans

    from deepres._checks import resolve_checkpoint_every

    every = resolve_checkpoint_every(depth, checkpoint_every)
    default = DEFAULT_PRECISION
    chosen = precision or default
    forward, backward = plans(replicas, batch, dim, width, depth, every, precision=chosen,
                              weight_dtype=weight_dtype, activation=activation,
                              multiprocessors=MULTIPROCESSORS)
    forward_s = sum(launch_cost(launch, arch)[0] for launch in forward)
    backward_s = sum(launch_cost(launch, arch)[0] for launch in backward)
    return {"L": depth, "B": batch, "D": dim, "M": width, "R": replicas, "precision": chosen,
            "default_precision": default, "weight_dtype": weight_dtype, "checkpoint_every": checkpoint_every,
            "every": every, "est_forward_ms": round(forward_s * 1e3, 3),
            "est_backward_ms": round(backward_s * 1e3, 3),
            "launches": len(forward) + len(backward)}


def default_cases(quick: bool = False) -> list[dict]:
    """The (shape, options) cases whose launches are compiled: every mode of both launchers, every
    launchable precision and weight dtype at each shape of the spill table (IEEE takes float32
    weights only), every activation at D = M = 64.

    ``quick``: D = M = 64, float32 at the default precision, every mode (for tests).
    """
    from deepres.kernels.plan import DEFAULT_PRECISION, PRECISIONS

    from deepres.engines.triton import check_precision

    def launchable(precision: str, weight_dtype: str) -> bool:
        try:
            check_precision(precision, weight_dtype)
        except ValueError:
            return False
        return True

    base = {"replicas": 1, "batch": 1024, "depth": 4096, "activation": "tanh"}
    # Training step with "sqrt" checkpoints; the no-grad forward with an input-gradient-only
    # backward; every layer checkpointed (every = 1: no recompute).
    modes = [{"every": 64, "save_checkpoints": True, "need_weights": True},
             {"every": 64, "save_checkpoints": False, "need_weights": False},
             {"every": 1, "save_checkpoints": True, "need_weights": True}]
    shapes = [(64, 64)] if quick else [(16, 16), (20, 7), (64, 64), (64, 200), (128, 128), (128, 256),
                                       (256, 64), (250, 200), (256, 256)]
    cases = []
    for dim, width in shapes:
        for weight_dtype in ("fp32",) if quick else ("fp32", "bf16", "fp16"):
            for precision in (DEFAULT_PRECISION,) if quick else PRECISIONS:
                if not launchable(precision, weight_dtype):
                    continue
                for mode in modes:
                    cases.append({**base, **mode, "dim": dim, "width": width, "precision": precision,
                                  "weight_dtype": weight_dtype})
    # A single batch tile (in-kernel weight gradients), and small batches with replicas.
    for extra in ({"replicas": 1, "batch": 16}, {"replicas": 4, "batch": 64})[:1 if quick else 2]:
        cases.append({**base, **modes[0], **extra, "dim": 64, "width": 64,
                      "precision": DEFAULT_PRECISION, "weight_dtype": "fp32"})
    if not quick:
        from deepres.activations import ACTIVATIONS

        for activation in ACTIVATIONS:
            cases.append({**base, **modes[0], "dim": 64, "width": 64, "precision": DEFAULT_PRECISION,
                          "weight_dtype": "fp32", "activation": activation})
    return cases


def case_launches(case: dict) -> list:
    """Every launch the launchers make for one case (forward then backward)."""
    from deepres.kernels.plan import plans

    forward, backward = plans(case["replicas"], case["batch"], case["dim"], case["width"], case["depth"],
                              case["every"], precision=case["precision"], weight_dtype=case["weight_dtype"],
                              activation=case["activation"], multiprocessors=MULTIPROCESSORS,
                              save_checkpoints=case["save_checkpoints"], need_weights=case["need_weights"])
    return forward + backward


def default_step_cases(quick: bool = False) -> list[dict]:
    """The step estimates reported: the headline shape (L = 4096, B = 1024, D = M = 64) at every
    precision and checkpoint policy, and neighbouring shapes at the default precision.

    ``quick``: the headline shape at the default precision with ``"sqrt"`` checkpoints only.
    """
    from deepres.kernels.plan import PRECISIONS

    headline = {"depth": 4096, "batch": 1024, "dim": 64, "width": 64}
    if quick:
        return [{**headline, "precision": None, "checkpoint_every": "sqrt"}]
    cases = [{**headline, "precision": p, "checkpoint_every": e}
             for p in (None, *PRECISIONS) for e in ("sqrt", None)]
    cases += [{"depth": 4096, "batch": b, "dim": d, "width": m, "precision": None, "checkpoint_every": "sqrt"}
              for b, d, m in ((64, 64, 64), (16, 64, 64), (1024, 128, 128), (1024, 256, 256), (64, 16, 64))]
    cases += [{**headline, "precision": None, "checkpoint_every": "sqrt", "weight_dtype": "bf16"}]
    return cases


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring and ``--help``)."""
    parser = argparse.ArgumentParser(
        description="Compile every kernel variant the launchers can launch for sm_90a (no GPU needed) "
                    "and report registers, spills, shared memory and the hot loop's SASS; with --cost, also "
                    "the cost model's estimated step times. Every time printed is an estimate, not a "
                    "measurement.")
    parser.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90)")
    parser.add_argument("--cost", action="store_true", help="also estimate step times with the cost model")
    parser.add_argument("--quick", action="store_true",
                        help="only D = M = 64 at the default precision (every mode), and only the headline "
                             "step estimate: for tests")
    parser.add_argument("--json", metavar="PATH", help="write the report as JSON to PATH ('-' for stdout)")
    args = parser.parse_args(argv)
    try:
        _check_not_interpreted()
    except RuntimeError as error:
        parser.error(str(error))
    records, seen = [], set()
    for case in default_cases(args.quick):
        for launch in case_launches(case):
            key = variant_key(launch)
            if key in seen:
                continue
            seen.add(key)
            record = variant_record(launch, args.arch)
            records.append(record)
            if args.json != "-":
                print(f"{record['kernel']:16s} D={record['D']:<4} M={record['M']:<4} B={record['B']:<5} "
                      f"{record['precision']:7s} {record['weight_dtype']} regs={record['regs']:<3} "
                      f"spill={record['spill_bytes']:<5} shared={record['shared_bytes']:<6} "
                      f"sass/layer/warp={record['sass_per_layer_per_warp']} "
                      f"cycles/layer={record['est_cycles_per_layer']} exposed={record['exposed_waits']}",
                      flush=True)
    report = {"arch": f"sm_{args.arch}a", "note": "compile-level estimates from the cost model "
              "(tools/kernel_cost/cost_model.py); no GPU measured any of these numbers", "variants": records}
    if args.cost:
        from .cost_model import HOPPER

        report["hardware"] = asdict(HOPPER)
        steps = []
        for case in default_step_cases(args.quick):
            estimate = estimate_step(case["depth"], case["batch"], case["dim"], case["width"],
                                     precision=case["precision"], checkpoint_every=case["checkpoint_every"],
                                     weight_dtype=case.get("weight_dtype", "fp32"), arch=args.arch)
            steps.append(estimate)
            if args.json != "-":
                print(f"estimate L={estimate['L']} B={estimate['B']} D={estimate['D']} M={estimate['M']} "
                      f"{estimate['precision']:7s} (default {estimate['default_precision']}) "
                      f"{estimate['weight_dtype']} every={estimate['checkpoint_every']}: forward "
                      f"{estimate['est_forward_ms']:.2f} ms + backward {estimate['est_backward_ms']:.2f} ms "
                      f"(estimated)", flush=True)
        report["step_estimates"] = steps
    if args.json == "-":
        print(json.dumps(report))
    elif args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=1)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
