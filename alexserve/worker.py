"""One tower of a training job: `torchrun --nproc_per_node=2 -m alexserve.worker`.

    # the demo: a small `alexserve synth` dataset (made on first use), reduced width and input, CPU + gloo
    torchrun --nproc_per_node=2 -m alexserve.worker
    # a real job
    torchrun --nproc_per_node=2 -m alexserve.worker --config job.yaml --set train.batch_size=256

Rank r runs tower r % 2 of pair r // 2 and exchanges activations with rank r ^ 1.
Exit codes: 0 done (or stopped on request, after a checkpoint), 2 bad config, data,
checkpoint or launch environment, 3 peer lost, 4 training diverged (a non-finite or
runaway loss: stopped at that step, no checkpoint after it), 1 anything else.

`--resume` (implied when torchrun restarts the group) continues from the newest
complete checkpoint in `train.checkpoint_dir` (default `run_dir/checkpoints`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from alexserve.config import ConfigError, JobConfig, load_config
from alexserve.contract.names import WorkerExit
from alexserve.data.demo_data import ensure_demo_dataset
from alexserve.data.factory import build_eval_source, build_train_source
from alexserve.data.prepared_tree import DatasetError
from alexserve.data.source import EvalSource, TrainSource
from alexserve.model import AlexNetTower
from alexserve.parallel.data_parallel import GradientAverager, tower_groups
from alexserve.parallel.exchange import PeerExchange, PeerLostError
from alexserve.parallel.process_group import process_group
from alexserve.parallel.topology import LaunchError, Topology, topology_from_env
from alexserve.contract.supervisor_channel import SupervisorChannel
from alexserve.checkpoint.store import CheckpointError
from alexserve.checkpoint.run_checkpointer import RunCheckpointer, open_store
from alexserve.train.control import CommandSync
from alexserve.train.divergence import TrainingDiverged
from alexserve.train.history import History
from alexserve.train.loop import TowerTrainer
from alexserve.train.optimizer import PaperSGD
from alexserve.train.reporting import Reporter
from alexserve.train.recipe import resolve_job
from alexserve.train.schedule import PlateauSchedule



def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alexserve.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="job config (YAML or JSON); default: the embedded demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE", help="override one field (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in the run dir, if any")
    return parser.parse_args(argv)


def build_sources(job: JobConfig, topology: Topology) -> tuple[TrainSource, EvalSource | None]:
    train = build_train_source(job, dp_rank=topology.pair, dp_size=topology.num_pairs, device=topology.device)
    return train, build_eval_source(job, device=topology.device)


def build_tower(job: JobConfig, topology: Topology) -> AlexNetTower:
    tower = AlexNetTower(job.model, topology.tower)
    tower.reset_parameters(job.train.seed)
    return tower.to(device=topology.device, dtype=getattr(torch, job.train.dtype))


def resume_requested(args: argparse.Namespace) -> bool:
    """--resume, or a worker group that torchrun restarted after a failure."""
    return args.resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def announce_departures(departures: list[str]) -> None:
    if departures:
        print("departures from the paper for this job (README, \"Departures\"):\n" + "\n".join(f"  - {line}" for line in departures),
              file=sys.stderr, flush=True)


def run(job: JobConfig, topology: Topology, resume: bool, link) -> int:
    resolved = resolve_job(job)
    job = resolved.job
    if topology.is_primary:
        announce_departures(resolved.departures)
    # Two ranks share the machine's cores; oversubscribing them makes both slower.
    if topology.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", topology.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    with process_group(topology, job.dist.timeout_seconds):
        dp_group = tower_groups(topology)
        tower = build_tower(job, topology)
        averager = GradientAverager(tower, dp_group, topology.num_pairs) if dp_group is not None else None
        exchange = PeerExchange(topology.rank, topology.peer, topology.tower)
        optimizer = PaperSGD.from_config(tower.parameters(), job.optim)
        schedule = PlateauSchedule(job.optim)
        checkpointer = RunCheckpointer(job, topology, open_store(job))
        position = checkpointer.restore(tower, optimizer, schedule) if resume else None
        history = None
        if topology.is_primary:
            history = History(job.train.run_dir)
            history.rewind(position.epoch if position else 0)
            if position:
                print(f"resumed from the checkpoint at step {position.global_step}", file=sys.stderr, flush=True)
        train_source, eval_source = build_sources(job, topology)
        try:
            trainer = TowerTrainer(job, topology, tower, exchange, optimizer, schedule, train_source, eval_source,
                                   checkpointer, CommandSync(link, topology.is_primary, topology.device),
                                   Reporter(link, topology), history, position, averager=averager)
            trainer.train()
        finally:
            train_source.close()
            eval_source.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = f"[alexserve rank {os.environ.get('RANK', '?')}]"
    try:
        job = load_config(args.config, args.overrides)
        topology = topology_from_env(job.dist)
        if args.config is None and job.data.source == "folder":
            ensure_demo_dataset(job, topology.local_rank)
    except (ConfigError, LaunchError, DatasetError) as err:
        print(f"{prefix} {err}", file=sys.stderr)
        return WorkerExit.BAD_INPUT
    link = SupervisorChannel.from_env(topology.rank)
    try:
        return run(job, topology, resume_requested(args), link)
    except (DatasetError, CheckpointError) as err:
        report_error(link, f"{prefix} {err}")
        return WorkerExit.BAD_INPUT
    except PeerLostError as err:
        report_error(link, f"{prefix} error: {err}")
        return WorkerExit.PEER_LOST
    except TrainingDiverged as err:
        report_error(link, f"{prefix} {err}", reason="diverged")
        return WorkerExit.DIVERGED
    finally:
        if link is not None:
            link.close()


def report_error(link, message: str, reason: str = "error") -> None:
    """Prints `message` and sends it to the supervisor; `reason` ('error' or 'diverged') lets it tell them apart."""
    print(message, file=sys.stderr, flush=True)
    if link is not None:
        from alexserve.contract.worker_messages import ErrorEvent

        link.send(ErrorEvent(job_id=link.job_id, rank=link.rank, message=message, reason=reason))


if __name__ == "__main__":
    sys.exit(main())
