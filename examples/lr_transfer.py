"""Learning-rate transfer across depth: DeepResNet classifiers on scikit-learn's digits, minibatch AdamW.

Every network is trained with a plain ``torch.optim.AdamW`` over
``deepres.param_groups(net, lr, optimizer="adamw", weight_decay=...)`` and a
cosine learning-rate schedule, at each depth L and each base learning rate η
of a grid in factors of 2, for each parameterization. The seeds are trained
as replicas of one network (independent initial u, v; shared embedding,
readout and minibatch order). It writes, under --out:

  lr_transfer.json   the configuration, the environment, every final loss and accuracy,
                     the best η per depth, and the wall time
  lr_transfer.csv    one row per (parameterization, depth, η, seed)
  lr_transfer.png    final training loss against η, one curve per depth, one panel per
                     parameterization (needs matplotlib)

Needs scikit-learn (bundled data set, no download): pip install "deepres[digits]".

    python examples/lr_transfer.py                      # the committed results (about 13 min on 2 CPU cores)
    python examples/lr_transfer.py --depths 4 16 --steps 20 --out /tmp/lr   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import deepres

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "results" / "lr-transfer"
PARAMETERIZATIONS = ("mlu", "depth_mup", "standard")
#: Grids around each parameterization's optimum, found in a first pass over 2^-12..2^3 at L = 16 and 64
#: (and 256, 1024 for standard): plain Adam on the standard ResNet needs a far smaller η.
DEFAULT_GRIDS = ("mlu=-3:3", "depth_mup=-2:4", "standard=-10:-4")


def parse_grids(specs: list[str]) -> dict[str, list[int]]:
    """{parameterization: [k, ...]} from ``[NAME=]LO:HI`` specs; ValueError naming a bad spec."""
    grids: dict[str, list[int]] = {}
    for spec in specs:
        name, _, span = spec.rpartition("=")
        names = [name] if name else list(PARAMETERIZATIONS)
        try:
            lo, hi = (int(part) for part in span.split(":"))
        except ValueError:
            raise ValueError(f"--lr-exponents must be [NAME=]LO:HI with integers LO ≤ HI; "
                             f"got {spec!r}") from None
        if lo > hi or (name and name not in PARAMETERIZATIONS):
            raise ValueError(f"--lr-exponents must be [NAME=]LO:HI with integers LO ≤ HI and NAME among "
                             f"{PARAMETERIZATIONS}; got {spec!r}")
        for each in names:
            grids[each] = list(range(lo, hi + 1))
    return grids


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lr_transfer.py", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameterizations", nargs="+", default=list(PARAMETERIZATIONS), metavar="NAME",
                        help=f"any of {', '.join(PARAMETERIZATIONS)} (default: all three)")
    parser.add_argument("--depths", nargs="+", type=int, default=[16, 64, 256, 1024], metavar="L",
                        help="numbers of residual blocks (default: 16 64 256 1024)")
    parser.add_argument("--lr-exponents", nargs="+", default=list(DEFAULT_GRIDS), metavar="[NAME=]LO:HI",
                        help="the grid of base learning rates η = 2^k, k = LO..HI, for one parameterization "
                             "(NAME=LO:HI) or for all (write --lr-exponents=LO:HI when LO < 0); later specs "
                             "win (default: " + " ".join(DEFAULT_GRIDS) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="independent networks per run (default 3)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split, the weights and the minibatch order (default 0)")
    parser.add_argument("--steps", type=int, default=100, help="AdamW steps per run (default 100)")
    parser.add_argument("--batch", type=int, default=64, help="minibatch size (default 64)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension D (default 16)")
    parser.add_argument("--hidden", type=int, default=4, help="units per block M (default 4)")
    parser.add_argument("--alpha", type=float, default=1.0,
                        help="scale α of the parameterization (default 1)")
    parser.add_argument("--weight-decay", type=float, default=1e-2,
                        help="base weight decay λ: every weight shrinks by η·λ per step (default 0.01)")
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                        help="learning-rate schedule over the steps (default cosine, to 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="precision (default float32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads on the CPU (default 1: the layers are tiny)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--no-plot", action="store_true", help="skip the figure")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def check_args(args: argparse.Namespace) -> str | None:
    """The first bad option as a one-line message, or None."""
    for name in args.parameterizations:
        if name not in PARAMETERIZATIONS:
            return f"--parameterizations must be among {PARAMETERIZATIONS}; got {name!r}"
    for option in ("seeds", "steps", "batch", "dim", "hidden", "threads"):
        if getattr(args, option) < 1:
            return f"--{option} must be ≥ 1; got {getattr(args, option)}"
    if any(depth < 1 for depth in args.depths):
        return f"--depths must be ≥ 1; got {args.depths}"
    try:
        grids = parse_grids(args.lr_exponents)
    except ValueError as error:
        return str(error)
    for name in args.parameterizations:
        if name not in grids:
            return f"--lr-exponents has no grid for {name!r}; got {' '.join(args.lr_exponents)}"
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        return f"--alpha must be finite and > 0; got {args.alpha}"
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        return f"--weight-decay must be finite and ≥ 0; got {args.weight_decay}"
    try:
        device = torch.device(args.device)
    except RuntimeError:
        return f"--device must be a torch device; got {args.device!r}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return f"--device {args.device}: CUDA is not available"
    return None


def load_data(seed: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Digits (1797 8×8 images, 10 classes): 80/20 split, features centered by the training mean and
    divided by one global standard deviation (some pixels are constant)."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_train = round(0.8 * len(x))
    mean = x[:n_train].mean(0)
    scale = (x[:n_train] - mean).std()
    x = (x - mean) / scale
    return {"x_train": x[:n_train].to(device, dtype), "y_train": y[:n_train].to(device),
            "x_test": x[n_train:].to(device, dtype), "y_test": y[n_train:].to(device)}


def replica_losses(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each replica, (R,)."""
    logits = net(x)                                            # (R, N, 10)
    per_sample = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.expand(logits.shape[0], -1),
                                                   reduction="none")
    return per_sample.mean(-1)


@torch.no_grad()
def evaluate(net: torch.nn.Module, data: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    train = replica_losses(net, data["x_train"], data["y_train"])
    logits = net(data["x_test"])
    test = torch.nn.functional.cross_entropy(logits.transpose(1, 2),
                                             data["y_test"].expand(logits.shape[0], -1), reduction="none")
    accuracy = (logits.argmax(-1) == data["y_test"]).double().mean(-1)
    return {"train_loss": train.double().tolist(), "test_loss": test.mean(-1).double().tolist(),
            "test_accuracy": accuracy.tolist()}


def minibatches(n: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """The same index batches for every run: epochs of a seeded permutation, cut into batches."""
    generator = torch.Generator().manual_seed(seed + 1)
    out: list[torch.Tensor] = []
    while len(out) < steps:
        perm = torch.randperm(n, generator=generator)
        out.extend(perm[i:i + batch] for i in range(0, n - batch + 1, batch))
    return out[:steps]


def train_run(name: str, depth: int, lr: float, args: argparse.Namespace, data: dict[str, torch.Tensor],
              batches: list[torch.Tensor], advance) -> dict:
    """Train ``--seeds`` networks of one shape at one η; returns their final losses and accuracies."""
    dtype = getattr(torch, args.dtype)
    generator = torch.Generator().manual_seed(args.seed)
    net = deepres.DeepResNet(data["x_train"].shape[1], 10, depth, args.dim, args.hidden, alpha=args.alpha,
                             parameterization=name, replicas=args.seeds, dtype=dtype,
                             generator=generator).to(args.device)
    optimizer = torch.optim.AdamW(deepres.param_groups(net, lr, optimizer="adamw",
                                                       weight_decay=args.weight_decay))
    if args.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * k / args.steps)))
    else:
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
    x, y = data["x_train"], data["y_train"]
    start = time.perf_counter()
    for index in batches:
        index = index.to(x.device)
        optimizer.zero_grad(set_to_none=True)
        losses = replica_losses(net, x[index], y[index])
        # Replicas are independent: the sum's gradient is each one's own. A replica that diverged
        # is selected out (never multiplied by 0, which would give NaN).
        torch.where(torch.isfinite(losses), losses, torch.zeros_like(losses)).sum().backward()
        optimizer.step()
        schedule.step()
        advance(depth)
    result = evaluate(net, data)
    result["seconds"] = time.perf_counter() - start
    return result


def summarize(runs: list[dict], names: list[str], depths: list[int]) -> dict:
    """Best η per (parameterization, depth): the lowest mean final training loss over the seeds
    (a run with a non-finite seed counts as diverged)."""
    best: dict[str, dict[str, dict]] = {}
    for name in names:
        best[name] = {}
        for depth in depths:
            candidates = [r for r in runs if r["parameterization"] == name and r["depth"] == depth
                          and r["mean_train_loss"] is not None]
            if not candidates:
                best[name][str(depth)] = None
                continue
            top = min(candidates, key=lambda r: r["mean_train_loss"])
            best[name][str(depth)] = {"lr": top["lr"], "log2_lr": top["log2_lr"],
                                      "mean_train_loss": top["mean_train_loss"],
                                      "mean_test_accuracy": top["mean_test_accuracy"]}
    return best


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = report["config"]["parameterizations"]
    depths = report["config"]["depths"]
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4.2), squeeze=False)
    colors = plt.cm.viridis([i / max(1, len(depths) - 1) * 0.9 for i in range(len(depths))])
    for ax, name in zip(axes[0], names, strict=True):
        for color, depth in zip(colors, depths, strict=True):
            rows = sorted((r for r in report["runs"]
                           if r["parameterization"] == name and r["depth"] == depth), key=lambda r: r["lr"])
            k = [r["log2_lr"] for r in rows]
            mean = [r["mean_train_loss"] if r["mean_train_loss"] is not None else math.nan for r in rows]
            ax.plot(k, mean, "o-", color=color, ms=3.5, label=f"L = {depth}")
            top = report["best"][name][str(depth)]
            if top is not None:
                ax.plot([top["log2_lr"]], [top["mean_train_loss"]], "*", color=color, ms=13, mec="k", mew=0.6)
        ax.axhline(math.log(10), color="grey", ls=":", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("log2 base learning rate η")
        ax.set_title(f"{name}: AdamW over deepres.param_groups")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel(f"training loss after {report['config']['steps']} steps (mean of seeds)")
    axes[0][0].legend(title="depth (★ best η)", fontsize=8, loc="upper right")
    fig.suptitle(f"digits, D = {report['config']['dim']}, M = {report['config']['hidden']}, "
                 f"{report['config']['seeds']} seeds; dotted: chance (ln 10); gaps: diverged", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def environment(device: str) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"deepres": deepres.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "device": device, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "git_commit": commit}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = check_args(args)
    if problem is not None:
        print(f"lr_transfer.py: {problem}", file=sys.stderr)
        return 2
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print('lr_transfer.py: needs scikit-learn for the digits data: pip install "deepres[digits]"',
              file=sys.stderr)
        return 2
    if torch.device(args.device).type == "cpu":
        # NOTE: the layers are tiny (64 samples, D = 16, M = 4): intra-op threads only add spin-waits.
        # Measured on the 2-core CPU at load 2.6, L = 256, 3 replicas: 0.19 ms per layer-step with
        # 1 thread, 6.3 ms with 2.
        torch.set_num_threads(args.threads)
    data = load_data(args.seed, torch.device(args.device), getattr(torch, args.dtype))
    n_train = len(data["x_train"])
    if args.batch > n_train:
        print(f"lr_transfer.py: --batch must be ≤ the {n_train} training samples; got {args.batch}",
              file=sys.stderr)
        return 2
    batches = minibatches(n_train, args.batch, args.steps, args.seed)
    grids = parse_grids(args.lr_exponents)
    plan = [(name, depth, k) for name in args.parameterizations for depth in args.depths for k in grids[name]]
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(depth for _, depth, _ in plan) * args.steps, unit="layer-step",
               disable=args.no_progress, dynamic_ncols=True)
    runs = []
    start = time.perf_counter()
    for name, depth, k in plan:
        bar.set_description(f"{name} L={depth} η=2^{k}")
        result = train_run(name, depth, 2.0 ** k, args, data, batches, bar.update)
        finite = all(math.isfinite(v) for v in result["train_loss"])
        runs.append({"parameterization": name, "depth": depth, "lr": 2.0 ** k, "log2_lr": k, **result,
                     "mean_train_loss": sum(result["train_loss"]) / args.seeds if finite else None,
                     "mean_test_accuracy": sum(result["test_accuracy"]) / args.seeds})
    bar.close()
    wall = time.perf_counter() - start
    for run in runs:  # JSON has no NaN: a diverged seed is null
        for key in ("train_loss", "test_loss"):
            run[key] = [v if math.isfinite(v) else None for v in run[key]]
    best = summarize(runs, args.parameterizations, args.depths)
    config = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
              if key not in ("out", "no_plot", "no_progress")}
    config["lr_exponents"] = {name: grids[name] for name in args.parameterizations}
    config["data"] = {"name": "sklearn.datasets.load_digits", "train": n_train, "test": len(data["x_test"])}
    report = {"config": config, "environment": environment(args.device), "wall_seconds": wall,
              "best": best, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lr_transfer.json").write_text(json.dumps(report, indent=1) + "\n")
    with open(args.out / "lr_transfer.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["parameterization", "depth", "lr", "seed", "train_loss", "test_loss",
                         "test_accuracy"])
        for run in runs:
            for seed in range(args.seeds):
                writer.writerow([run["parameterization"], run["depth"], run["lr"], seed,
                                 run["train_loss"][seed], run["test_loss"][seed], run["test_accuracy"][seed]])
    if not args.no_plot:
        try:
            plot(report, args.out / "lr_transfer.png")
        except ImportError:
            print("lr_transfer.py: matplotlib is not installed; no figure (pip install matplotlib)",
                  file=sys.stderr)
    print(f"wall time {wall:.0f} s; best η per depth (lowest mean training loss):")
    for name in args.parameterizations:
        cells = []
        for depth in args.depths:
            top = best[name][str(depth)]
            cells.append(f"L={depth}: " + ("all diverged" if top is None else
                                          f"2^{top['log2_lr']} (loss {top['mean_train_loss']:.3g})"))
        print(f"  {name:>10}  " + "  ".join(cells))
    print(f"results: {args.out / 'lr_transfer.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
