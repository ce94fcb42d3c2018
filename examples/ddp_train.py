"""Train one deep network with DistributedDataParallel: the batch is split across processes.

Run on CPU with two processes (gloo):

    torchrun --nproc_per_node=2 examples/ddp_train.py --process-group gloo

or on a machine with several GPUs (NCCL, one process per GPU):

    torchrun --nproc_per_node=4 examples/ddp_train.py --process-group nccl

DDP averages the gradients of the ranks. With the loss a mean over each
rank's equal share of the batch, the averaged gradient is the full-batch
gradient, so the run follows the same trajectory as one process.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import deepres
from deepres.training import gradient_descent_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--process-group", choices=("gloo", "nccl"), default="gloo",
                        help="torch.distributed process-group backend (default gloo)")
    parser.add_argument("--depth", type=int, default=1024, help="residual blocks L (default 1024)")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension D (default 16)")
    parser.add_argument("--hidden", type=int, default=16, help="units per block M (default 16)")
    parser.add_argument("--samples", type=int, default=64, help="global batch size (default 64)")
    parser.add_argument("--steps", type=int, default=10, help="gradient steps (default 10)")
    parser.add_argument("--eta", type=float, default=0.05, help="base learning rate η (default 0.05)")
    args = parser.parse_args()

    dist.init_process_group(args.process_group)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) \
        if args.process_group == "nccl" else torch.device("cpu")
    if args.samples % world:
        raise ValueError(f"--samples must be a multiple of the world size {world}; got {args.samples}")
    # Every rank builds the same network and data from the same seed, then keeps its share of the batch.
    net = deepres.DeepResNet(5, 5, args.depth, args.dim, args.hidden, checkpoint_every="sqrt",
                             generator=torch.Generator().manual_seed(0)).to(device)
    data = torch.Generator().manual_seed(1)
    x = torch.randn(args.samples, 5, generator=data).to(device)
    y = torch.randn(args.samples, 5, generator=data).to(device)
    share = args.samples // world
    x, y = x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]
    model = DistributedDataParallel(net)
    for step in range(args.steps):
        model.zero_grad(set_to_none=True)
        loss = 0.5 * (model(x) - y).pow(2).sum(-1).mean()
        loss.backward()
        gradient_descent_step(net, args.eta)
        total = loss.detach().clone()
        dist.all_reduce(total)
        if rank == 0:
            print(f"step {step + 1}/{args.steps}: loss {total.item() / world:.6f}")
    # Free the DDP wrapper before the process group: a wrapper that outlives the group drops the
    # group's last reference with the GIL held, which can deadlock with gloo's threads at exit.
    del model
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
