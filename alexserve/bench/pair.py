"""Step time of the two-process gloo pair against the single-process grouped model.

    python -m alexserve.bench.pair [--width 0.5 --batch-size 64 --steps 8]

One run measures both on the same batch and weights, in turn on the same
machine: the single process uses every core; each tower process gets half.
Prints the ratio pair/single and the exchange's share of the pair's step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from alexserve.config import ModelConfig
from alexserve.model import AlexNetGrouped, AlexNetTower
from alexserve.train.optimizer import PaperSGD


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m alexserve.bench.pair", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    # internal: run as one rank, write to this file
    parser.add_argument("--rank-worker", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


BATCH_PIXEL_STD = 60.0  # the fixed batch stands for centred 0..255 pixels


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(
        width=args.width, input_size=args.input_size, num_classes=args.num_classes, pixel_std=BATCH_PIXEL_STD
    )


def fixed_batch(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(args.batch_size, 3, args.input_size, args.input_size, generator=g) * BATCH_PIXEL_STD,
        torch.randint(0, args.num_classes, (args.batch_size,), generator=g),
    )


def timed_steps(step, steps: int, after_warmup=lambda: None) -> list[float]:
    for _ in range(2):
        step()
    after_warmup()
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return times


def run_single(args: argparse.Namespace) -> list[float]:
    from alexserve.train.step import grouped_train_step

    torch.set_num_threads(os.cpu_count() or 1)
    model = AlexNetGrouped.from_seed(model_config(args), 0)
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    images, labels = fixed_batch(args)
    return timed_steps(lambda: grouped_train_step(model, optimizer, images, labels, None), args.steps)


class GradientWaitMeter:
    """Seconds from the last gradient computed to the optimizer step: the all-reduce not hidden behind backward.

    DDP averages gradients inside `backward()`; whatever is still in flight when the last gradient is ready is
    waited for before backward returns, which is when the step calls the optimizer.
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.seconds = 0.0
        self.last_gradient = None
        for param in module.parameters():
            param.register_post_accumulate_grad_hook(self._gradient_ready)
        optimizer.register_step_pre_hook(self._optimizer_step)

    def _gradient_ready(self, _param: torch.Tensor) -> None:
        self.last_gradient = time.perf_counter()

    def _optimizer_step(self, *_args) -> None:
        if self.last_gradient is not None:
            self.seconds += time.perf_counter() - self.last_gradient
        self.last_gradient = None


def run_rank(args: argparse.Namespace) -> None:
    from alexserve.config import DistConfig
    from alexserve.parallel.data_parallel import exchange_group, pair_mesh_if_several, replicate_across_pairs
    from alexserve.parallel.exchange import PeerExchange
    from alexserve.parallel.process_group import process_group
    from alexserve.parallel.topology import topology_from_env
    from alexserve.train.step import tower_train_step

    topology = topology_from_env(DistConfig(backend="gloo", device="cpu"))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // topology.world_size))
    with process_group(topology, timeout_seconds=300):
        tower = AlexNetTower(model_config(args), topology.tower)
        tower.reset_parameters(0)
        mesh = pair_mesh_if_several(topology, timeout_seconds=300)
        model = replicate_across_pairs(tower, topology, timeout_seconds=300, mesh=mesh)
        exchange = PeerExchange(topology.rank, topology.peer, topology.tower, group=exchange_group(mesh))
        optimizer = PaperSGD(tower.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        wait = GradientWaitMeter(tower, optimizer) if topology.num_pairs > 1 else None
        images, labels = fixed_batch(args)
        step = lambda: tower_train_step(model, exchange, optimizer, images, labels, None)  # noqa: E731

        def reset_counters() -> None:
            exchange.stats.take()
            if wait is not None:
                wait.seconds = 0.0

        times = timed_steps(step, args.steps, after_warmup=reset_counters)
        totals = exchange.stats.take()
    if topology.rank == 0:
        per_point = {f"{p}/{d}": {"seconds": e.seconds, "bytes": e.bytes} for (p, d), e in totals.items()}
        args.rank_worker.write_text(
            json.dumps({"times": times, "exchange": per_point, "allreduce_wait_seconds": wait.seconds if wait else 0.0})
        )


def run_pair(args: argparse.Namespace, argv: list[str], world_size: int = 2) -> dict:
    """Runs `world_size` rank processes of this benchmark (each pair on the same per-pair batch); rank 0's figures."""
    from socket import socket

    with socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rank0.json"
        procs = []
        for rank in range(world_size):
            env = dict(
                os.environ,
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                WORLD_SIZE=str(world_size),
                LOCAL_WORLD_SIZE=str(world_size),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
            )
            command = [sys.executable, "-m", "alexserve.bench.pair", *argv, "--rank-worker", str(result)]
            procs.append(subprocess.Popen(command, env=env))
        codes = [p.wait(timeout=3600) for p in procs]
        if any(codes):
            raise SystemExit(f"a pair rank failed: exit codes {codes}")
        return json.loads(result.read_text())


def strip_out(argv: list[str]) -> list[str]:
    """The arguments minus `--out FILE`, for the rank processes."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.rank_worker:
        run_rank(args)
        return 0
    cfg = model_config(args)
    print(
        f"model width {cfg.width}, input {cfg.input_size}, batch {args.batch_size}, {args.steps} timed steps, "
        f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        flush=True,
    )
    single = run_single(args)
    pair = run_pair(args, strip_out(argv))
    single_median, pair_median = statistics.median(single), statistics.median(pair["times"])
    exchange_seconds = sum(e["seconds"] for e in pair["exchange"].values())
    exchange_share = exchange_seconds / sum(pair["times"])
    figures = {
        "single_step_seconds_median": single_median,
        "pair_step_seconds_median": pair_median,
        "pair_over_single": pair_median / single_median,
        "exchange_share_of_pair_step": exchange_share,
        "exchange_per_point": {
            k: {"seconds_per_step": v["seconds"] / args.steps, "bytes_per_step": v["bytes"] // args.steps}
            for k, v in sorted(pair["exchange"].items())
        },
    }
    print(
        f"single process (grouped, {os.cpu_count()} threads): {single_median * 1e3:.1f} ms/step "
        f"(spread {min(single) * 1e3:.1f}-{max(single) * 1e3:.1f})"
    )
    print(
        f"two-process gloo pair:                 {pair_median * 1e3:.1f} ms/step "
        f"(spread {min(pair['times']) * 1e3:.1f}-{max(pair['times']) * 1e3:.1f})"
    )
    for point, e in figures["exchange_per_point"].items():
        print(
            f"  exchange {point:<16} {e['seconds_per_step'] * 1e3:7.2f} ms/step  "
            f"{e['bytes_per_step'] / 1e6:7.2f} MB/step"
        )
    print(
        f"pair / single step time: {figures['pair_over_single']:.2f}x; "
        f"exchange share of the pair's step: {exchange_share:.1%}"
    )
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
