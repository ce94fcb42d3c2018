"""Read the SASS of a compiled kernel: instructions, their scheduling control bits, loops.

The cost model (:mod:`.cost_model`) needs, for the hot loop of each kernel,
the instructions one warp issues per layer and how the compiler scheduled them.
``nvdisasm`` (shipped in the Triton wheel, ``triton/backends/nvidia/bin``)
prints each instruction with its 128-bit encoding (``-hex``) and the source
line it comes from (``-g``). From sm_70 on, the top bits of the encoding are
the scheduling *control bits* that ptxas writes for the hardware (layout from
Jia et al., "Dissecting the NVIDIA Volta GPU Architecture via
Microbenchmarking", 2018, §2; unchanged through sm_90):

* bits 105–108 ``stall``: cycles before the warp may issue its next
  instruction (ptxas covers every fixed-latency dependency with these);
* bits 110–112 ``write_barrier`` / 113–115 ``read_barrier``: the scoreboard
  (0–5, 7 = none) that a variable-latency instruction (loads, shared memory,
  MUFU, …) releases when its result is written / its sources are read;
* bits 116–121 ``wait_mask``: the scoreboards this instruction waits for;
* bit 109 ``yield`` and bits 122–125 ``reuse`` (register-reuse cache).

A loop is a backward branch; its source line is the line of the instructions
just before the branch (the ``for`` statement's increment and compare), so a
loop of the SASS can be matched with a ``for`` of the kernel's source.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

__all__ = ["Instruction", "Loop", "disassemble", "find_loops", "parse_sass", "tool_path"]

_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;\s*/\* (0x[0-9a-f]{16}) \*/")
_CONTROL = re.compile(r"^\s*/\* (0x[0-9a-f]{16}) \*/\s*$")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_LINE = re.compile(r'//## File "(.*)", line (\d+)')
_PREDICATE = re.compile(r"(@!?U?P[T0-9]+)\s+(.*)")
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction and its control bits.

    Attributes:
        index: position in the function. address: byte offset.
        predicate: guard such as ``@!P0`` or ``""``. opcode: e.g.
            ``"HMMA.1688.F32.TF32"``. operands: the rest of the text.
        stall, yield_, write_barrier, read_barrier, wait_mask, reuse: the
            control bits (see the module docstring).
        file, line: the source position (``""``, 0 when unknown).
        target: the label a branch jumps to, else ``""``.
    """

    index: int
    address: int
    predicate: str
    opcode: str
    operands: str
    stall: int
    yield_: int
    write_barrier: int
    read_barrier: int
    wait_mask: int
    reuse: int
    file: str
    line: int
    target: str

    @property
    def base(self) -> str:
        """The opcode without modifiers, e.g. ``"HMMA"``."""
        return self.opcode.split(".")[0]


@dataclass(frozen=True)
class Loop:
    """A backward branch: instructions ``head`` .. ``tail`` (inclusive) repeat.

    Attributes:
        head, tail: instruction indices. line: source line of the back edge.
    """

    head: int
    tail: int
    line: int

    def contains(self, other: Loop) -> bool:
        """True when ``other`` is nested in this loop (and is not the same loop)."""
        return self.head <= other.head and other.tail <= self.tail and (self.head, self.tail) != (
            other.head, other.tail)


def tool_path(name: str) -> str:
    """Path of a CUDA binary utility (``ptxas``, ``nvdisasm``) bundled with Triton.

    Raises:
        FileNotFoundError: Triton's NVIDIA backend or the tool is missing.
    """
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name} is not bundled with this triton install (looked for {path})")
    return path


def disassemble(cubin: bytes) -> str:
    """``nvdisasm -g -hex -c`` of a cubin: SASS with encodings and source lines."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(cubin)
    try:
        run = subprocess.run([tool_path("nvdisasm"), "-g", "-hex", "-c", handle.name],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(handle.name)
    return run.stdout


def parse_sass(text: str) -> list[Instruction]:
    """Parse the output of :func:`disassemble` (one kernel) into instructions.

    Example:
        >>> line = "        /*0010*/                   S2R R8, SR_TID.X ;    /* 0x0000000000087919 */"
        >>> [i.write_barrier for i in parse_sass(line + "\\n    /* 0x000e6e0000002100 */\\n")]
        [1]
    """
    lines = text.splitlines()
    out: list[Instruction] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    file, line_no = "", 0
    i = 0
    while i < len(lines):
        text_line = lines[i]
        label = _LABEL.match(text_line)
        if label:
            pending.append(label.group(1))
        position = _LINE.search(text_line)
        if position:
            file, line_no = position.group(1), int(position.group(2))
        match = _INSTRUCTION.search(text_line)
        if not match or i + 1 >= len(lines) or not _CONTROL.match(lines[i + 1]):
            i += 1
            continue
        control = int(_CONTROL.match(lines[i + 1]).group(1), 16) >> 41
        i += 2
        for name in pending:
            labels[name] = len(out)
        pending = []
        body = match.group(2).strip()
        guarded = _PREDICATE.match(body)
        predicate, body = (guarded.group(1), guarded.group(2)) if guarded else ("", body)
        opcode, _, operands = body.partition(" ")
        target = _TARGET.search(operands)
        out.append(Instruction(
            index=len(out), address=int(match.group(1), 16), predicate=predicate, opcode=opcode,
            operands=operands.strip(), stall=control & 15, yield_=(control >> 4) & 1,
            write_barrier=(control >> 5) & 7, read_barrier=(control >> 8) & 7,
            wait_mask=(control >> 11) & 63, reuse=(control >> 17) & 15, file=file, line=line_no,
            target=target.group(1) if target else "",
        ))
    # Resolve branch targets to instruction indices (kept in the operands' label name).
    return [_with_target_index(ins, labels) for ins in out]


def _with_target_index(ins: Instruction, labels: dict[str, int]) -> Instruction:
    if not ins.target:
        return ins
    index = labels.get(ins.target)
    return Instruction(**{**ins.__dict__, "target": str(index) if index is not None else ""})


def find_loops(instructions: list[Instruction]) -> list[Loop]:
    """Every backward branch as a :class:`Loop` (a branch to itself, the trap after EXIT, is skipped)."""
    loops = []
    for ins in instructions:
        if ins.base == "BRA" and ins.target:
            head = int(ins.target)
            if head < ins.index:
                # The back edge's source line: the last annotated instruction before the branch.
                loops.append(Loop(head=head, tail=ins.index, line=instructions[max(ins.index - 1, 0)].line))
    return loops
