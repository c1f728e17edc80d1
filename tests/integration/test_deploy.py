"""The docker compose deployment, checked without a Docker engine (CI has none).

- deploy/docker-compose.yml validates against the compose-spec JSON schema
  (vendored in tests/vendor/compose-spec), and with `docker compose config`
  where a Compose v2 CLI is installed; its structure says what issue 6 asks
  (GPUs 0 and 1, /dev/shm, read-only data, loopback ports, token from the env file).
- deploy/prometheus.yml passes `promtool check config` and scrapes the compose
  service on the port the image serves /metrics on.
- Every metric the Grafana dashboard queries is a sample name of the real
  SupervisorMetrics registry, every label it groups by exists, and promtool
  parses every query.
- docker/Dockerfile installs CI's torch (.ci/run's pin) in its CUDA build on an
  NVIDIA CUDA runtime base with Python 3.11, then exactly pyproject's dependencies
  plus the extras it names (which exist), runs as a non-root user with
  a /healthz health check, and its command line is one the supervisor accepts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alexserve.cli.supervisor import parse_args
from alexserve.supervisor.auth import AuthError, check_binds, is_loopback_host
from alexserve.supervisor.metrics import SupervisorMetrics
from alexserve.supervisor.spec import load_spec

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "alexserve.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DEPLOY / "grafana" / "provisioning" / "dashboards" / "alexserve.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
REQUIREMENTS_SCRIPT = REPO / "docker" / "pyproject_requirements.py"
COMPOSE_SCHEMA = Path(__file__).resolve().parents[1] / "vendor" / "compose-spec" / "compose-spec.json"

# What a user puts in deploy/.env beyond .env.example's defaults (its secrets are empty on purpose).
TEST_SECRETS = {"ALEXSERVE_TOKEN": "0123456789abcdef0123456789abcdef", "GRAFANA_ADMIN_PASSWORD": "not-a-real-password"}


def require_tool(name: str) -> str:
    """The tool's path; a failure under CI (which installs it), a skip elsewhere."""
    path = shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (Debian: apt-get install -y prometheus)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must install it (.ci/run)")
    pytest.skip(reason)


# ----------------------------------------------------------------------------- compose


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not KEY=VALUE"
            env[key.strip()] = value.strip()
    return env


VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|:\?|-|\?)(?P<arg>[^}]*))?\}")


def interpolate(node, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error} substitution over a parsed file."""
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, env) for v in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        value = env.get(name)
        if op == ":-":
            return value if value else arg
        if op == ":?":
            if not value:
                raise ValueError(f"required variable {name} is missing a value: {arg}")
            return value
        if value is None:
            raise KeyError(f"{name} is neither in the env file nor given a default")
        return value

    return VARIABLE.sub(substitute, node)


def compose_variables() -> set[str]:
    return {m["name"] for m in VARIABLE.finditer(COMPOSE_FILE.read_text())}


@pytest.fixture(scope="module")
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def compose(raw_compose) -> dict:
    """The compose file as `docker compose` sees it with .env.example plus the two secrets."""
    return interpolate(raw_compose, {**read_env_file(ENV_EXAMPLE), **TEST_SECRETS})


def test_compose_file_validates_against_the_compose_spec_schema(raw_compose, compose):
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed for the compose-spec schema check")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    for label, tree in (("interpolated", compose), ("as written", raw_compose)):
        errors = sorted(validator.iter_errors(tree), key=lambda e: list(e.absolute_path))
        assert not errors, f"{label}: " + "\n".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
        )


def test_the_schema_check_catches_a_broken_file(compose):
    """The schema is strict enough to matter: a misspelt key and a bad GPU reservation both fail."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is needed for the compose-spec schema check")
    validator = jsonschema.Draft202012Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    misspelt = json.loads(json.dumps(compose))
    misspelt["services"]["alexserve"]["shm-size"] = misspelt["services"]["alexserve"].pop("shm_size")
    assert list(validator.iter_errors(misspelt))
    bad_gpus = json.loads(json.dumps(compose))
    bad_gpus["services"]["alexserve"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] = "0,1"
    assert list(validator.iter_errors(bad_gpus))


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI (`docker compose` plugin or a v2 `docker-compose`), or None."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for argv in candidates:
        try:
            out = subprocess.run([*argv, "version", "--short"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2"):
            return argv
    return None


def test_docker_compose_config_accepts_the_file(tmp_path):
    argv = compose_cli()
    if argv is None:
        pytest.skip("no Compose v2 CLI here (Debian's docker-compose 1.x predates the GPU device syntax)")
    secrets = tmp_path / "secrets.env"
    secrets.write_text("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
    base = [*argv, "-f", str(COMPOSE_FILE), "--project-directory", str(DEPLOY), "--env-file", str(ENV_EXAMPLE)]
    ok = subprocess.run([*base, "--env-file", str(secrets), "config", "-q"], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    # With .env.example as shipped (empty token) compose refuses, naming the variable.
    refused = subprocess.run([*base, "config", "-q"], capture_output=True, text=True, timeout=30)
    assert refused.returncode != 0 and "ALEXSERVE_TOKEN" in refused.stderr


def test_compose_services_and_gpu_reservation(compose):
    services = compose["services"]
    assert set(services) == {"alexserve", "prometheus", "grafana"}
    alexserve = services["alexserve"]
    devices = alexserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0", "1"], "capabilities": ["gpu"]}]
    # NCCL's shared-memory transport and the loader workers need far more than Docker's 64 MB /dev/shm.
    assert alexserve.get("ipc") == "host" or parse_size(alexserve["shm_size"]) >= 1 << 30
    assert alexserve["ulimits"]["memlock"] == -1
    assert alexserve["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (DEPLOY / alexserve["build"]["context"] / alexserve["build"]["dockerfile"]).resolve() == DOCKERFILE
    uid = alexserve["user"].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "the supervisor must not run as root"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", str(text).lower())
    assert match, text
    return int(match[1]) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match[2]]


def mounts(service: dict) -> dict[str, dict]:
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            volume = {
                "type": "volume" if not source.startswith((".", "/")) else "bind",
                "source": source,
                "target": target,
                "read_only": mode == ["ro"],
            }
        out[volume["target"]] = volume
    return out


def test_compose_volumes(compose):
    services = compose["services"]
    alexserve = mounts(services["alexserve"])
    assert alexserve["/data"]["read_only"] is True, "the dataset is mounted read-only"
    for writable in ("/runs", "/state"):
        assert not alexserve[writable].get("read_only"), writable
    assert (DEPLOY / alexserve["/jobs"]["source"]).resolve() == DEPLOY / "jobs"
    # The image's command line keeps job state in /state and job folders in /runs, where the volumes are.
    assert dockerfile_cmd_args().state_dir == Path("/state")
    assert dockerfile_cmd_args().runs_root == Path("/runs")

    prometheus = mounts(services["prometheus"])
    assert (DEPLOY / prometheus["/etc/prometheus/prometheus.yml"]["source"]).resolve() == PROMETHEUS_CONFIG
    assert prometheus["/etc/prometheus/prometheus.yml"]["read_only"] is True
    grafana = mounts(services["grafana"])
    assert (DEPLOY / grafana["/etc/grafana/provisioning"]["source"]).resolve() == DEPLOY / "grafana" / "provisioning"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert (DEPLOY / grafana[dashboards_path]["source"]).resolve() == DASHBOARD.parent
    assert (
        services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        == f"{dashboards_path}/{DASHBOARD.name}"
    )


def test_every_published_port_binds_loopback_by_default(raw_compose, compose):
    for name, service in raw_compose["services"].items():
        for port in service.get("ports", []):
            assert isinstance(port, str) and port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), (name, port)
    assert read_env_file(ENV_EXAMPLE)["BIND_ADDRESS"] == "127.0.0.1"
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host, _published, _target = port.split(":")
            assert is_loopback_host(host), (name, port)
    targets = {int(p.split(":")[-1]) for p in compose["services"]["alexserve"]["ports"]}
    args = dockerfile_cmd_args()
    assert targets == {int(args.control.rsplit(":", 1)[1]), args.metrics_port}


def test_secrets_come_from_the_env_file_and_are_not_shipped(raw_compose):
    alexserve_env = raw_compose["services"]["alexserve"]["environment"]
    grafana_env = raw_compose["services"]["grafana"]["environment"]
    # Required (:?) substitutions: compose refuses to start with an empty token or password.
    assert re.fullmatch(r"\$\{ALEXSERVE_TOKEN:\?[^}]+\}", alexserve_env["ALEXSERVE_TOKEN"])
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", grafana_env["GF_SECURITY_ADMIN_PASSWORD"])
    example = read_env_file(ENV_EXAMPLE)
    assert example["ALEXSERVE_TOKEN"] == "" and example["GRAFANA_ADMIN_PASSWORD"] == ""
    with pytest.raises(ValueError, match="ALEXSERVE_TOKEN"):
        interpolate(raw_compose, example)
    # Every variable the compose file uses is documented in .env.example.
    assert compose_variables() <= set(example), compose_variables() - set(example)


def test_healthchecks_probe_the_supervisor_healthz(compose):
    test = compose["services"]["alexserve"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    assert f"http://127.0.0.1:{dockerfile_cmd_args().metrics_port}/healthz" in " ".join(test)
    for name in ("prometheus", "grafana"):
        assert compose["services"][name]["healthcheck"]["test"][0] == "CMD"


# ----------------------------------------------------------------------------- prometheus


def test_promtool_accepts_prometheus_config_and_it_scrapes_the_compose_service(compose):
    promtool = require_tool("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == "alexserve"]
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    # On the compose network the supervisor is reached by service name, on its container port.
    assert targets == [f"alexserve:{dockerfile_cmd_args().metrics_port}"]
    # Without an authorization block Prometheus sends no token: the image must serve /metrics publicly.
    assert "authorization" in job or dockerfile_cmd_args().metrics_public
    assert "alexserve" in compose["services"]


# ----------------------------------------------------------------------------- grafana


PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
PROMETHEUS_OWN_METRICS = {"up"}  # made by Prometheus for every target, not by the supervisor


def exposed_samples() -> dict[str, set[str]]:
    """Sample name -> label names, from the text the real registry serves."""
    out: dict[str, set[str]] = {}
    text = generate_latest(SupervisorMetrics().registry).decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                queries.append((panel["title"], target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return queries


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping label names) in a PromQL expression."""
    expr = expr.replace("$__rate_interval", "5m")
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    grouping = set()
    for clause in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        grouping.update(label.strip() for label in clause.split(",") if label.strip())
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue  # a function or aggregation, or a keyword
        if match.start() > 0 and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent or unit of a number
        names.add(word)
    return names, grouping


def test_promql_name_extraction():
    names, labels = promql_names(
        'histogram_quantile(0.9, sum by (le, rank) (rate(x_bucket{job="a"}[$__rate_interval]))) / y_total > 0'
    )
    assert names == {"x_bucket", "y_total"} and labels == {"le", "rank"}
    names, _ = promql_names("time() - max(last_ts) and max(last_ts) > 1e3")
    assert names == {"last_ts"}


def test_every_dashboard_metric_exists_in_the_supervisor_registry():
    samples = exposed_samples()
    queries = dashboard_queries()
    assert len(queries) >= 12
    used = set()
    for title, expr in queries:
        names, grouping = promql_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - set(samples) - PROMETHEUS_OWN_METRICS
        assert not unknown, (
            f"panel {title!r} queries {sorted(unknown)}, which the supervisor does not export ({expr!r})"
        )
        labels = set().union(*(samples.get(n, set()) for n in names)) | ({"le"} & grouping)
        assert grouping <= labels, (
            f"panel {title!r} groups by {sorted(grouping - labels)}, not labels of {sorted(names)}"
        )
        used |= names
    # What issue 6 asks the dashboard to show.
    wanted = {
        "alexserve_train_images_total",
        "alexserve_train_loss",
        "alexserve_validation_top1_error_ratio",
        "alexserve_validation_top5_error_ratio",
        "alexserve_train_learning_rate",
        "alexserve_train_data_wait_seconds_total",
        "alexserve_exchange_seconds_total",
        "alexserve_exchange_bytes_total",
        "alexserve_worker_restarts_total",
        "alexserve_jobs",
        "alexserve_train_step_duration_seconds_bucket",
        "alexserve_device_memory_bytes",
        "alexserve_last_checkpoint_timestamp_seconds",
    }
    assert wanted <= used, sorted(wanted - used)


def test_the_metric_check_would_catch_a_wrong_name():
    samples = set(exposed_samples())
    for wrong in ("alexserve_train_images", "alexserve_train_step_duration_seconds", "alexserve_train_loss_total"):
        names, _ = promql_names(f"rate({wrong}[5m])")
        assert names - samples, wrong  # a family name without its sample suffix is not a queryable series


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = require_tool("promtool")
    rules = [
        {"record": f"alexserve_dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "1m")}
        for i, (_title, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_uses_the_provisioned_datasource():
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "alexserve"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]


# ----------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped.removesuffix("\\").strip() if current else stripped.removesuffix("\\").strip()
        if not stripped.endswith("\\"):
            keyword, _, args = current.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


def dockerfile_cmd_args():
    """The supervisor's parsed arguments for the image's ENTRYPOINT + CMD."""
    instructions = dict(dockerfile_instructions())
    entrypoint, cmd = json.loads(instructions["ENTRYPOINT"]), json.loads(instructions["CMD"])
    assert entrypoint == ["alexserve", "supervisor"]
    return parse_args(cmd)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def dockerfile_args() -> dict[str, str]:
    return {k: v for k, v in (a.split("=", 1) for kw, a in dockerfile_instructions() if kw == "ARG" and "=" in a)}


def ci_torch_version() -> str:
    """The torch CI tests: `pip install ... torch==X` in .ci/run."""
    (version,) = re.findall(r"\btorch==([\w.+]+)", (REPO / ".ci" / "run").read_text())
    return version


# (torch minor, PyTorch wheel index, CUDA major.minor of the base image, DALI wheel) sets that exist.
# Sources: torch 2.12 dropped CUDA 12.8 wheels, keeping 12.6 and 13.0 (pytorch/pytorch#178665, the 2.12 CUDA
# RFC; torch 2.13's cu126/cu130 wheels, pytorch/FBGEMM#5976 and googlecolab/colabtools#5982); DALI's wheel is
# built per CUDA major (docs.nvidia.com/deeplearning/dali, Installation: nvidia-dali-cuda120, -cuda130).
KNOWN_GOOD_SETS = {
    ("2.13", "cu126", "12.6", "nvidia-dali-cuda120"),
    ("2.13", "cu130", "13.0", "nvidia-dali-cuda130"),
}


def test_the_dockerfiles_torch_cuda_dali_set_is_a_known_good_one():
    args = dockerfile_args()
    cuda = re.fullmatch(r"nvidia/cuda:(\d+\.\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", args["BASE_IMAGE"])
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/(cu\d+)", args["TORCH_INDEX_URL"])
    torch_minor = ".".join(args["TORCH_VERSION"].split(".")[:2])
    (dali,) = [
        re.match(r"nvidia-dali-cuda\d+", d)[0]
        for d in pyproject()["project"]["optional-dependencies"]["dali"]
        if d.startswith("nvidia-dali-cuda")
    ]
    found = (torch_minor, index and index[1], cuda and cuda[1], dali)
    assert found in KNOWN_GOOD_SETS, f"{found} is not a (torch, index, CUDA, DALI) set known to exist"


def test_the_known_good_check_refuses_the_old_cu128_set():
    assert ("2.13", "cu128", "12.8", "nvidia-dali-cuda120") not in KNOWN_GOOD_SETS


def test_base_image_is_cuda_runtime_with_cis_torch_python_311_and_dali():
    args = dockerfile_args()
    base = args["BASE_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.(\d+)-(?:cudnn-)?runtime-ubuntu\d+\.\d+", base)
    assert match, f"{base}: not an NVIDIA CUDA runtime tag"
    cuda_major, cuda_minor = match[1], match[2]
    # The same torch as CI, in the CUDA build from the PyTorch index that matches the base image's CUDA.
    assert args["TORCH_VERSION"] == ci_torch_version(), (args["TORCH_VERSION"], ci_torch_version())
    index = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)", args["TORCH_INDEX_URL"])
    assert index and index[1] == cuda_major + cuda_minor, (args["TORCH_INDEX_URL"], base)
    (torch_spec,) = [d for d in pyproject()["project"]["dependencies"] if re.match(r"torch\b", d)]
    minimum = re.fullmatch(r"torch>=([\d.]+)", torch_spec)
    assert minimum, f"expected a lower bound only, got {torch_spec!r}"
    version = tuple(int(x) for x in args["TORCH_VERSION"].split("+")[0].split("."))
    assert version >= tuple(int(x) for x in minimum[1].split(".")), (args["TORCH_VERSION"], torch_spec)
    assert args["PYTHON_VERSION"] == "3.11"
    # DALI's wheel is built per CUDA major version: nvidia-dali-cuda120 for CUDA 12.x.
    dali = pyproject()["project"]["optional-dependencies"]["dali"]
    (dali_cuda,) = [re.match(r"nvidia-dali-cuda(\d+)", d)[1] for d in dali if d.startswith("nvidia-dali-cuda")]
    assert dali_cuda[:-1] == cuda_major, f"DALI for CUDA {dali_cuda} on a CUDA {cuda_major}.{cuda_minor} base image"
    froms = [a for kw, a in dockerfile_instructions() if kw == "FROM"]
    assert froms == ["${BASE_IMAGE}"]


def test_dockerfile_installs_pyproject_dependencies_and_no_torch_of_its_own():
    instructions = dockerfile_instructions()
    runs = [a for kw, a in instructions if kw == "RUN"]
    pip_installs = [
        shlex.split(cmd) for run in runs for cmd in re.split(r"&&|;", run) if re.search(r"\bpip\d* install\b", cmd)
    ]
    assert pip_installs, "the Dockerfile installs nothing"
    extras_known = set(pyproject()["project"]["optional-dependencies"])
    package_installs, torch_installs = [], []
    for argv in pip_installs:
        if "--index-url" in argv:
            torch_installs.append(argv)
            continue
        packages = [a for a in argv[argv.index("install") + 1 :] if not a.startswith("-")]
        for package in packages:
            assert not re.match(r"(torch|torchvision|torchaudio)\b", package), (
                f"torch is installed once, CI's version from the CUDA index: {argv}"
            )
            local = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", package)
            if local:
                extras = set(local[1].split(",")) if local[1] else set()
                assert extras <= extras_known, f"extras {extras - extras_known} are not in pyproject"
                package_installs.append(extras)
        assert "--no-deps" not in argv or not packages, "installing without dependencies skips pyproject's"
    assert package_installs == [{"dali"}], "install the package itself, once, with the dali extra"
    # torch: once, exactly CI's version, from the CUDA index (TORCH_INDEX_URL), nothing else in that command.
    (torch_install,) = torch_installs
    packages = [a for a in torch_install[torch_install.index("install") + 1 :] if not a.startswith("-")]
    assert packages == ["torch==${TORCH_VERSION}", "${TORCH_INDEX_URL}"], torch_install
    # The dependency layer: the script's output for the same extras is exactly pyproject's list.
    (script_run,) = [r for r in runs if "pyproject_requirements.py" in r]
    script_extras = shlex.split(re.search(r"pyproject_requirements\.py\s+pyproject\.toml([^>]*)>", script_run)[1])
    assert set(script_extras) == {"dali"}
    out = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml"), *script_extras],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    project = pyproject()["project"]
    assert out == [d.replace(" ", "") for d in project["dependencies"] + project["optional-dependencies"]["dali"]]
    # pip may not swap the installed CUDA torch: it is pinned by a constraints file made from it, right after it.
    env_lines = " ".join(a for kw, a in instructions if kw == "ENV")
    assert "PIP_CONSTRAINT=/etc/alexserve/constraints.txt" in env_lines
    (pin_run,) = [r for r in runs if "torch.__version__" in r and "/etc/alexserve/constraints.txt" in r]
    assert "--index-url" in pin_run and runs.index(pin_run) < runs.index(script_run)


def test_requirements_script_rejects_an_unknown_extra():
    result = subprocess.run(
        [sys.executable, str(REQUIREMENTS_SCRIPT), str(REPO / "pyproject.toml"), "no_such_extra"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and "no_such_extra" in result.stderr


def test_dockerfile_layers_are_ordered_for_caching_and_the_context_holds_what_it_copies():
    instructions = dockerfile_instructions()
    order = [(kw, a) for kw, a in instructions if kw in ("COPY", "RUN")]
    copy_pyproject = next(i for i, (kw, a) in enumerate(order) if kw == "COPY" and "pyproject.toml" in a)
    install_deps = next(i for i, (kw, a) in enumerate(order) if kw == "RUN" and "pip install -r" in a)
    copy_source = next(i for i, (kw, a) in enumerate(order) if kw == "COPY" and a.split()[0] == "alexserve")
    install_package = next(i for i, (kw, a) in enumerate(order) if kw == "RUN" and 'pip install ".[' in a)
    assert copy_pyproject < install_deps < copy_source < install_package
    # .dockerignore is an allow-list: every COPY source must be let through, and nothing else matters.
    allowed = {
        line.strip().lstrip("!").rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip().startswith("!")
    }
    assert "*" in DOCKERIGNORE.read_text().splitlines()
    for kw, args in instructions:
        if kw == "COPY":
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert source in allowed, f"COPY {source} is not in .dockerignore's allow-list"
                assert (REPO / source).exists(), source
    assert not any(a == "deploy" or a.endswith(".env") for a in allowed), "deploy/.env holds the token"


def test_image_runs_as_non_root_with_a_healthz_check_and_no_secrets():
    instructions = dockerfile_instructions()
    keywords = [kw for kw, _ in instructions]
    users = [a for kw, a in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    assert keywords.index("USER") < keywords.index("ENTRYPOINT")
    (healthcheck,) = [a for kw, a in instructions if kw == "HEALTHCHECK"]
    assert f"http://127.0.0.1:{dockerfile_cmd_args().metrics_port}/healthz" in healthcheck and "urllib" in healthcheck
    for kw, args in instructions:
        if kw in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(TOKEN|PASSWORD|SECRET)\s*=", args, re.IGNORECASE), f"{kw} {args}"


def test_image_command_is_accepted_by_the_supervisor_and_needs_the_runtime_token():
    args = dockerfile_cmd_args()
    assert args.control.startswith("tcp://0.0.0.0:") and args.metrics_host == "0.0.0.0"
    # Reachable from the compose network, so the supervisor must refuse to start without a token...
    with pytest.raises(AuthError):
        check_binds(args.control, args.metrics_host, None)
    # ...and starts with the one compose passes in from deploy/.env.
    check_binds(args.control, args.metrics_host, TEST_SECRETS["ALEXSERVE_TOKEN"])
    assert args.token_file is None  # the token is ALEXSERVE_TOKEN at run time, never a file in the image


# ----------------------------------------------------------------------------- job specs


@pytest.mark.parametrize("spec", sorted((DEPLOY / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_job_specs_validate_and_use_container_paths(spec, compose):
    job = load_spec(spec)
    targets = set(mounts(compose["services"]["alexserve"]))
    # run_dir is relative to the supervisor's runs root, which the image puts on the runs volume.
    assert job.run_dir is not None and not job.run_dir.is_absolute() and ".." not in job.run_dir.parts
    assert dockerfile_cmd_args().runs_root == Path("/runs") and "/runs" in targets, "checkpoints on the runs volume"
    if job.config.data.source == "folder":
        assert job.config.data.train_dir.is_absolute() and job.config.data.train_dir.parts[1] == "data"
    assert job.config.dist.device == "cuda" and job.config.dist.backend == "nccl"
