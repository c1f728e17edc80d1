"""The supervisor's Prometheus metrics: one registry, fed by worker reports.

Naming follows prometheus.io: one `alexserve_` prefix, base units in the name,
counters end in `_total`, ratios are 0..1. Labels have a handful of values each
(`rank`, `tower`, `point`, `direction`, `state`, `crop`, `verb`, ...), never a job
id or a file name; every labelled series is created at zero at start-up so it
exists before the first event. With several jobs at once, counters add up over
all of them and gauges show the latest report.
"""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

import alexserve
from alexserve.contract.names import EXCHANGE_DIRECTIONS, TIMED_EXCHANGE_POINTS
from alexserve.contract.worker_messages import CheckpointEvent, EvalReport, StepReport
from alexserve.supervisor.control_messages import VERBS
from alexserve.supervisor.states import JobState

try:  # _created series double the output and mean nothing to a dashboard
    from prometheus_client import disable_created_metrics

    disable_created_metrics()
except ImportError:  # pragma: no cover - older prometheus-client
    pass

RANKS = ("0", "1")  # the two towers of the one pair torchrun starts; more ranks add series when they report
CROPS = ("center", "ten_crop")
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
INVALID_VERB = "invalid"  # the label of a request whose verb is missing or unknown
CONTROL_VERBS = (*VERBS, INVALID_VERB)
CONTROL_OUTCOMES = ("ok", "error", "unauthorized")
REJECT_REASONS = ("malformed", "unknown_job", "unauthorized")


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


class SupervisorMetrics:
    """Every metric the supervisor exports (see the module docstring for the conventions)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build = Info("alexserve_build", "alexserve, Python and torch versions of the supervisor.", registry=r)
        self.build.info(
            {
                "version": alexserve.__version__,
                "python_version": platform.python_version(),
                "torch_version": _package_version("torch"),
            }
        )

        self.images = Counter("alexserve_train_images", "Images trained on (counted once per tower pair).", registry=r)
        self.pair_images = Counter(
            "alexserve_pair_train_images", "Images trained on by each tower pair (data parallel).", ["pair"], registry=r
        )
        self.steps = Counter("alexserve_train_steps", "Optimizer steps done (counted on global rank 0).", registry=r)
        self.step_seconds = Histogram(
            "alexserve_train_step_duration_seconds",
            "Duration of one training step.",
            ["rank"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.data_wait = Counter(
            "alexserve_train_data_wait_seconds", "Time spent waiting for input batches.", ["rank"], registry=r
        )
        self.exchange_seconds = Counter(
            "alexserve_exchange_seconds",
            "Time in tower-to-tower exchanges (including waiting for the peer).",
            ["rank", "point", "direction"],
            registry=r,
        )
        self.exchange_bytes = Counter(
            "alexserve_exchange_bytes", "Bytes sent to the peer tower.", ["rank", "point", "direction"], registry=r
        )
        self.loss = Gauge(
            "alexserve_train_loss", "Mean training loss of the last report interval (global rank 0).", registry=r
        )
        self.learning_rate = Gauge("alexserve_train_learning_rate", "Current learning rate.", registry=r)
        self.epoch = Gauge("alexserve_train_epoch", "Epoch being trained (zero-based).", registry=r)
        self.top1 = Gauge(
            "alexserve_validation_top1_error_ratio",
            "Validation top-1 error after the last epoch (0..1).",
            ["crop"],
            registry=r,
        )
        self.top5 = Gauge(
            "alexserve_validation_top5_error_ratio",
            "Validation top-5 error after the last epoch (0..1).",
            ["crop"],
            registry=r,
        )
        self.device_memory = Gauge(
            "alexserve_device_memory_bytes",
            "Device memory allocated by the rank (resident memory on CPU).",
            ["rank"],
            registry=r,
        )
        self.jobs = Gauge("alexserve_jobs", "Jobs known to the supervisor, by state.", ["state"], registry=r)
        self.restarts = Counter("alexserve_worker_restarts", "Worker-group relaunches after a worker died.", registry=r)
        self.divergences = Counter(
            "alexserve_train_divergences",
            "Jobs failed because training diverged (non-finite or runaway loss; not relaunched).",
            registry=r,
        )
        self.last_checkpoint = Gauge(
            "alexserve_last_checkpoint_timestamp_seconds", "Unix time of the newest committed checkpoint.", registry=r
        )
        self.control_requests = Counter(
            "alexserve_control_requests",
            "Control requests answered, by verb and outcome.",
            ["verb", "outcome"],
            registry=r,
        )
        self.reports_rejected = Counter(
            "alexserve_worker_reports_rejected", "Worker messages dropped, by reason.", ["reason"], registry=r
        )
        self.state_write_errors = Counter(
            "alexserve_state_write_errors",
            "Job records that could not be saved (the job is marked with the error; the service goes on).",
            registry=r,
        )
        self.http_connections_refused = Counter(
            "alexserve_http_connections_refused",
            "Connections to /metrics and /healthz closed at once because the connection limit was reached.",
            registry=r,
        )

        for rank in RANKS:
            self._create_rank_series(rank)
        self.pair_images.labels(pair="0")
        for crop in CROPS:
            self.top1.labels(crop=crop)
            self.top5.labels(crop=crop)
        for state in JobState:
            self.jobs.labels(state=state.value)
        for verb in CONTROL_VERBS:
            for outcome in CONTROL_OUTCOMES:
                self.control_requests.labels(verb=verb, outcome=outcome)
        for reason in REJECT_REASONS:
            self.reports_rejected.labels(reason=reason)

    def _create_rank_series(self, rank: str) -> None:
        self.step_seconds.labels(rank=rank)
        self.data_wait.labels(rank=rank)
        self.device_memory.labels(rank=rank)
        for point in TIMED_EXCHANGE_POINTS:
            for direction in EXCHANGE_DIRECTIONS:
                self.exchange_seconds.labels(rank=rank, point=point, direction=direction)
                self.exchange_bytes.labels(rank=rank, point=point, direction=direction)

    def on_step(self, report: StepReport) -> None:
        rank = str(report.rank)
        if report.tower == 0:  # both towers of a pair see the same images
            self.images.inc(report.images)
            self.pair_images.labels(pair=str(report.pair)).inc(report.images)
        if report.rank == 0:
            self.steps.inc(report.steps)
            self.loss.set(report.loss)
            self.learning_rate.set(report.learning_rate)
            self.epoch.set(report.epoch)
        histogram = self.step_seconds.labels(rank=rank)
        for seconds in report.step_seconds:
            histogram.observe(seconds)
        self.data_wait.labels(rank=rank).inc(report.data_wait_seconds)
        for timing in report.exchange:
            self.exchange_seconds.labels(rank=rank, point=timing.point, direction=timing.direction).inc(timing.seconds)
            self.exchange_bytes.labels(rank=rank, point=timing.point, direction=timing.direction).inc(timing.bytes)
        self.device_memory.labels(rank=rank).set(report.device_memory_bytes)

    def on_eval(self, report: EvalReport) -> None:
        self.top1.labels(crop="center").set(report.center_top1_error)
        self.top5.labels(crop="center").set(report.center_top5_error)
        if report.ten_crop_top1_error is not None:
            self.top1.labels(crop="ten_crop").set(report.ten_crop_top1_error)
        if report.ten_crop_top5_error is not None:
            self.top5.labels(crop="ten_crop").set(report.ten_crop_top5_error)

    def on_checkpoint(self, event: CheckpointEvent) -> None:
        self.last_checkpoint.set(event.timestamp)

    def set_job_counts(self, counts: dict[str, int]) -> None:
        for state in JobState:
            self.jobs.labels(state=state.value).set(counts.get(state.value, 0))


METRIC_NAMES = (
    "alexserve_build_info",
    "alexserve_train_images_total",
    "alexserve_pair_train_images_total",
    "alexserve_train_steps_total",
    "alexserve_train_step_duration_seconds",
    "alexserve_train_data_wait_seconds_total",
    "alexserve_exchange_seconds_total",
    "alexserve_exchange_bytes_total",
    "alexserve_train_loss",
    "alexserve_train_learning_rate",
    "alexserve_train_epoch",
    "alexserve_validation_top1_error_ratio",
    "alexserve_validation_top5_error_ratio",
    "alexserve_device_memory_bytes",
    "alexserve_jobs",
    "alexserve_worker_restarts_total",
    "alexserve_train_divergences_total",
    "alexserve_last_checkpoint_timestamp_seconds",
    "alexserve_control_requests_total",
    "alexserve_worker_reports_rejected_total",
    "alexserve_state_write_errors_total",
    "alexserve_http_connections_refused_total",
)
"""Every exported metric family's sample name (histograms add _bucket/_sum/_count): the dashboard's vocabulary."""
