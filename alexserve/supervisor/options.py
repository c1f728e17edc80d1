"""How one supervisor runs: what `alexserve supervisor`'s flags become (supervisor/command_line.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexserve.supervisor.control_messages import DEFAULT_CONTROL_ADDR, DEFAULT_METRICS_PORT
from alexserve.supervisor.process import WORKER_MODULE


@dataclass
class ServerOptions:
    state_dir: Path
    """Job records, configs and worker logs; locked, so one supervisor uses it at a time."""
    runs_root: Path | None = None
    """Where every job's run dir lives (specs name folders relative to it); None: STATE_DIR/runs."""
    control_addr: str = DEFAULT_CONTROL_ADDR
    """ZeroMQ endpoint of the control socket (`alexserve job` talks to it)."""
    metrics_host: str = "127.0.0.1"
    """Address of /metrics and /healthz."""
    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of /metrics and /healthz; 0 picks a free one."""
    token: str | None = None
    """Required on every control request (and on /metrics off loopback) when set; needed for non-loopback binds."""
    metrics_public: bool = False
    """Serve /metrics without the token even on a non-loopback address (a private network)."""
    max_running: int = 1
    """Worker groups running at once; other jobs wait queued."""
    stop_timeout_seconds: float = 300.0
    """How long a stopping job may take to checkpoint and exit before it is killed and failed."""
    stop_grace_seconds: float = 120.0
    """On SIGTERM or SIGINT: how long running jobs get to checkpoint and stop before they are killed (0: kill)."""
    restart_delay_seconds: float = 1.0
    """Pause between a worker group's death and its relaunch."""
    worker_module: str = WORKER_MODULE
    """What torchrun runs (`-m`); tests put a stand-in here."""
