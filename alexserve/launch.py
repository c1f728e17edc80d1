"""`python -m alexserve.launch`: torchrun for jobs that may be preempted, exiting with the workers' own code.

    python -m alexserve.launch --nproc-per-node=2 -m alexserve.worker --config job.yaml --resume

Takes torchrun's arguments unchanged, with two differences:
- SIGTERM and SIGUSR1 (a scheduler's preemption signals) are forwarded to the workers and nothing more.
  Plain torchrun handles SIGTERM itself: it signals the workers, gives them 30 s, kills them and exits 1, so a
  checkpoint that takes longer is lost; and SIGUSR1 kills plain torchrun outright. Here the workers checkpoint
  (dist.preempt_signals), exit PREEMPTED (75), and the agent returns as after any exit.
- It sets TORCH_NCCL_ASYNC_ERROR_HANDLING=2 when it is unset (torchrun would set 1, under which torch ends a
  rank by SIGABRT on an NCCL error, before the rank can report a lost peer: contract/nccl_errors.py).
- It exits with the code of the worker that failed first (the root cause: 2 bad input, 3 peer lost, 4
  diverged, 75 preempted), where torchrun exits 1 for all of them.
Restarts belong to the scheduler (Slurm's requeue, Kubernetes' restart policy) or to `alexserve supervisor`:
`--max-restarts` above 0 is refused, since torchrun would restart a preempted group in place.

ALEXSERVE_PREEMPTED_EXIT_CODE=N makes it exit N instead of 75 when the workers were preempted, for a scheduler
that retries only some codes: the Kubeflow Training Operator's `restartPolicy: ExitCode` recreates a pod only
for codes 128 and above (deploy/kubernetes/ sets 203 = 128 + 75). The other codes stay as they are.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from alexserve.contract.names import PREEMPT_SIGNALS, WorkerExit
from alexserve.contract.nccl_errors import set_default_error_handling


def child_pids(parent: int) -> list[int]:
    """The live processes whose parent is `parent` (the agent's workers), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent:
            pids.append(int(stat.parent.name))
    return pids


def forward_to_workers(signum: int, frame) -> None:
    # torchrun starts each worker in its own session: its process group reaches what the worker started too.
    for pid in child_pids(os.getpid()):
        try:
            os.killpg(pid, signum)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


PREEMPTED_EXIT_CODE_ENV = "ALEXSERVE_PREEMPTED_EXIT_CODE"


def preempted_exit_code(environ: dict[str, str]) -> int:
    """The code to exit with after a preemption: 75, or ALEXSERVE_PREEMPTED_EXIT_CODE; ValueError if that is bad."""
    text = environ.get(PREEMPTED_EXIT_CODE_ENV, "").strip()
    if not text:
        return int(WorkerExit.PREEMPTED)
    taken = {int(code) for code in WorkerExit if code != WorkerExit.PREEMPTED}
    if not text.isdigit() or not 0 < int(text) < 256 or int(text) in taken:
        # 0 and the other workers' codes would make a preemption read as success or as a real failure.
        raise ValueError(
            f"{PREEMPTED_EXIT_CODE_ENV}={text!r}: must be an exit code from 1 to 255 other than "
            f"{', '.join(map(str, sorted(taken)))} (the other workers' codes)"
        )
    return int(text)


def exit_code(failure: ChildFailedError) -> int:
    """The first failed worker's exit code; 1 when it died by a signal or gave none."""
    _, first = failure.get_first_failure()
    code = first.exitcode
    return code if isinstance(code, int) and 0 < code < 128 else int(WorkerExit.FAILED)


def main(argv: list[str] | None = None) -> int:
    args = torchrun.parse_args(argv)
    if int(args.max_restarts) > 0:
        print(
            f"alexserve.launch: --max-restarts={args.max_restarts}: restarts belong to the scheduler or the "
            "supervisor here (torchrun would restart a preempted group in place); use 0",
            file=sys.stderr,
        )
        return int(WorkerExit.BAD_INPUT)
    try:
        preempted = preempted_exit_code(dict(os.environ))
    except ValueError as bad:
        print(f"alexserve.launch: {bad}", file=sys.stderr)
        return int(WorkerExit.BAD_INPUT)
    handled_by_torchrun = [name.strip() for name in args.signals_to_handle.split(",")]
    args.signals_to_handle = ",".join(name for name in handled_by_torchrun if name not in PREEMPT_SIGNALS)
    for name in PREEMPT_SIGNALS:
        signal.signal(getattr(signal, name), forward_to_workers)
    set_default_error_handling()  # torchrun's agent passes it to the workers
    try:
        torchrun.run(args)
    except ChildFailedError as failure:
        print(failure.format_msg(), file=sys.stderr)
        code = exit_code(failure)
        if code == WorkerExit.PREEMPTED and preempted != code:
            print(
                f"alexserve.launch: the workers exited PREEMPTED ({code}); exiting {preempted} "
                f"({PREEMPTED_EXIT_CODE_ENV})",
                file=sys.stderr,
            )
            return preempted
        return code
    return int(WorkerExit.OK)


if __name__ == "__main__":
    sys.exit(main())
