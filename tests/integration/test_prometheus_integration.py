"""A real Prometheus server scraping a real supervisor through deploy/prometheus.yml.

Needs Debian's `prometheus` package (prometheus and promtool); skipped without
it, except under CI (`CI` set), where its absence is a failure.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers.supervisor import REPO, free_port, require_prometheus, supervisor, tiny_spec, wait_until  # noqa: F401

DEPLOY_CONFIG = REPO / "deploy" / "prometheus.yml"
pytestmark = pytest.mark.timeout(180)


def test_promtool_accepts_the_deploy_config():
    _, promtool = require_prometheus()
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert jobs["alexserve"]["metrics_path"] == "/metrics"


def local_config(metrics_port: int, out: Path) -> Path:
    """deploy/prometheus.yml with a 1 s scrape interval and the target on this supervisor's port."""
    config = yaml.safe_load(DEPLOY_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (scrape,) = [c for c in config["scrape_configs"] if c["job_name"] == "alexserve"]
    for static in scrape["static_configs"]:
        static["targets"] = [f"127.0.0.1:{metrics_port}"]
    out.write_text(yaml.safe_dump(config))
    return out


def query(base: str, promql: str) -> list[dict]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


@pytest.fixture
def prometheus(supervisor, tmp_path):  # noqa: F811 (fixture)
    binary, promtool = require_prometheus()
    config = local_config(supervisor.metrics_port, tmp_path / "prometheus.yml")
    check = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def ready():
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, "Prometheus to be ready", interval=0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_prometheus_sees_train_images_grow_while_a_job_trains(supervisor, prometheus):  # noqa: F811 (fixture)
    wait_until(
        lambda: [r for r in query(prometheus, 'up{job="alexserve"}') if r["value"][1] == "1"],
        30,
        "Prometheus to scrape the supervisor",
    )
    job = supervisor.client.submit(tiny_spec(100_000, name="watched"), "watched.json")
    seen: list[float] = []

    def grown():
        status = supervisor.client.status(job["id"])
        assert status["state"] in ("queued", "running"), status["reason"] + supervisor.job_log(job["id"])
        result = query(prometheus, "alexserve_train_images_total")
        if result:
            value = float(result[0]["value"][1])
            if not seen or value != seen[-1]:
                seen.append(value)
        return len([v for v in seen if v > 0]) >= 3

    wait_until(grown, 90, "alexserve_train_images_total to grow in Prometheus", interval=0.5)
    assert seen == sorted(seen) and seen[-1] > seen[0], seen
    # Series created at zero are in Prometheus before their first event.
    assert query(prometheus, 'alexserve_jobs{state="running"}')[0]["value"][1] == "1"
    assert query(prometheus, "alexserve_worker_restarts_total")[0]["value"][1] == "0"
    rate = query(prometheus, "rate(alexserve_train_images_total[5s])")
    assert rate and float(rate[0]["value"][1]) > 0

    # promtool's lint on the live output, with real data in it.
    _, promtool = require_prometheus()
    with urllib.request.urlopen(supervisor.metrics_url, timeout=5) as r:
        text = r.read()
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
    supervisor.client.call("cancel", job_id=job["id"])
