"""Job records and their crash-safe home on disk (the states they move through: `states.py`).

Layout under the state dir, one folder per job:

    jobs/job-7/job.json      the record (durable.write_through: temp file, fsync, rename, fsync folder)
    jobs/job-7/config.json   the JobConfig the workers read
    jobs/job-7/worker.log    torchrun's and the workers' output, every attempt appended

Run dirs live under the runs root (`job_paths.py`). A record that cannot be
saved (a full or read-only disk, too many open files) keeps the error in
`write_error` (shown by `job status`) and is saved again at its next change.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alexserve.durable import write_through
from alexserve.supervisor.states import JobState

__all__ = ["JobRecord", "JobState", "JobStore", "tail_lines"]

JOB_ID_PATTERN = re.compile(r"^job-(\d+)$")


class JobRecord(BaseModel):
    """What the supervisor knows about one job; persisted as job.json."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    id: str
    name: str | None = None
    state: JobState = Field(JobState.QUEUED, description="Changed only by states.transition.")
    reason: str = Field("", description="Why the job is in its state (failure cause, who stopped it, ...).")
    spec: dict[str, Any]
    run_dir: str
    checkpoint_dir: str = Field("", description="Where the workers commit checkpoints (config.train.checkpoints).")
    run_id: str = Field(
        "",
        description="The identity the job's checkpoints and history carry (ALEXSERVE_RUN_ID): its own id, or the "
        "run id of the job it continues. Empty in records older than the field: the job's id.",
    )
    continues: str | None = Field(None, description="The job whose folders (and run id) this one took over.")
    write_error: str | None = Field(
        None, description="Why the last save of this record failed; cleared by the next save that succeeds."
    )
    max_restarts: int
    num_pairs: int = Field(1, ge=1, description="Tower pairs: the worker group has 2 * num_pairs ranks.")
    restarts: int = Field(0, description="Relaunches after a worker death in the current run (reset by resume).")
    restarts_total: int = Field(0, description="Relaunches over the job's life.")
    attempts: int = Field(0, description="Launches of the worker group.")
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    step: int = 0
    epoch: int = 0
    loss: float | None = None
    last_checkpoint_step: int | None = None
    last_checkpoint_at: float | None = None
    last_error: str | None = None
    exit_code: int | None = None
    pid: int | None = Field(None, description="torchrun's pid while the group runs.")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "step": self.step,
            "epoch": self.epoch,
            "restarts": self.restarts_total,
            "reason": self.reason,
            "created_at": self.created_at,
        }


class JobStore:
    """The jobs/ folder of a state dir."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.jobs_dir = self.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "worker.log"

    def config_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "config.json"

    def save(self, record: JobRecord) -> None:
        record.updated_at = time.time()
        directory = self.job_dir(record.id)
        directory.mkdir(parents=True, exist_ok=True)
        data = record.model_dump_json(indent=2).encode()
        write_through(directory / "job.json", lambda f: f.write(data))

    def write_config(self, job_id: str, config: dict[str, Any]) -> Path:
        path = self.config_path(job_id)
        data = json.dumps(config, indent=2).encode()
        write_through(path, lambda f: f.write(data))
        return path

    def load_all(self) -> tuple[dict[str, JobRecord], list[str]]:
        """Every readable record, and a note for each folder that could not be read."""
        records: dict[str, JobRecord] = {}
        problems = []
        for directory in sorted(self.jobs_dir.iterdir()):
            path = directory / "job.json"
            if not directory.is_dir() or not JOB_ID_PATTERN.match(directory.name) or not path.exists():
                continue
            try:
                record = JobRecord.model_validate_json(path.read_bytes())
            except (OSError, ValueError) as err:
                problems.append(f"{path}: unreadable job record: {err}")
                continue
            records[record.id] = record
        return records, problems

    def next_id(self, known: dict[str, JobRecord]) -> str:
        used = [
            int(m.group(1))
            for name in list(known) + [p.name for p in self.jobs_dir.iterdir()]
            if (m := JOB_ID_PATTERN.match(name))
        ]
        return f"job-{max(used, default=0) + 1}"


def tail_lines(path: Path, lines: int, max_bytes: int = 512 * 1024) -> str:
    """The last `lines` lines of a text file, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text else "")
