"""Every name that crosses a process boundary, listed once.

Torch-free, so the supervisor (which never imports torch) and the training
side (which never imports the supervisor) share one copy.
"""

from __future__ import annotations

import enum

# Where the two towers exchange activations (forward) and gradients (backward), in network order.
TOWER_EXCHANGE_POINTS = ("conv3", "fc6", "fc7", "fc8")
# Not in the paper's net: each tower owns half of fc8's classes, so both gather the other's logits for the loss.
LOSS_EXCHANGE_POINT = "logits"
# Every point whose traffic is timed and reported, in the order a step meets them.
TIMED_EXCHANGE_POINTS = (*TOWER_EXCHANGE_POINTS, LOSS_EXCHANGE_POINT)
EXCHANGE_DIRECTIONS = ("forward", "backward")

# Environment variables alexserve reads. The supervisor sets the first five for the workers it launches.
ENV_JOB_ID = "ALEXSERVE_JOB_ID"  # the job the worker belongs to (its reports and Hello name it)
# The identity a job's checkpoints and history carry: made by the supervisor at submit (`job-7.3f9a1c2b`:
# the job id and a random suffix, matching [A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 characters), or, for a
# job whose spec says `continues: job-3`, job-3's run id (so a continuation resumes its predecessor's
# checkpoints and nobody else's). Unset for a worker run by hand with torchrun: it keeps its freedom of paths.
ENV_RUN_ID = "ALEXSERVE_RUN_ID"
ENV_REPORT_ADDR = "ALEXSERVE_REPORT_ADDR"
ENV_CONTROL_ADDR = "ALEXSERVE_CONTROL_ADDR"
# A per-job secret the supervisor creates (secrets.token_hex) for the worker channels: every report and
# the Hello carry it, and the supervisor drops (and counts) any that does not.
ENV_CHANNEL_SECRET = "ALEXSERVE_CHANNEL_SECRET"
ENV_TOKEN = "ALEXSERVE_TOKEN"  # also the token the supervisor and `alexserve job` use when no --token-file is given
ENV_SUPERVISOR_PID = "ALEXSERVE_SUPERVISOR_PID"  # the launcher dies with this process
ENV_STATE_DIR = "ALEXSERVE_STATE_DIR"  # the supervisor's --state-dir default
ENV_SUPERVISOR = "ALEXSERVE_SUPERVISOR"  # the control endpoint, shared by the supervisor and `alexserve job`


class WorkerExit(enum.IntEnum):
    """A worker's exit status. torchrun exits 1 whenever a worker fails, so the supervisor also reads ErrorEvents."""

    OK = 0  # done, or stopped on request after a checkpoint
    FAILED = 1  # anything else
    BAD_INPUT = 2  # bad config, data, checkpoint or launch environment
    PEER_LOST = 3  # the other tower died or went silent
    DIVERGED = 4  # a non-finite or runaway loss: restarting would only diverge again, so nothing relaunches it
    # Asked to stop by a preemption signal, and stopped after committing a checkpoint: resume it. 75 is
    # sysexits.h's EX_TEMPFAIL ("try again later"), apart from the codes above and from 128 + a signal.
    PREEMPTED = 75


# The signals a scheduler sends before it kills a job: Slurm's `--signal=B:USR1@GRACE` and the SIGTERM of
# scancel, requeue and Kubernetes. The worker's default (dist.preempt_signals) and what alexserve.launch forwards.
PREEMPT_SIGNALS = ("SIGTERM", "SIGUSR1")
