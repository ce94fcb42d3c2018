"""Compile the stack kernels for a GPU architecture without a GPU, and report their resources.

Triton's interpreter accepts programs that the GPU compiler rejects or that
spill registers, so this builds the real sm_XX binaries (the Triton wheel
bundles ptxas) with the tiles :func:`deepres.kernels.launch.choose_config`
picks, and reads registers and spill bytes from ``ptxas -v``. The numbers
behind the tile table in :mod:`deepres.kernels.launch` come from here.

Run as ``python -m deepres.kernels.compile_check [--arch 90] [--json]`` with
``TRITON_INTERPRET`` unset (under the interpreter the kernels are not
compiled at all).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

__all__ = ["KernelReport", "compile_stack_kernels", "main"]


@dataclass(frozen=True)
class KernelReport:
    """Resources of one compiled kernel.

    Attributes:
        kernel: ``"forward"`` or ``"backward"``. dim, width: D, M.
        options: the tiles and compile-time options used.
        registers: registers per thread. spill_bytes: spill stores per thread.
        shared_bytes: shared memory per program.
    """

    kernel: str
    dim: int
    width: int
    options: dict
    registers: int
    spill_bytes: int
    shared_bytes: int


def _ptxas_candidates() -> list[str]:
    import triton

    folder = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    return [os.path.join(folder, name) for name in ("ptxas-blackwell", "ptxas")
            if os.path.exists(os.path.join(folder, name))]


def _resources(ptx: str, arch: int) -> tuple[int, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as handle:
        handle.write(ptx)
    errors = []
    try:
        # The newest bundled ptxas first: Triton may emit a PTX version the older one lacks.
        for ptxas in _ptxas_candidates():
            # sm_90a and later: the arch-specific ("a") variant Triton targets (wgmma etc.).
            name = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
            run = subprocess.run([ptxas, "-v", f"--gpu-name={name}", handle.name, "-o", os.devnull],
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


def compile_stack_kernels(
    dim: int,
    width: int,
    *,
    batch: int = 1024,
    replicas: int = 1,
    activation: str = "tanh",
    allow_tf32: bool = False,
    weight_dtype: str = "fp32",
    arch: int = 90,
    multiprocessors: int = 132,
) -> list[KernelReport]:
    """Compile the forward and backward kernels for ``sm_{arch}`` and report their resources.

    Args:
        dim: D. width: M. batch: B (only picks the batch tile). Default 1024.
        replicas: R (only picks the batch tile). Default 1.
        activation: the activation compiled in. Default ``"tanh"``.
        allow_tf32: TF32 dots instead of IEEE float32. Default False.
        weight_dtype: Triton name of the weights' dtype: ``"fp32"`` (default),
            ``"fp16"`` or ``"bf16"``.
        arch: compute capability × 10, e.g. 90 (Hopper, default) or 80.
        multiprocessors: SM count assumed by the tile choice. Default 132 (H100 SXM, H200).

    Returns:
        Two :class:`KernelReport`, forward then backward (atomic weight gradients).

    Raises:
        RuntimeError: TRITON_INTERPRET=1 is set, or no bundled ptxas works.

    Example:
        >>> [r.spill_bytes for r in compile_stack_kernels(64, 64)]
        [0, 0]
    """
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("compile_stack_kernels needs TRITON_INTERPRET unset: under the interpreter "
                           "the kernels are not compiled")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .launch import _choose_config_cached
    from .stack_backward import stack_backward_kernel
    from .stack_forward import stack_forward_kernel

    precision = "tf32" if allow_tf32 else "ieee"
    scalars = {"R": "i32", "B": "i32", "D": "i32", "M": "i32", "L": "i32", "every": "i32",
               "c": "fp32", "a": "fp32"}
    forward_signature = {"h0_ptr": "*fp32", "u_ptr": f"*{weight_dtype}", "v_ptr": f"*{weight_dtype}",
                         "out_ptr": "*fp32", "ckpt_ptr": "*fp32", **scalars}
    backward_signature = {"g_ptr": "*fp32", "ckpt_ptr": "*fp32", "scratch_ptr": "*fp32",
                          "u_ptr": f"*{weight_dtype}", "v_ptr": f"*{weight_dtype}", "grad_h_ptr": "*fp32",
                          "grad_u_ptr": "*fp32", "grad_v_ptr": "*fp32", **scalars}
    reports = []
    for kernel, fn, signature, backward in (("forward", stack_forward_kernel, forward_signature, False),
                                            ("backward", stack_backward_kernel, backward_signature, True)):
        cfg = _choose_config_cached(batch, dim, width, replicas, multiprocessors, backward)
        constexprs = {"ACT": activation, "PRECISION": precision, "ONE_M_TILE": width <= cfg.block_m,
                      "BLOCK_B": cfg.block_b, "BLOCK_D": cfg.block_d, "BLOCK_M": cfg.block_m}
        if backward:
            constexprs.update(RECOMPUTE=True, NEED_WEIGHTS=True, W_MODE="atomic")
        else:
            constexprs.update(SAVE_CHECKPOINTS=True)
        signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
        # What the JIT specializes at launch: 16-byte aligned pointers (fresh torch allocations) and the
        # integer arguments divisible by 16 (this lets it vectorize the masked loads).
        values = {"B": batch, "D": dim, "M": width}
        attrs = {(index,): [["tt.divisibility", 16]] for index, (name, kind) in enumerate(signature.items())
                 if kind.startswith("*") or (values.get(name, 1) % 16 == 0 and name in values)}
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        registers, spill = _resources(compiled.asm["ptx"], arch)
        options = {**constexprs, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages,
                   "weight_dtype": weight_dtype}
        reports.append(KernelReport(kernel, dim, width, options, registers, spill, compiled.metadata.shared))
    return reports


def main(argv: list[str] | None = None) -> int:
    """Command line: print the resources of the kernels for a few (D, M) shapes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability × 10 (default 90)")
    parser.add_argument("--shapes", default="16x16,64x64,64x200,128x128,256x256",
                        help="comma-separated DxM list (default %(default)s)")
    parser.add_argument("--activation", default="tanh", help="activation compiled in (default tanh)")
    parser.add_argument("--tf32", action="store_true", help="TF32 dots instead of IEEE float32")
    parser.add_argument("--weight-dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = parser.parse_args(argv)
    reports = []
    for shape in args.shapes.split(","):
        dim, width = (int(part) for part in shape.lower().split("x"))
        reports += compile_stack_kernels(dim, width, activation=args.activation, allow_tf32=args.tf32,
                                         weight_dtype=args.weight_dtype, arch=args.arch)
    if args.json:
        print(json.dumps([asdict(report) for report in reports]))
    else:
        for r in reports:
            o = r.options
            print(f"{r.kernel:8s} D={r.dim:<4d} M={r.width:<4d} tiles=({o['BLOCK_B']},{o['BLOCK_D']},"
                  f"{o['BLOCK_M']}) warps={o['num_warps']:<2d} registers={r.registers:<3d} "
                  f"spill={r.spill_bytes} B shared={r.shared_bytes} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
