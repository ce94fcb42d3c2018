"""A compile-level cost model of the stack kernels: SASS in, estimated microseconds out.

No GPU is needed and none is claimed: every number this module returns is an
**estimate** from the compiled code and the constants of :class:`Hardware`,
which come from data sheets and published microbenchmarks (sources in
``docs/engines.md``, "Kernel cost model"), until a GPU measures them.

The model, per hot loop (one iteration = one layer, or one K tile of a
weight-gradient GEMM):

1. **Trace.** The loop's SASS, with nested loops (the loop over hidden tiles)
   unrolled by their trip counts, is what one warp issues per iteration.
2. **Warp simulation.** All warps of a program (and of the programs sharing
   an SM) run the trace a few times on the SM's four schedulers. A warp
   issues its next instruction when (a) its previous instruction's ``stall``
   count has elapsed — ptxas covers every fixed-latency dependency (FFMA,
   HMMA, …) with these —, (b) the scoreboards it waits on are released:
   variable-latency producers release theirs after the latencies of
   :class:`Hardware` (shared memory, L2, DRAM, MUFU), and ``DEPBAR.LE SBn, N``
   waits until at most N ``cp.async`` groups are in flight, (c) its
   scheduler has a free issue slot (one instruction per cycle) and, for HMMA
   and MUFU, a free pipe, (d) for ``BAR.SYNC``, every warp of the program has
   arrived. Shared-memory and global traffic queue on the SM's bandwidth.
   The steady-state cycles per iteration are the result; waits on global
   loads that still stall in the steady state are the *exposed* waits.
3. **Launch.** Programs are placed on SMs (occupancy from registers, shared
   memory and warps); a launch costs a fixed overhead plus, per wave of
   programs, the loops' trip counts × their cycles per iteration, each
   iteration at least the time the whole GPU's L2 (or DRAM) bandwidth needs
   for the bytes all resident programs move in it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .sass import Instruction, Loop

__all__ = ["HOPPER", "Hardware", "LoopTiming", "build_trace", "global_bytes", "launch_seconds",
           "occupancy", "simulate"]


@dataclass(frozen=True)
class Hardware:
    """Constants of the modelled GPU (defaults: one H200/H100 SXM, sm_90a).

    Sources for every value are listed in ``docs/engines.md`` ("Kernel cost
    model"); the latencies are round values of published microbenchmarks,
    the throughputs data-sheet peaks derated where noted.
    """

    name: str = "H200/H100 SXM (sm_90a), modelled"
    sms: int = 132
    clock_ghz: float = 1.83
    schedulers_per_sm: int = 4
    registers_per_sm: int = 65536
    shared_bytes_per_sm: int = 228 * 1024
    shared_bytes_per_program: int = 227 * 1024
    max_warps_per_sm: int = 64
    max_programs_per_sm: int = 32
    latency_shared: int = 33
    latency_l2: int = 270
    latency_dram: int = 600
    latency_mufu: int = 20
    latency_other: int = 24
    latency_barrier: int = 20
    latency_read: int = 6
    shared_bytes_per_cycle: int = 128
    l2_bytes_per_second: float = 5.5e12
    dram_bytes_per_second: float = 4.3e12
    sm_global_bytes_per_cycle: int = 64
    tf32_flops_per_cycle_per_scheduler: int = 512
    half_flops_per_cycle_per_scheduler: int = 1024
    mma_sync_efficiency: float = 0.5
    mufu_cycles: int = 8
    launch_microseconds: float = 4.0

    def hmma_cycles(self, opcode: str) -> float:
        """Tensor-pipe cycles one warp's ``mma.sync`` (HMMA) holds its scheduler's tensor core."""
        parts = opcode.split(".")
        m, n, k = {"1688": (16, 8, 8), "16816": (16, 8, 16), "1684": (16, 8, 4)}.get(
            parts[1] if len(parts) > 1 else "", (16, 8, 8))
        rate = (self.tf32_flops_per_cycle_per_scheduler if "TF32" in parts
                else self.half_flops_per_cycle_per_scheduler)
        return 2 * m * n * k / (rate * self.mma_sync_efficiency)


HOPPER = Hardware()

_WIDTH = re.compile(r"\.(8|16|32|64|128)(?:\.|$)")
_SHARED_OPS = ("LDS", "LDSM", "STS", "ATOMS", "STSM")
_GLOBAL_LOADS = ("LDG", "LD")
_GLOBAL_STORES = ("STG", "ST", "RED", "ATOMG", "ATOM")


def _bytes_per_lane(ins: Instruction) -> int:
    width = _WIDTH.findall(ins.opcode)
    return max(int(width[-1]) // 8, 4) if width and ins.base != "LDSM" else 4


def warp_bytes(ins: Instruction) -> int:
    """Bytes one warp moves with a memory instruction (0 for others)."""
    if ins.base == "LDSM" or ins.base == "STSM":
        matrices = ins.opcode.rsplit(".", 1)[-1]
        return 128 * (int(matrices) if matrices.isdigit() else 1)
    if ins.base in (*_SHARED_OPS, *_GLOBAL_LOADS, *_GLOBAL_STORES, "LDGSTS"):
        return 32 * _bytes_per_lane(ins)
    return 0


def global_bytes(trace: list[Instruction]) -> int:
    """Bytes one warp moves to or from global memory (L2) in one pass over ``trace``."""
    return sum(warp_bytes(ins) for ins in trace
               if ins.base in _GLOBAL_LOADS or ins.base in _GLOBAL_STORES or ins.base == "LDGSTS")


def build_trace(instructions: list[Instruction], loops: list[Loop], loop: Loop,
                trips: dict[Loop, int]) -> list[Instruction]:
    """One iteration of ``loop`` as issued: its body with every nested loop unrolled.

    Args:
        instructions, loops: from :mod:`.sass`.
        loop: the hot loop.
        trips: nested loop → its trip count (others run once).

    Returns:
        The instructions of one iteration, in issue order.
    """
    nested = sorted((inner for inner in loops if loop.contains(inner)), key=lambda x: (x.head, -x.tail))
    # Only the outermost of the nested loops: their own nests unroll recursively.
    direct = [inner for inner in nested if not any(o.contains(inner) for o in nested)]
    trace: list[Instruction] = []
    position = loop.head
    for inner in direct:
        trace += instructions[position:inner.head]
        body = build_trace(instructions, loops, inner, trips)
        trace += body * max(1, trips.get(inner, 1))
        position = inner.tail + 1
    trace += instructions[position:loop.tail + 1]
    return trace


@dataclass
class LoopTiming:
    """Result of :func:`simulate` (cycles are SM clock cycles).

    Attributes:
        cycles: steady-state cycles per iteration (all warps of the program).
        issue_cycles: instructions per iteration on the busiest scheduler (a
            lower bound: one issue per cycle).
        instructions: instructions one warp issues per iteration.
        exposed_waits: waits per iteration (per warp, averaged) that stall on
            a global load in the steady state.
        exposed_wait_cycles: the cycles those waits cost per iteration (warp 0).
        global_bytes: bytes one program moves to/from L2 per iteration.
    """

    cycles: float
    issue_cycles: int
    instructions: int
    exposed_waits: float
    exposed_wait_cycles: float
    global_bytes: int


@dataclass
class _Warp:
    scheduler: int
    program: int
    position: int = 0
    ready: float = 0.0
    scoreboards: list = field(default_factory=lambda: [[] for _ in range(7)])
    group_done: float = 0.0
    at_barrier: bool = False
    cached: tuple | None = None
    iteration_end: list = field(default_factory=list)
    exposed: int = 0
    exposed_cycles: float = 0.0


def shared_cycles(ins: Instruction, hw: Hardware = HOPPER) -> float:
    """Cycles of the SM's shared-memory pipe one warp instruction takes (wavefronts of 128 B).

    ``ldmatrix``, stores and ``cp.async`` move distinct bytes; plain loads
    (``LDS``) in Triton's FMA dots and layout conversions partly broadcast:
    counted as half their bytes, at least one wavefront (an assumption).
    """
    size = warp_bytes(ins) / hw.shared_bytes_per_cycle
    return max(1.0, size / 2) if ins.base == "LDS" else max(1.0, size)


def simulate(trace: list[Instruction], num_warps: int, *, programs: int = 1, hw: Hardware = HOPPER,
             global_bytes_per_cycle: float | None = None, iterations: int = 3,
             timeline: list | None = None) -> LoopTiming:
    """Steady-state cycles per iteration of a hot loop (see the module docstring, step 2).

    Args:
        trace: one iteration (:func:`build_trace`).
        num_warps: warps per program. programs: programs sharing the SM. Default 1.
        hw: the hardware constants. Default :data:`HOPPER`.
        global_bytes_per_cycle: this SM's share of the L2 bandwidth; default
            ``hw.sm_global_bytes_per_cycle``.
        iterations: iterations simulated; the first is warm-up. Default 3.
        timeline: if a list, (issue cycle, instruction) of warp 0's second
            iteration are appended to it (for reading where the time goes).

    Returns:
        A :class:`LoopTiming`.
    """
    n = len(trace)
    bandwidth = global_bytes_per_cycle or hw.sm_global_bytes_per_cycle
    warps = [_Warp(scheduler=w % hw.schedulers_per_sm, program=w // num_warps)
             for w in range(num_warps * programs)]
    by_scheduler = [[i for i, w in enumerate(warps) if w.scheduler == s] for s in range(hw.schedulers_per_sm)]
    by_program = [[i for i, w in enumerate(warps) if w.program == p] for p in range(programs)]
    tensor_free = [0.0] * hw.schedulers_per_sm
    mufu_free = [0.0] * hw.schedulers_per_sm
    shared_free = 0.0
    global_free = 0.0
    arrivals: list[list[int]] = [[] for _ in range(programs)]
    total = n * iterations
    last_issuer = [0] * hw.schedulers_per_sm
    depbar = [re.match(r"SB(\d),\s*(0x[0-9a-f]+|\d+)", ins.operands) if ins.base == "DEPBAR" else None
              for ins in trace]

    def blocking(w: _Warp) -> tuple[float, float, float]:
        """(earliest issue time, the time global loads allow, the time everything else allows)."""
        if w.cached is not None:
            return w.cached
        k = w.position % n
        ins = trace[k]
        other, global_wait = w.ready, 0.0
        for s in range(6):
            if ins.wait_mask >> s & 1:
                for release, from_global in w.scoreboards[s]:
                    if from_global:
                        global_wait = max(global_wait, release)
                    else:
                        other = max(other, release)
        match = depbar[k]
        if match:
            entries = sorted(r for r, _ in w.scoreboards[int(match.group(1))])
            allowed = int(match.group(2), 0)
            if len(entries) > allowed:
                global_wait = max(global_wait, entries[len(entries) - allowed - 1])
        if ins.base == "HMMA":
            other = max(other, tensor_free[w.scheduler])
        elif ins.base == "MUFU":
            other = max(other, mufu_free[w.scheduler])
        w.cached = (max(other, global_wait), global_wait, other)
        return w.cached

    t = 0.0
    while True:
        issued_any = False
        for scheduler, members in enumerate(by_scheduler):
            count = len(members)
            for step in range(count):
                i = members[(last_issuer[scheduler] + 1 + step) % count]
                w = warps[i]
                if w.position >= total or w.at_barrier:
                    continue
                earliest, global_wait, other = blocking(w)
                if earliest > t:
                    continue
                ins = trace[w.position % n]
                if n <= w.position < 2 * n and global_wait > other:
                    w.exposed += 1
                    w.exposed_cycles += global_wait - other
                for s in range(6):
                    if ins.wait_mask >> s & 1:
                        w.scoreboards[s] = [(r, g) for r, g in w.scoreboards[s] if r > t]
                w.ready = t + max(1, ins.stall)
                done, from_global = t + hw.latency_other, False
                size = warp_bytes(ins)
                base = ins.base
                if base == "LDGSTS":
                    # The copy writes shared memory when the data arrive, not at issue: its
                    # bandwidth is counted in the per-iteration floor below, not in the queue.
                    global_free = max(global_free, t) + size / bandwidth
                    w.group_done = max(w.group_done, t + hw.latency_dram, global_free)
                elif base == "LDGDEPBAR":
                    w.scoreboards[0].append((max(w.group_done, t), True))
                    w.group_done = 0.0
                elif base in _GLOBAL_LOADS:
                    global_free = max(global_free, t) + size / bandwidth
                    done, from_global = max(t + hw.latency_l2, global_free), True
                elif base in _GLOBAL_STORES:
                    global_free = max(global_free, t) + size / bandwidth
                elif base in _SHARED_OPS:
                    shared_free = max(shared_free, t) + shared_cycles(ins, hw)
                    done = shared_free + hw.latency_shared
                elif base == "MUFU":
                    mufu_free[scheduler] = t + hw.mufu_cycles
                    done = t + hw.latency_mufu
                elif base == "HMMA":
                    tensor_free[scheduler] = t + hw.hmma_cycles(ins.opcode)
                if base in ("HMMA", "MUFU"):
                    for j in members:
                        warps[j].cached = None
                if ins.write_barrier < 6 and base != "LDGDEPBAR":
                    w.scoreboards[ins.write_barrier].append((done, from_global))
                if ins.read_barrier < 6:
                    w.scoreboards[ins.read_barrier].append((t + hw.latency_read, False))
                w.cached = None
                if base == "BAR" and ".SYNC" in ins.opcode:
                    w.at_barrier = True
                    arrivals[w.program].append(i)
                    if len(arrivals[w.program]) == len(by_program[w.program]):
                        for j in arrivals[w.program]:
                            warps[j].at_barrier = False
                            warps[j].ready = max(warps[j].ready, t + hw.latency_barrier)
                            warps[j].cached = None
                        arrivals[w.program] = []
                if timeline is not None and i == 0 and n <= w.position < 2 * n:
                    timeline.append((t, ins))
                w.position += 1
                if w.position % n == 0:
                    w.iteration_end.append(t)
                last_issuer[scheduler] = members.index(i)
                issued_any = True
                break
        if all(w.position >= total for w in warps):
            break
        if issued_any:
            t += 1
            continue
        upcoming = [blocking(w)[0] for w in warps if w.position < total and not w.at_barrier]
        if not upcoming:
            raise RuntimeError("cost model simulation deadlocked (barrier never completes)")
        t = max(t + 1, math.ceil(min(upcoming)))
    cycles = max((w.iteration_end[-1] - w.iteration_end[0]) / (iterations - 1) for w in warps)
    # Shared-memory bandwidth floor: every wavefront of every warp, asynchronous copies included.
    shared_floor = sum(shared_cycles(ins, hw) for ins in trace
                       if ins.base in _SHARED_OPS or ins.base == "LDGSTS") * len(warps)
    cycles = max(cycles, shared_floor)
    per_scheduler = max(len(members) for members in by_scheduler)
    return LoopTiming(
        cycles=cycles,
        issue_cycles=per_scheduler * n,
        instructions=n,
        exposed_waits=sum(w.exposed for w in warps) / len(warps),
        exposed_wait_cycles=warps[0].exposed_cycles,
        global_bytes=global_bytes(trace) * num_warps,
    )


def occupancy(registers: int, shared_bytes: int, num_warps: int, hw: Hardware = HOPPER) -> int:
    """Programs that fit on one SM at once (registers, shared memory, warps)."""
    per_program_registers = max(registers, 1) * 32 * num_warps
    limits = [hw.registers_per_sm // per_program_registers, hw.max_warps_per_sm // num_warps,
              hw.max_programs_per_sm]
    if shared_bytes:
        limits.append(hw.shared_bytes_per_sm // shared_bytes)
    return max(1, min(limits))


def launch_seconds(programs: int, loop_cycles: dict[str, tuple[float, int, int]], *, resident: int,
                   hw: Hardware = HOPPER, dram_bytes: float = 0.0) -> float:
    """Estimated duration of one launch (see the module docstring, step 3).

    Args:
        programs: programs in the grid.
        loop_cycles: loop name → (cycles per iteration with ``resident``
            programs per SM, iterations per program, bytes one program moves
            to/from L2 per iteration).
        resident: programs sharing an SM (≤ :func:`occupancy`).
        hw: the hardware constants.
        dram_bytes: bytes the launch must read from or write to DRAM in all
            (a bandwidth floor for the whole launch).

    Returns:
        Seconds.
    """
    concurrent = min(programs, hw.sms * resident)
    waves = math.ceil(programs / concurrent)
    cycles = 0.0
    for cycles_per_iteration, iterations, l2_bytes in loop_cycles.values():
        # All resident programs move their bytes through the L2 in the same iteration.
        l2_floor = concurrent * l2_bytes / hw.l2_bytes_per_second * hw.clock_ghz * 1e9
        cycles += iterations * max(cycles_per_iteration, l2_floor)
    # Prologue and epilogue: the first loads and the last stores of each wave.
    cycles += 2 * hw.latency_dram
    seconds = waves * cycles / (hw.clock_ghz * 1e9)
    return hw.launch_microseconds * 1e-6 + max(seconds, dram_bytes / hw.dram_bytes_per_second)
