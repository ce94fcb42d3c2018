"""Output of a benchmark report: readable table, JSON, CSV and log-log PNG plots.

The report is the dict returned by :func:`deepres.benchmark.harness.run_benchmark`. Files are
written by the one rule of :mod:`deepres.study.shared.files` (atomically, never through a link,
mode 0o666 less the umask).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from deepres.study.shared.files import atomic_write, write_text

__all__ = ["CSV_COLUMNS", "format_table", "write_csv", "write_json", "write_plot"]

#: Columns of the CSV file, one row per (provider, case).
CSV_COLUMNS: tuple[str, ...] = (
    "provider", "workload", "mode", "depth", "batch", "dim", "hidden", "replicas", "activation", "dtype",
    "device", "status", "reason", "median_s", "p10_s", "p90_s", "min_s", "repeats", "samples_per_s",
    "layer_updates_per_s", "tflops", "gbytes_per_s", "peak_bytes", "peak_method", "saved_bytes",
    "rel_err", "rel_err_vs", "speedup_vs_baseline", "peak_ratio_vs_baseline", "saved_ratio_vs_baseline",
    "first_step_s", "compile_s",
)

_MIB = 2.0**20


def _fmt(value: object, spec: str, missing: str = "–") -> str:
    if value is None:
        return missing
    return format(value, spec)


def _mib(value: object) -> str:
    return "–" if value is None else f"{value / _MIB:.1f}"


def _load(values: object) -> str:
    return "?" if not values else "/".join(f"{v:.2f}" for v in values)


def _ratio(value: object) -> str:
    return "–" if value is None else f"{value:.2f}×"


def format_table(report: dict[str, object]) -> str:
    """A plain-text table of the results, then the growth exponents and the skipped providers.

    Columns: provider, L, B, D, M, R; median time (ms) and the 10–90 % range;
    samples/s; layer-updates/s; speedup against the baseline (baseline time /
    time); peak memory of the step (MiB) and the baseline's peak over it;
    bytes saved for backward (MiB) and the baseline's over it; relative
    error against the first provider that ran the case; where a provider
    compiles (``torch.compile``), the compile time of its first step (first
    step − median step); on CUDA, achieved TFLOP/s and GB/s as a share of the
    measured ceilings.
    """
    env = report["environment"]
    ceilings = report["ceilings"]
    cuda = env["device"] == "cuda"
    lines = [
        f"deepres bench — {env['device_name']} ({env['cores']} cores, {env['torch_threads']} threads), "
        f"torch {env['versions']['torch']}, commit {str(env['git_commit'])[:10]}"
        f"{' (dirty)' if env['git_dirty'] else ''}",
        f"load average {_load(env.get('load_average'))} at start, {_load(env.get('load_average_end'))} at end"
        " (other processes share this machine)",
        f"ceilings: copy {ceilings['copy_gbytes_per_s']:.1f} GB/s, "
        f"matmul {ceilings['matmul_tflops']:.3f} TFLOP/s;"
        f" baseline for ratios: {report['baseline']}",
    ]
    header = ["provider", "L", "B", "D", "M", "R", "median ms", "p10–p90 ms", "samples/s", "layer-upd/s",
              "speedup", "peak MiB", "peak ×less", "saved MiB", "saved ×less", "rel err"]
    compiled = any(row.get("compile_s") is not None for row in report["results"])
    if compiled:
        header.append("compile s")
    if cuda:
        header += ["TFLOP/s", "%peak", "GB/s", "%copy"]
    rows = [header]
    skipped = []
    for row in report["results"]:
        case = row["case"]
        if row["status"] != "ok":
            skipped.append(f"  {row['provider']} (L={case['depth']}, R={case['replicas']}): "
                           f"{row['status']}: {row['reason']}")
            continue
        t = row["time"]
        cells = [
            row["provider"], str(case["depth"]), str(case["batch"]), str(case["dim"]), str(case["hidden"]),
            str(case["replicas"]), f"{t['median'] * 1e3:.2f}", f"{t['p10'] * 1e3:.2f}–{t['p90'] * 1e3:.2f}",
            f"{row['samples_per_s']:.3g}", f"{row['layer_updates_per_s']:.3g}",
            _ratio(row["speedup_vs_baseline"]), _mib(row["peak_bytes"]),
            _ratio(row["peak_ratio_vs_baseline"]),
            _mib(row["saved_bytes"]), _ratio(row["saved_ratio_vs_baseline"]), _fmt(row["rel_err"], ".1e"),
        ]
        if compiled:
            cells.append(_fmt(row.get("compile_s"), ".2f"))
        if cuda:
            cells += [f"{row['tflops']:.3f}", f"{100 * row['tflops'] / ceilings['matmul_tflops']:.1f}",
                      f"{row['gbytes_per_s']:.1f}",
                      f"{100 * row['gbytes_per_s'] / ceilings['copy_gbytes_per_s']:.1f}"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for index, cells in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    if report["growth"]:
        lines.append("")
        lines.append("growth exponents in L (log-log least squares over the depth grid):")
        for fit in report["growth"]:
            lines.append(f"  {fit['provider']:<26} L={fit['depths']}: "
                         f"time {_fmt(fit['time_exponent'], '.2f')}, "
                         f"peak {_fmt(fit['peak_bytes_exponent'], '.2f')}, "
                         f"saved {_fmt(fit['saved_bytes_exponent'], '.2f')}")
    if skipped:
        lines.append("")
        lines.append("not measured:")
        lines.extend(sorted(set(skipped)))
    return "\n".join(lines)


def write_json(report: dict[str, object], path: str | Path) -> None:
    """Write the full report (environment, ceilings, config, results, growth) as JSON."""
    write_text(path, json.dumps(report, indent=1) + "\n")


def _csv_row(row: dict[str, object]) -> dict[str, object]:
    case = row["case"]
    t = row["time"] or {}
    flat = {name: case.get(name) for name in ("workload", "mode", "depth", "batch", "dim", "hidden",
                                               "replicas", "activation", "dtype", "device")}
    flat.update({f"{k}_s": t.get(k) for k in ("median", "p10", "p90", "min")})
    flat["repeats"] = t.get("repeats")
    for name in CSV_COLUMNS:
        if name not in flat:
            flat[name] = row.get(name)
    return flat


def write_csv(report: dict[str, object], path: str | Path) -> None:
    """Write one CSV row per (provider, case) with the columns of :data:`CSV_COLUMNS`."""
    sink = io.StringIO(newline="")
    writer = csv.DictWriter(sink, fieldnames=list(CSV_COLUMNS))
    writer.writeheader()
    for row in report["results"]:
        writer.writerow(_csv_row(row))
    write_text(path, sink.getvalue())


def _series(report: dict[str, object], metric: str) -> dict[str, tuple[Sequence[int], Sequence[float]]]:
    groups: dict[str, list[tuple[int, float]]] = {}
    keys = ("batch", "dim", "hidden", "replicas")
    varying = [k for k in keys if len({r["case"][k] for r in report["results"]}) > 1]
    for row in report["results"]:
        if row["status"] != "ok":
            continue
        value = row["time"]["median"] if metric == "time" else row[metric]
        if value is None or value <= 0:
            continue
        label = row["provider"] + "".join(f" {k[0].upper()}={row['case'][k]}" for k in varying)
        groups.setdefault(label, []).append((row["case"]["depth"], value))
    return {label: tuple(zip(*sorted(points), strict=True)) for label, points in groups.items()}


def write_plot(report: dict[str, object], path: str | Path) -> None:
    """Log-log PNG: time per step vs L and peak memory vs L, one line per provider.

    Needs matplotlib (``pip install 'deepres[plot]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    panels = (("time", "time per step (s)"), ("peak_bytes", "peak memory of the step (bytes)"),
              ("saved_bytes", "bytes saved for backward"))
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for name, (depths, values) in sorted(_series(report, metric).items()):
            ax.plot(depths, values, marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("depth L")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    env = report["environment"]
    fig.suptitle(f"deepres bench ({report['config']['workload']}) on {env['device_name']}", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=110))
    plt.close(fig)
