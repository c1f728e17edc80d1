"""A real one-node Slurm cluster on loopback for the Slurm tests: munged, slurmctld and slurmd started by hand.

Debian's `slurm-wlm` and `munge` (Slurm 22.05), as root, without systemd, cgroups or accounting: a MUNGE key and a
slurm.conf in a fresh folder, `munged -F` on its own socket, `slurmctld -D`, `slurmd -D -N localhost`, on free
ports, so nothing is shared with a site's daemons or another test run. Every daemon started is stopped by its PID
(SIGTERM, then SIGKILL), also when bring-up fails; jobs submitted through `submit` are cancelled first.

    python tests/helpers/slurm_cluster.py     # one by hand: prints the SLURM_CONF to export; Ctrl-C stops it
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "scancel", "sinfo")
# A job's states once it has ended (squeue(1), JOB STATE CODES); a requeued job goes back to PENDING instead.
ENDED_STATES = frozenset(
    {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
)
BRING_UP_TIMEOUT_SECONDS = 60
COMMAND_TIMEOUT_SECONDS = 20  # any one Slurm client command
STOP_GRACE_SECONDS = 10  # SIGTERM to SIGKILL, per daemon
# Slurm holds a requeued job for its credential lifetime (slurm.conf(5), AuthInfo cred_expire); 5 is its minimum.
CRED_EXPIRE_SECONDS = 5
KILL_WAIT_SECONDS = 10  # slurm.conf KillWait: SIGTERM to SIGKILL for a job's processes


class SlurmClusterError(RuntimeError):
    """Bring-up failed, a command failed, or a wait ran out; the message carries the daemons' logs."""


def missing_tools() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def node_resources() -> tuple[int, int]:
    """(CPUs, RealMemory in MiB) of this machine as slurmd sees them (`slurmd -C`)."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out))
    try:
        return int(fields["CPUs"]), int(fields["RealMemory"])
    except (KeyError, ValueError) as err:
        raise SlurmClusterError(f"`slurmd -C` printed no CPUs/RealMemory: {out!r}") from err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(root: Path, cpus: int, memory_mib: int, ctld_port: int, slurmd_port: int) -> str:
    """The one-node cluster's slurm.conf: the node is `localhost` at 127.0.0.1, one partition, short timers."""
    return f"""\
ClusterName=alexserve-test
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root / "munge.sock"},cred_expire={CRED_EXPIRE_SECONDS}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
KillWait={KILL_WAIT_SECONDS}
MinJobAge=3600
SlurmdTimeout=30
SlurmctldTimeout=30
MessageTimeout=10
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName=test Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"({path}: {err})"
    return "\n".join(text[-lines:])


@dataclass
class Daemon:
    name: str
    process: subprocess.Popen
    output: Path  # its stdout and stderr (slurmctld and slurmd also write their LogFile)


@dataclass
class SlurmCluster:
    root: Path
    daemons: list[Daemon] = field(default_factory=list)
    jobs: list[int] = field(default_factory=list)  # every job submitted, cancelled at stop
    bring_up_seconds: float = 0.0

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm commands (and, through sbatch's --export=ALL, for the jobs)."""
        return {**os.environ, "SLURM_CONF": str(self.root / "slurm.conf")}

    # ---- lifetime

    def start(self) -> None:
        """Brings the cluster up; stops whatever it started and raises, with the logs, if it does not come up."""
        started = time.monotonic()
        try:
            self._write_files()
            self._spawn("munged", "munged", "-F", f"--key-file={self.root / 'munge.key'}",
                        f"--socket={self.root / 'munge.sock'}", f"--pid-file={self.root / 'munged.pid'}",
                        f"--seed-file={self.root / 'munge.seed'}", "--group-update-time=-1")  # fmt: skip
            self._wait_for("munged's socket", lambda: (self.root / "munge.sock").exists())
            conf = str(self.root / "slurm.conf")
            self._spawn("slurmctld", "slurmctld", "-D", "-f", conf)
            self._spawn("slurmd", "slurmd", "-D", "-N", "localhost", "-f", conf)
            self._wait_for("the node to be idle", lambda: self._node_state() == "idle")
        except BaseException:
            self.stop()
            raise
        self.bring_up_seconds = time.monotonic() - started

    def _write_files(self) -> None:
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        # What `dd if=/dev/urandom bs=1 count=1024` makes (munge's classic recipe; `mungekey` is only in 0.5.14+).
        key = os.open(self.root / "munge.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(key, "wb") as out:
            out.write(os.urandom(1024))
        cpus, memory = node_resources()
        (self.root / "slurm.conf").write_text(slurm_conf(self.root, cpus, memory, free_port(), free_port()))

    def _spawn(self, name: str, *argv: str) -> None:
        output = self.root / f"{name}.out"
        with open(output, "wb") as sink:
            process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.daemons.append(Daemon(name, process, output))

    def stop(self) -> None:
        """Cancels the jobs it submitted, then stops every daemon it started by PID: SIGTERM, then SIGKILL."""
        if self.jobs and any(d.name == "slurmctld" and d.process.poll() is None for d in self.daemons):
            with contextlib.suppress(SlurmClusterError, subprocess.TimeoutExpired):
                self.command("scancel", *map(str, self.jobs))
                deadline = time.monotonic() + KILL_WAIT_SECONDS + 10
                while time.monotonic() < deadline and any(self._job_alive(job) for job in self.jobs):
                    time.sleep(0.5)
        for daemon in reversed(self.daemons):
            if daemon.process.poll() is None:
                daemon.process.send_signal(signal.SIGTERM)
                try:
                    daemon.process.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    daemon.process.kill()
                    daemon.process.wait(timeout=STOP_GRACE_SECONDS)
        self.daemons.clear()

    def _job_alive(self, job: int) -> bool:
        try:
            return self.job(job).get("JobState") not in ENDED_STATES
        except SlurmClusterError:
            return False

    # ---- commands

    def command(self, *argv: str, timeout: float = COMMAND_TIMEOUT_SECONDS, env: dict[str, str] | None = None) -> str:
        """Runs a Slurm client command against this cluster; its stdout, or SlurmClusterError with its stderr."""
        done = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise SlurmClusterError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def submit(self, script: Path, *args: str, options: tuple[str, ...] = (), cwd: Path, env: dict[str, str]) -> int:
        """sbatch OPTIONS SCRIPT ARGS in `cwd`; the job gets this process's environment plus `env` (--export=ALL)."""
        out = self.command("sbatch", "--parsable", f"--chdir={cwd}", *options, str(script), *args, env=env)
        job = int(out.strip())
        self.jobs.append(job)
        return job

    def job(self, job: int) -> dict[str, str]:
        """`scontrol show job` as fields: JobState, Restarts, ExitCode, StdOut..."""
        return dict(re.findall(r"(\w+)=(\S*)", self.command("scontrol", "show", "job", "-o", str(job))))

    def wait_for_job(self, job: int, timeout: float, until=lambda info: info.get("JobState") in ENDED_STATES) -> dict:
        """Polls the job until `until(fields)` holds; SlurmClusterError (with the logs) after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.job(job)
            if until(info):
                return info
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"job {job} still {info.get('JobState')} after {timeout:.0f}s\n" + self.logs())
            time.sleep(0.3)

    def _node_state(self) -> str:
        try:
            return self.command("sinfo", "-h", "-N", "-o", "%T", timeout=5).strip()
        except (SlurmClusterError, subprocess.TimeoutExpired):
            return ""

    def _wait_for(self, what: str, ready, timeout: float = BRING_UP_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for daemon in self.daemons:
                if daemon.process.poll() is not None:
                    raise SlurmClusterError(
                        f"{daemon.name} exited {daemon.process.returncode} while waiting for {what}\n" + self.logs()
                    )
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"no {what} after {timeout}s\n" + self.logs())
            time.sleep(0.2)

    def logs(self) -> str:
        """The tails of every daemon's output and log, for a failure message."""
        parts = [f"--- {d.name} (pid {d.process.pid}) {d.output}:\n{tail(d.output)}" for d in self.daemons]
        for log in ("slurmctld.log", "slurmd.log"):
            parts.append(f"--- {self.root / log}:\n{tail(self.root / log)}")
        return "\n".join(parts)


@contextlib.contextmanager
def one_node_cluster():
    """A running cluster in a fresh folder under /tmp (munged wants a short socket path every user can traverse)."""
    root = Path(tempfile.mkdtemp(prefix="alexserve-slurm-"))
    root.chmod(0o711)
    cluster = SlurmCluster(root)
    try:
        cluster.start()
        yield cluster
    except BaseException:
        cluster.stop()  # the folder stays, with every log, for a look after a failure
        raise
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if os.geteuid() != 0 or missing_tools():
        sys.exit(f"needs root and {', '.join(missing_tools()) or 'nothing else'} (apt-get install slurm-wlm munge)")
    with one_node_cluster() as running:
        print(f"up in {running.bring_up_seconds:.1f}s: export SLURM_CONF={running.root / 'slurm.conf'}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
