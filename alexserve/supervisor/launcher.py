"""Runs torchrun so that it dies with the supervisor: `python -m alexserve.supervisor.launcher ARGS...`.

Linux's PR_SET_PDEATHSIG sends SIGTERM to this process when the supervisor
dies, even by SIGKILL; torchrun then terminates its workers. The supervisor
also kills the whole process tree itself on cancel and shutdown, and on start
kills leftovers of a previous instance, so the signal is the last line of
defence, not the only one.

It also sets TORCH_NCCL_ASYNC_ERROR_HANDLING=2 for the workers where it is unset, as `alexserve.launch` does
(contract/nccl_errors.py).
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys

from alexserve.contract.names import ENV_SUPERVISOR_PID
from alexserve.contract.nccl_errors import set_default_error_handling

PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup still applies
        return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(143)


def main() -> None:
    parent = int(os.environ.get(ENV_SUPERVISOR_PID, os.getppid()))
    die_with_parent(parent)
    set_default_error_handling()  # before torchrun, which would set 1
    sys.argv = ["torchrun", *sys.argv[1:]]
    runpy.run_module("torch.distributed.run", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
