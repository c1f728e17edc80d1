"""A stand-in worker speaking SupervisorChannel, for supervisor tests that do not need a real AlexNet.

Run by torchrun as `-m helpers.fake_worker --config CONFIG.json [--resume]`
(the supervisor's hidden `--worker-module`). It keeps the real worker's
contract: rank 0 polls commands, the decision is broadcast over gloo so both
ranks act at the same step, checkpoints are `run_dir/checkpoints/step-N/COMMITTED`,
`--resume` continues from the newest one. No test functions live here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ACTIONS = {None: 0, "pause": 1, "resume": 2, "stop": 3, "checkpoint_now": 4}


def _newest(run_dir: Path) -> int:
    steps = [int(p.name[5:]) for p in (run_dir / "checkpoints").glob("step-*") if (p / "COMMITTED").exists()]
    return max(steps, default=0)


def main() -> int:
    import torch
    import torch.distributed as dist

    from alexserve.contract.supervisor_channel import SupervisorChannel
    from alexserve.contract.worker_messages import CheckpointEvent, StateEvent, StepReport

    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    cfg = json.loads(args.config.read_text())
    max_steps = cfg["train"]["max_steps"] or 40
    run_dir = Path(cfg["train"]["run_dir"])
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.05"))
    dist.init_process_group("gloo", timeout=timedelta(seconds=30))
    rank = dist.get_rank()
    link = SupervisorChannel.from_env(rank)
    assert link is not None, "started without a supervisor"
    step = _newest(run_dir) if args.resume else 0
    print(f"fake worker rank {rank} starts at step {step}", flush=True)

    def checkpoint() -> None:
        dist.barrier()
        if rank == 0:
            folder = run_dir / "checkpoints" / f"step-{step:09d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "COMMITTED").write_text("{}")
            link.send(CheckpointEvent(job_id=link.job_id, step=step))

    def state(name: str) -> None:
        link.send(StateEvent(job_id=link.job_id, rank=rank, state=name, step=step))

    state("running")
    paused = False
    while step < max_steps:
        code = torch.tensor([ACTIONS[getattr(link.poll_command(), "kind", None)] if rank == 0 else 0])
        dist.broadcast(code, 0)
        action = int(code.item())
        if action == 1:
            paused = True
            state("paused")
        elif action == 2:
            paused = False
            state("running")
        elif action == 3:
            checkpoint()
            state("stopped")
            break
        elif action == 4:
            checkpoint()
        if paused:
            time.sleep(0.02)
            continue
        started = time.perf_counter()
        time.sleep(step_seconds)
        step += 1
        link.send(
            StepReport(
                job_id=link.job_id,
                rank=rank,
                pair=0,
                tower=rank % 2,
                epoch=0,
                step=step,
                steps=1,
                loss=2.0,
                learning_rate=0.01,
                images=8,
                step_seconds=[time.perf_counter() - started],
                device_memory_bytes=1000,
            )
        )
        if step % 10 == 0:
            checkpoint()
    else:
        state("completed")
    link.close()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
