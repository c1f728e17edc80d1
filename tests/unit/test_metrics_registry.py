"""The supervisor's metrics: Prometheus naming, series at zero, report accounting, promtool's lint, HTTP auth."""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alexserve.contract.worker_messages import CheckpointEvent, EvalReport, ExchangeTiming, StepReport
from alexserve.supervisor.http_endpoint import MetricsServer
from alexserve.supervisor.metrics import METRIC_NAMES, SupervisorMetrics
from helpers.supervisor import require_prometheus

pytestmark = pytest.mark.timeout(60)


def samples(metrics: SupervisorMetrics) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def step_report(rank: int, **kw) -> StepReport:
    fields = dict(
        job_id="job-1",
        rank=rank,
        pair=0,
        tower=rank % 2,
        epoch=2,
        step=10,
        steps=5,
        loss=1.5,
        learning_rate=0.01,
        images=320,
        step_seconds=[0.1, 0.2, 0.3, 0.4, 0.5],
        data_wait_seconds=0.25,
        exchange=[
            ExchangeTiming(point="conv3", direction="forward", seconds=0.5, bytes=1000),
            ExchangeTiming(point="fc8", direction="backward", seconds=0.25, bytes=10),
        ],
        device_memory_bytes=12345,
    )
    fields.update(kw)
    return StepReport(**fields)


def test_names_follow_prometheus_conventions():
    metrics = SupervisorMetrics()
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    names = {f.name for f in families}
    exported = {
        ("alexserve_build_info" if f.name == "alexserve_build" else f.name + ("_total" if f.type == "counter" else ""))
        for f in families
    }
    assert exported == set(METRIC_NAMES)
    for family in families:
        assert family.name.startswith("alexserve_") and family.name.count("alexserve") == 1, family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        assert family.documentation, family.name
        for s in family.samples:
            assert "job" not in s.labels and "job_id" not in s.labels and "path" not in s.labels, s
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
    assert "alexserve_train_images" in names  # family name; the sample is alexserve_train_images_total
    assert not any(n.endswith("_created") for n in (s.name for f in families for s in f.samples))


def test_series_exist_at_zero_before_any_report():
    values = samples(SupervisorMetrics())
    assert values[("alexserve_train_images_total", ())] == 0
    assert values[("alexserve_worker_restarts_total", ())] == 0
    for state in ("queued", "running", "paused", "stopping", "stopped", "completed", "failed", "cancelled"):
        assert values[("alexserve_jobs", (("state", state),))] == 0
    for rank in ("0", "1"):
        for point in ("conv3", "fc6", "fc7", "fc8", "logits"):
            for direction in ("forward", "backward"):
                key = (("direction", direction), ("point", point), ("rank", rank))
                assert values[("alexserve_exchange_seconds_total", key)] == 0
                assert values[("alexserve_exchange_bytes_total", key)] == 0
        assert values[("alexserve_train_step_duration_seconds_count", (("rank", rank),))] == 0
    for crop in ("center", "ten_crop"):
        assert ("alexserve_validation_top1_error_ratio", (("crop", crop),)) in values


def test_reports_update_the_right_series():
    metrics = SupervisorMetrics()
    metrics.on_step(step_report(0))
    metrics.on_step(step_report(1))
    metrics.on_eval(
        EvalReport(
            job_id="job-1",
            epoch=2,
            center_top1_error=0.6,
            center_top5_error=0.3,
            ten_crop_top1_error=0.55,
            ten_crop_top5_error=0.25,
        )
    )
    metrics.on_checkpoint(CheckpointEvent(job_id="job-1", step=10, timestamp=1.7e9))
    values = samples(metrics)
    assert values[("alexserve_train_images_total", ())] == 320  # tower 0 only: both towers see the same images
    assert values[("alexserve_train_steps_total", ())] == 5  # rank 0 only
    assert values[("alexserve_train_step_duration_seconds_count", (("rank", "1"),))] == 5
    assert values[("alexserve_train_step_duration_seconds_sum", (("rank", "0"),))] == pytest.approx(1.5)
    assert values[("alexserve_train_data_wait_seconds_total", (("rank", "0"),))] == 0.25
    key = (("direction", "forward"), ("point", "conv3"), ("rank", "1"))
    assert values[("alexserve_exchange_seconds_total", key)] == 0.5
    assert values[("alexserve_exchange_bytes_total", key)] == 1000
    assert values[("alexserve_train_loss", ())] == 1.5
    assert values[("alexserve_train_learning_rate", ())] == 0.01
    assert values[("alexserve_train_epoch", ())] == 2
    assert values[("alexserve_device_memory_bytes", (("rank", "1"),))] == 12345
    assert values[("alexserve_validation_top5_error_ratio", (("crop", "ten_crop"),))] == 0.25
    assert values[("alexserve_last_checkpoint_timestamp_seconds", ())] == 1.7e9


def test_promtool_check_metrics_accepts_the_output():
    _, promtool = require_prometheus()
    metrics = SupervisorMetrics()
    metrics.on_step(step_report(0))
    text = generate_latest(metrics.registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_http_endpoint_serves_metrics_and_health_and_checks_the_token():
    metrics = SupervisorMetrics()
    token = "0123456789abcdef-token"
    server = MetricsServer("127.0.0.1", 0, metrics.registry, lambda: {"status": "ok"}, token)
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/healthz", timeout=5) as r:  # open: health checks carry no secret
            assert r.status == 200 and b'"ok"' in r.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/metrics", timeout=5)
        assert err.value.code == 401
        req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert b"alexserve_train_images_total 0.0" in r.read()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{base}/nope", timeout=5)
        assert err.value.code == 404
    finally:
        server.close()


def test_images_are_counted_per_pair_and_once_per_pair_in_total():
    metrics = SupervisorMetrics()
    for rank in range(4):  # two pairs, both towers of each report the same images
        metrics.on_step(step_report(rank, pair=rank // 2, images=64))
    values = samples(metrics)
    assert values[("alexserve_train_images_total", ())] == 128
    assert values[("alexserve_pair_train_images_total", (("pair", "0"),))] == 64
    assert values[("alexserve_pair_train_images_total", (("pair", "1"),))] == 64
