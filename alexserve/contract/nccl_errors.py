"""What torch does when NCCL fails, set so that a survivor of a dead peer exits PEER_LOST (3) and says where.

`TORCH_NCCL_ASYNC_ERROR_HANDLING` decides what torch's NCCL watchdog thread does when it sees an NCCL error
or a collective past the group's timeout (torch's "ProcessGroupNCCL Environment Variables" page; the modes
are `ErrorHandlingMode` in torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp):

- 0: nothing;
- 1: aborts the communicators and tears the process down (what torchrun sets when the variable is unset,
  torch/distributed/elastic/agent/server/local_elastic_agent.py);
- 2: only aborts the communicators: the process lives on, and its next use of them raises
  ("NCCL communicator was aborted"), which the exchange and DDP's guard turn into PeerLostError, exit 3;
- 3: tears the process down without aborting (torch's own default when unset).

Tearing down is a C++ exception thrown on the watchdog thread: the process dies of SIGABRT, before the
heartbeat (parallel/watchdog.py) can name the peer and exit 3. So alexserve's launchers and the worker set 2
wherever the variable is unset, and a value the user set is kept (the worker then says what it means).

A peer that dies on the same host usually leaves no NCCL error at all (its partner's kernel just waits), and
the heartbeat ends the survivor under any value; the mode matters where NCCL does see an error: a peer's
connection closing across hosts, or a collective past `dist.collective_timeout_seconds`.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

ENV_NCCL_ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
ABORT_COMMUNICATORS_ONLY = "2"  # alexserve's value: torch aborts, alexserve reports and exits
TEARS_DOWN = {"1": "aborts the communicators and ends the process", "3": "ends the process"}
NO_HANDLING = "0"


def set_default_error_handling(environ: MutableMapping[str, str] | None = None) -> None:
    """Sets alexserve's value (2) where the variable is unset; run before torchrun starts the workers."""
    environ = os.environ if environ is None else environ
    environ.setdefault(ENV_NCCL_ASYNC_ERROR_HANDLING, ABORT_COMMUNICATORS_ONLY)


def error_handling_notice(environ: MutableMapping[str, str] | None = None) -> str | None:
    """What the value in force means for a dead peer, when it is not alexserve's; None when it is."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_NCCL_ASYNC_ERROR_HANDLING, ABORT_COMMUNICATORS_ONLY).strip()
    if value == ABORT_COMMUNICATORS_ONLY:
        return None
    if value in TEARS_DOWN:
        return (
            f"{ENV_NCCL_ASYNC_ERROR_HANDLING}={value} (torchrun sets 1 when it is unset): on an NCCL error or "
            f"timeout torch {TEARS_DOWN[value]} by SIGABRT, before the heartbeat can name a lost peer and exit 3; "
            f"set it to {ABORT_COMMUNICATORS_ONLY}, or launch with python -m alexserve.launch, which does"
        )
    if value == NO_HANDLING:
        meaning = "torch neither aborts nor ends anything, so a deadlock between live ranks is never ended"
    else:
        meaning = "not a value torch documents"
    return (
        f"{ENV_NCCL_ASYNC_ERROR_HANDLING}={value}: kept as set ({meaning}); alexserve expects "
        f"{ABORT_COMMUNICATORS_ONLY} (torch aborts the communicators, the worker reports the lost peer and exits 3)"
    )
