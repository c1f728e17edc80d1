"""One tower of a training job: `torchrun --nproc_per_node=2 -m alexserve.worker`.

    # the demo: a small `alexserve synth` dataset (made on first use), reduced width and input, CPU + gloo
    torchrun --nproc_per_node=2 -m alexserve.worker
    # a real job
    torchrun --nproc_per_node=2 -m alexserve.worker --config job.yaml --set train.batch_size=256

Rank r runs tower r % 2 of pair r // 2 and exchanges activations with rank r ^ 1.
Exit codes: 0 done (or stopped on request, after a checkpoint), 2 bad config, data,
checkpoint or launch environment, 3 peer lost, 4 training diverged (a non-finite or
runaway loss: stopped at that step, no checkpoint after it), 75 preempted (SIGTERM or
SIGUSR1, `dist.preempt_signals`: checkpointed at the next command boundary; resume it),
1 anything else.

`--resume` (implied when torchrun restarts the group) continues from the newest
complete checkpoint in `train.checkpoint_dir` (default `run_dir/checkpoints`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexserve.checkpoint.run_checkpointer import RunCheckpointer, job_identity, open_store
from alexserve.checkpoint.store import CheckpointError
from alexserve.config import ConfigError, JobConfig, load_config
from alexserve.contract.names import WorkerExit
from alexserve.contract.supervisor_channel import SupervisorChannel
from alexserve.contract.telemetry import (
    CommandSource,
    ErrorReason,
    NoCommands,
    NullTelemetry,
    SupervisorTelemetry,
    TelemetrySink,
)
from alexserve.data.demo_data import ensure_demo_dataset
from alexserve.data.factory import build_eval_source, build_train_source
from alexserve.data.prepared_tree import DatasetError
from alexserve.data.source import EvalSource, TrainSource
from alexserve.model import AlexNetTower
from alexserve.parallel.data_parallel import exchange_group, pair_mesh_if_several, replicate_across_pairs
from alexserve.parallel.exchange import PeerExchange, PeerLostError
from alexserve.parallel.process_group import process_group
from alexserve.parallel.topology import LaunchError, Topology, topology_from_env
from alexserve.train.divergence import TrainingDiverged
from alexserve.train.history import History, HistoryError
from alexserve.train.loop import Learner, TowerTrainer, TrainerIO
from alexserve.train.optimizer import PaperSGD
from alexserve.train.precision import Precision, configure_device_math
from alexserve.train.preemption import PreemptionFlag
from alexserve.train.recipe import resolve_job
from alexserve.train.schedule import PlateauSchedule


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="alexserve.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="job config (YAML or JSON); default: the embedded demo")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="override one field (repeatable)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint in the run dir, if any"
    )
    return parser.parse_args(argv)


@dataclass
class Supervision:
    """Where reports go and commands come from: the supervisor's channel, or nowhere."""

    telemetry: TelemetrySink = field(default_factory=NullTelemetry)
    commands: CommandSource = field(default_factory=NoCommands)
    preemption: PreemptionFlag | None = None


def supervision(topology: Topology, stack: contextlib.ExitStack) -> Supervision:
    """The supervisor's telemetry and commands when one started this worker, else the do-nothing defaults."""
    channel = SupervisorChannel.from_env(topology.rank)
    if channel is None:
        return Supervision()
    stack.callback(channel.close)
    return Supervision(SupervisorTelemetry(channel, topology.pair, topology.tower), channel)


def build_sources(job: JobConfig, topology: Topology) -> tuple[TrainSource, EvalSource | None]:
    train = build_train_source(job, dp_rank=topology.pair, dp_size=topology.num_pairs, device=topology.device)
    evaluation = build_eval_source(job, device=topology.device, shard=topology.pair, num_shards=topology.num_pairs)
    return train, evaluation


def build_tower(job: JobConfig, topology: Topology) -> AlexNetTower:
    tower = AlexNetTower(job.model, topology.tower)
    tower.reset_parameters(job.train.seed)
    tower = tower.to(device=topology.device, dtype=getattr(torch, job.train.dtype))
    return Precision.of(job, topology.device).prepare(tower)  # channels-last weights when asked


def resume_requested(args: argparse.Namespace) -> bool:
    """--resume, or a worker group that torchrun restarted after a failure."""
    return args.resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def announce_departures(departures: list[str], notices: list[str]) -> None:
    if departures:
        lines = "\n".join(f"  - {line}" for line in departures)
        print(f'departures from the paper for this job (README, "Departures"):\n{lines}', file=sys.stderr, flush=True)
    for line in notices:
        print(f"note: {line}", file=sys.stderr, flush=True)


def run(job: JobConfig, topology: Topology, resume: bool, supervised: Supervision) -> int:
    resolved = resolve_job(job)
    job = resolved.job
    if topology.is_primary:
        announce_departures(resolved.departures, resolved.notices + [n for n in [topology.notice] if n])
    # Two ranks share the machine's cores; oversubscribing them makes both slower.
    if topology.device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", topology.world_size))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    configure_device_math(topology.device, job.train.allow_tf32)
    with process_group(topology, job.dist.timeout_seconds, job.dist.collective_timeout_seconds) as watchdog:
        tower = build_tower(job, topology)
        # With several pairs the exchange runs on the pair's own group, apart from DDP's (data_parallel.py).
        mesh = pair_mesh_if_several(topology, job.dist.collective_timeout_seconds)
        exchange = PeerExchange(
            topology.rank,
            topology.peer,
            topology.tower,
            group=exchange_group(mesh),
            where=watchdog.where,
            channels_last=job.train.channels_last,
        )
        optimizer = PaperSGD.from_config(tower.parameters(), job.optim)
        schedule = PlateauSchedule(job.optim, job.lr_epoch_budget)
        checkpointer = RunCheckpointer(job, topology, open_store(job, job_identity()))
        position = checkpointer.restore(tower, optimizer, schedule) if resume else None
        history = None
        if topology.is_primary:
            history = History(job.train.run_dir, job_identity())
            history.rewind(position.epoch if position else 0)
            if position:
                print(f"resumed from the checkpoint at step {position.global_step}", file=sys.stderr, flush=True)
        model = replicate_across_pairs(tower, topology, job.dist.collective_timeout_seconds, mesh)  # after restore
        train_source, eval_source = build_sources(job, topology)
        try:
            learner = Learner(model, exchange, optimizer, schedule)
            io = TrainerIO(
                train_source,
                eval_source,
                checkpointer,
                history,
                supervised.telemetry,
                supervised.commands,
                preemption=supervised.preemption,
            )
            outcome = TowerTrainer(job, topology, learner, io, position).train()
        finally:
            train_source.close()
            eval_source.close()
    return WorkerExit.PREEMPTED if outcome.state == "preempted" else WorkerExit.OK


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
    with contextlib.ExitStack() as stack:
        supervised = supervision(topology, stack)
        # Before the process group: a signal during start-up is kept and acted on at the first boundary.
        supervised.preemption = PreemptionFlag.install(job.dist.preempt_signals)
        try:
            return run(job, topology, resume_requested(args), supervised)
        except (DatasetError, CheckpointError, HistoryError) as err:
            report_error(supervised.telemetry, f"{prefix} {err}")
            return WorkerExit.BAD_INPUT
        except PeerLostError as err:
            report_error(supervised.telemetry, f"{prefix} error: {err}")
            return WorkerExit.PEER_LOST
        except TrainingDiverged as err:
            report_error(supervised.telemetry, f"{prefix} {err}", reason="diverged")
            return WorkerExit.DIVERGED


def report_error(telemetry: TelemetrySink, message: str, reason: ErrorReason = "error") -> None:
    """Prints `message` and reports it; `reason` ('error' or 'diverged') lets the supervisor tell them apart."""
    print(message, file=sys.stderr, flush=True)
    telemetry.error(message, reason)


if __name__ == "__main__":
    sys.exit(main())
