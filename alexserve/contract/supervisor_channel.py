"""The worker's end of the supervisor link: reports out, commands in, never in training's way.

A worker started by `alexserve supervisor` finds these in its environment:

    ALEXSERVE_JOB_ID        the job it belongs to
    ALEXSERVE_RUN_ID        the identity its checkpoints and history carry (read by the training side)
    ALEXSERVE_REPORT_ADDR   ZeroMQ endpoint of the supervisor's PULL socket (every rank PUSHes reports)
    ALEXSERVE_CONTROL_ADDR  ZeroMQ endpoint of the supervisor's ROUTER socket (global rank 0's DEALER
                            says Hello, then receives the job's commands)
    ALEXSERVE_CHANNEL_SECRET  the job's channel secret: the first frame of every report and of the
                            Hello, so the supervisor takes messages for this job from its workers only

Its calls (global rank 0 polls; train/control.py then shares the decision with
every rank so both towers pause/stop/checkpoint at the same step):

    channel = SupervisorChannel.from_env(rank)       # None when not started by a supervisor
    channel.send(StepReport(job_id=channel.job_id, rank=rank, ...))
    command = channel.poll_command()                 # rank 0 only; None on the others
    ...
    channel.close()

The trainer never calls it directly: worker.py plugs `telemetry.SupervisorTelemetry(channel, ...)`
and the channel (a `telemetry.CommandSource`) into the trainer, or the do-nothing
defaults when `from_env` finds no supervisor.

`send` never blocks: the socket queues at most `SEND_QUEUE_MESSAGES` messages
(ZeroMQ's high-water mark) and a message that does not fit is dropped and
counted in `dropped`, so a slow or absent supervisor cannot stall a step.
"""

from __future__ import annotations

import os
import sys

import zmq

from alexserve.contract.names import ENV_CHANNEL_SECRET, ENV_CONTROL_ADDR, ENV_JOB_ID, ENV_REPORT_ADDR
from alexserve.contract.worker_messages import (
    MAX_COMMAND_BYTES,
    MAX_REPORT_BYTES,
    Command,
    Hello,
    Message,
    MessageError,
    parse_command,
)

SEND_QUEUE_MESSAGES = 1000
CLOSE_FLUSH_SECONDS = 1.0  # how long close() may wait to deliver the last reports (the final StateEvent)


class SupervisorChannel:
    """PUSH socket for reports (every rank) and, on global rank 0, a DEALER socket for commands."""

    def __init__(
        self, job_id: str, rank: int, report_addr: str, control_addr: str | None, secret: str | None = None
    ) -> None:
        self.job_id, self.rank = job_id, rank
        self.dropped = 0
        self._secret = (secret or "").encode()
        # A private context: the training process may use ZeroMQ elsewhere, and term() here must not wait on it.
        self._context = zmq.Context(io_threads=1)
        self._reports = self._context.socket(zmq.PUSH)
        self._reports.setsockopt(zmq.LINGER, 0)
        self._reports.setsockopt(zmq.SNDHWM, SEND_QUEUE_MESSAGES)
        self._reports.connect(report_addr)
        self._commands: zmq.Socket | None = None
        if control_addr is not None and rank == 0:
            self._commands = self._context.socket(zmq.DEALER)
            self._commands.setsockopt(zmq.LINGER, 0)
            self._commands.setsockopt(zmq.MAXMSGSIZE, MAX_COMMAND_BYTES * 4)
            self._commands.setsockopt(zmq.SNDHWM, 100)
            self._commands.setsockopt(zmq.RCVHWM, 100)
            self._commands.connect(control_addr)
            # Queued by ZeroMQ until the connection is up, so it is not lost to a slow start.
            self._send_on(self._commands, Hello(job_id=job_id, rank=rank).to_bytes())

    @classmethod
    def from_env(cls, rank: int) -> SupervisorChannel | None:
        """The channel described by the environment, or None when the worker was not started by a supervisor."""
        job_id = os.environ.get(ENV_JOB_ID)
        report_addr = os.environ.get(ENV_REPORT_ADDR)
        if not job_id or not report_addr:
            return None
        control_addr, secret = os.environ.get(ENV_CONTROL_ADDR) or None, os.environ.get(ENV_CHANNEL_SECRET)
        return cls(job_id, rank, report_addr, control_addr, secret)

    def _send_on(self, socket: zmq.Socket, data: bytes) -> bool:
        try:
            socket.send_multipart([self._secret, data], zmq.NOBLOCK)  # the secret first: see worker_messages
            return True
        except zmq.Again:  # queue full (supervisor slow or gone): drop rather than wait
            self.dropped += 1
        except zmq.ZMQError as err:  # closed socket, interrupted call: reporting must never break training
            self.dropped += 1
            print(f"[alexserve rank {self.rank}] report not sent: {err}", file=sys.stderr)
        return False

    def send(self, message: Message) -> None:
        """Queue one report; returns at once. Dropped (and counted) when the queue is full or it is too large."""
        if self._reports is None:
            return
        data = message.to_bytes()
        if len(data) > MAX_REPORT_BYTES:
            self.dropped += 1
            print(
                f"[alexserve rank {self.rank}] {message.__class__.__name__} of {len(data)} bytes dropped "
                f"(limit {MAX_REPORT_BYTES})",
                file=sys.stderr,
            )
            return
        self._send_on(self._reports, data)

    def poll_command(self) -> Command | None:
        """The next command for this job, or None; never waits. Only global rank 0 has a command socket."""
        if self._commands is None:
            return None
        while True:
            try:
                data = self._commands.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            except zmq.ZMQError:
                return None
            try:
                command = parse_command(data)
            except MessageError as err:
                print(f"[alexserve rank {self.rank}] ignored a malformed command: {err}", file=sys.stderr)
                continue
            if command.job_id != self.job_id:
                print(f"[alexserve rank {self.rank}] ignored a command for job {command.job_id!r}", file=sys.stderr)
                continue
            return command

    def close(self, flush_seconds: float = CLOSE_FLUSH_SECONDS) -> None:
        """Give queued reports up to `flush_seconds` to leave (a bounded wait), then release the sockets."""
        if self._reports is None:
            return
        self._reports.close(linger=int(flush_seconds * 1000))
        if self._commands is not None:
            self._commands.close(linger=0)
        self._context.term()
        self._reports = self._commands = None

    def __enter__(self) -> SupervisorChannel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
