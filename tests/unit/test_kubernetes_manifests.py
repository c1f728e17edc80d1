"""deploy/kubernetes/ (issue 22), offline: no cluster ran these manifests.

- Every object validates against the vendored schemas: PersistentVolumeClaim and ConfigMap against the
  Kubernetes 1.31 strict JSON schemas (tests/vendor/kubernetes), each PyTorchJob against the excerpt of the
  PyTorchJob CRD's openAPIV3Schema (tests/vendor/kubeflow, closed to unknown fields as `kubectl apply`'s
  strict field validation does), its metadata against ObjectMeta, each replica's pod template against
  PodTemplateSpec; plus the Training Operator's admission webhook rules (pkg/webhooks/pytorch).
- The policy: two workers and two GPUs per pod, the launcher as PID 1 with torchrun arguments that parse to
  what the operator's environment gives each pod, /dev/shm in memory, the shared run folder, a grace period
  that covers a checkpoint, and preemption mapped to a code the operator retries (>= 128) while 1-4 fail.
- A misspelt field or a broken policy is caught (the checks can fail).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import referencing
import yaml
from referencing.jsonschema import DRAFT202012
from torch.distributed import run as torchrun

from alexserve.config.job import JobConfig
from alexserve.contract.names import WorkerExit
from alexserve.launch import preempted_exit_code

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "deploy" / "kubernetes"
VENDOR = REPO / "tests" / "vendor"
K8S = "https://kubernetes.io/api/"  # the $id of _definitions.json; its users refer to /api/_definitions.json
CORE = {"PersistentVolumeClaim": "persistentvolumeclaim-v1.json", "ConfigMap": "configmap-v1.json"}
GRACE_SECONDS = 180  # docs/cluster.md: up to 10 steps plus one 244 MB shard write per rank, with a margin
SHM = "/dev/shm"
RUNS_CLAIM = "alexserve-runs"
JOB_CONFIGMAP = "alexserve-job"
LAUNCHER = ["python", "-m", "alexserve.launch"]


def retryable(code: int) -> bool:
    """The operator's rule for restartPolicy ExitCode: IsRetryableExitCode, pkg/util/train/train_util.go."""
    return code >= 128


def closed(schema):
    """A CRD schema as `kubectl apply --validate=strict` applies it: unknown fields are errors, not pruned."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            if not schema.get("x-kubernetes-preserve-unknown-fields"):
                schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def load_registry() -> tuple[referencing.Registry, dict]:
    folder = VENDOR / "kubernetes"
    names = ["_definitions.json", *CORE.values(), "podtemplatespec-v1.json"]
    resources = [(K8S + name, json.loads((folder / name).read_text())) for name in names]
    crd = closed(yaml.safe_load((VENDOR / "kubeflow" / "pytorchjob-v1-openapi.yaml").read_text()))
    resources.append((crd["$id"], crd))
    registry = referencing.Registry().with_resources(
        (uri, DRAFT202012.create_resource(contents)) for uri, contents in resources
    )
    return registry, crd


REGISTRY, CRD = load_registry()


def validator(uri: str):
    return jsonschema.Draft202012Validator({"$ref": uri}, registry=REGISTRY)


VALIDATORS = {kind: validator(K8S + name) for kind, name in CORE.items()}
VALIDATORS["PyTorchJob"] = validator(CRD["$id"])
POD_TEMPLATE = validator(K8S + "podtemplatespec-v1.json")
OBJECT_META = validator(K8S + "_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def all_objects() -> list[dict]:
    return [doc for path in sorted(MANIFESTS.glob("*.yaml")) for doc in documents(path.name)]


def pytorchjobs() -> list[dict]:
    return [doc for doc in all_objects() if doc["kind"] == "PyTorchJob"]


def schema_errors(obj: dict) -> list[str]:
    found = list(VALIDATORS[obj["kind"]].iter_errors(obj))
    found += OBJECT_META.iter_errors(obj["metadata"])
    if obj["kind"] == "PyTorchJob":
        for spec in obj["spec"].get("pytorchReplicaSpecs", {}).values():
            found += POD_TEMPLATE.iter_errors(spec["template"])
    return [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in found]


def webhook_problems(job: dict) -> list[str]:
    """pkg/webhooks/pytorch/pytorchjob_webhook.go's validatePyTorchJob, for the fields used here."""
    problems = []
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", job["metadata"]["name"]):
        problems.append("metadata.name is not a DNS-1035 label")
    for role, spec in job["spec"]["pytorchReplicaSpecs"].items():
        containers = spec["template"]["spec"]["containers"]
        if role not in ("Master", "Worker"):
            problems.append(f"replica type {role}")
        if not all(container.get("image") for container in containers):
            problems.append(f"{role}: a container without an image")
        if "pytorch" not in [container["name"] for container in containers]:
            problems.append(f"{role}: no container named pytorch")
        if role == "Master" and spec.get("replicas") != 1:
            problems.append("Master replicas must be 1")
    return problems


def pod_count(job: dict) -> int:
    """The job's pods, one per node: the Master and every Worker replica."""
    return sum(spec.get("replicas", 1) for spec in job["spec"]["pytorchReplicaSpecs"].values())


def operator_env(job: dict, role: str, index: int) -> dict[str, str]:
    """What the operator adds to pod `role`-`index` (pkg/controller.v1/pytorch/envvar.go and master.go, v1.9)."""
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = pod_count(job)
    port = next(
        port["containerPort"]
        for container in replicas["Master"]["template"]["spec"]["containers"]
        if container["name"] == "pytorch"
        for port in container.get("ports", [])
        if port.get("name") == "pytorchjob-port"
    )
    rank = index + (1 if role == "Worker" else 0)
    address = f"{job['metadata']['name']}-master-0"
    env = {"MASTER_ADDR": address, "MASTER_PORT": str(port), "RANK": str(rank)}
    env["WORLD_SIZE"] = str(nodes * int(job["spec"].get("nprocPerNode", "1")))
    pet = {"PET_MASTER_ADDR": address, "PET_MASTER_PORT": str(port), "PET_NODE_RANK": str(rank)}
    pet |= {"PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": job["spec"].get("nprocPerNode", "auto")}
    return env | pet


def expand(arg: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args; an undefined $(VAR) stays as written."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), arg)


def pytorch_container(pod: dict) -> dict:
    return next(container for container in pod["spec"]["containers"] if container["name"] == "pytorch")


def job_config() -> tuple[JobConfig, str]:
    configmap = next(doc for doc in all_objects() if doc["kind"] == "ConfigMap")
    assert configmap["metadata"]["name"] == JOB_CONFIGMAP
    (key, text), *_ = configmap["data"].items()
    return JobConfig.model_validate(yaml.safe_load(text)), key


def policy_problems(job: dict, monkeypatch) -> list[str]:
    problems = []
    replicas = job["spec"]["pytorchReplicaSpecs"]
    nodes = pod_count(job)
    config, config_key = job_config()
    if job["spec"].get("nprocPerNode") != "2":
        problems.append("spec.nprocPerNode must be '2' (the operator's WORLD_SIZE and PET_NPROC_PER_NODE)")
    if len({json.dumps(spec["template"], sort_keys=True) for spec in replicas.values()}) != 1:
        problems.append("Master and Worker must run the same pod")
    for role, spec in replicas.items():
        pod, where = spec["template"], role
        container = pytorch_container(pod)
        if spec.get("restartPolicy") != "ExitCode":
            problems.append(f"{where}: restartPolicy must be ExitCode (1-4 fail the job, a preemption retries)")
        if pod["spec"].get("terminationGracePeriodSeconds", 30) < GRACE_SECONDS:
            problems.append(f"{where}: terminationGracePeriodSeconds under {GRACE_SECONDS}")
        resources = container.get("resources", {})
        for part in ("limits", "requests"):
            if str(resources.get(part, {}).get("nvidia.com/gpu", "2" if part == "requests" else None)) != "2":
                problems.append(f"{where}: {part} nvidia.com/gpu must be 2")
        env = {item["name"]: item.get("value", "") for item in container.get("env", [])}
        code = preempted_exit_code(env)
        if not retryable(code):
            problems.append(f"{where}: a preempted pod exits {code}, which restartPolicy ExitCode does not retry")
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes", [])}
        mounts = {mount["mountPath"]: volumes.get(mount["name"], {}) for mount in container.get("volumeMounts", [])}
        shm = mounts.get(SHM, {}).get("emptyDir", {})
        if shm.get("medium") != "Memory" or not shm.get("sizeLimit"):
            problems.append(f"{where}: {SHM} must be an emptyDir in Memory with a sizeLimit (NCCL, loaders)")
        runs = [
            path
            for path, volume in mounts.items()
            if volume.get("persistentVolumeClaim", {}).get("claimName") == RUNS_CLAIM
        ]
        if not any(PurePosixPath(path) in PurePosixPath(config.train.run_dir).parents for path in runs):
            problems.append(f"{where}: train.run_dir {config.train.run_dir} is not on the {RUNS_CLAIM} claim")
        if container.get("command") != LAUNCHER:
            problems.append(f"{where}: the container must run {LAUNCHER} as PID 1 (it forwards SIGTERM)")
            continue
        for index in range(spec.get("replicas", 1)):
            operator = operator_env(job, role, index)
            args = [expand(arg, env | operator) for arg in container.get("args", [])]
            if any("$(" in arg for arg in args):
                problems.append(f"{where}: an argument names a variable nobody sets: {args}")
                continue
            for name, value in operator.items():
                if name.startswith("PET_"):  # torchrun's defaults from the environment: the arguments must win
                    monkeypatch.setenv(name, value)
            parsed = torchrun.parse_args(args)
            if str(parsed.nproc_per_node) != "2":
                problems.append(f"{where}: --nproc-per-node must be 2")
            if int(str(parsed.nnodes)) != nodes:
                problems.append(f"{where}: --nnodes={parsed.nnodes}, but the job has {nodes} pods")
            if not parsed.standalone and (
                int(parsed.node_rank) != int(operator["RANK"])
                or parsed.master_addr != operator["MASTER_ADDR"]
                or str(parsed.master_port) != operator["MASTER_PORT"]
            ):
                problems.append(f"{where}-{index}: the rendezvous is not the operator's MASTER_ADDR/PORT and RANK")
            if parsed.standalone and nodes != 1:
                problems.append(f"{where}: --standalone with {nodes} pods")
            if not (parsed.module and parsed.training_script == "alexserve.worker"):
                problems.append(f"{where}: the launcher must run -m alexserve.worker")
            worker_args = parsed.training_script_args
            if "--resume" not in worker_args:
                problems.append(f"{where}: without --resume a restarted pod starts over")
            config_path = next((a.split("=", 1)[1] for a in worker_args if a.startswith("--config=")), None)
            mounted = mounts.get(str(PurePosixPath(config_path or "/").parent), {})
            if config_path is None or mounted.get("configMap", {}).get("name") != JOB_CONFIGMAP:
                problems.append(f"{where}: --config must be in the {JOB_CONFIGMAP} ConfigMap's mount")
            elif PurePosixPath(config_path).name != config_key:
                problems.append(f"{where}: --config={config_path}, but the ConfigMap's key is {config_key}")
    return problems


def test_there_is_a_one_node_and_an_n_node_job_and_their_volumes():
    jobs = {job["metadata"]["name"]: job for job in pytorchjobs()}
    counts = sorted(pod_count(job) for job in jobs.values())
    assert counts == [1, 2], counts
    kinds = sorted(doc["kind"] for doc in all_objects())
    assert kinds == ["ConfigMap", "PersistentVolumeClaim", "PersistentVolumeClaim", "PyTorchJob", "PyTorchJob"]
    runs = next(doc for doc in all_objects() if doc["metadata"]["name"] == RUNS_CLAIM)
    assert runs["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes its shards into one run folder


@pytest.mark.parametrize("obj", all_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_every_object_validates_against_the_schemas(obj):
    assert schema_errors(obj) == []
    if obj["kind"] == "PyTorchJob":
        assert webhook_problems(obj) == []


@pytest.mark.parametrize("job", pytorchjobs(), ids=lambda o: o["metadata"]["name"])
def test_every_job_follows_the_policy(job, monkeypatch):
    assert policy_problems(job, monkeypatch) == []


def test_the_codes_the_launcher_passes_through_unchanged_fail_the_job():
    permanent = [WorkerExit.FAILED, WorkerExit.BAD_INPUT, WorkerExit.PEER_LOST, WorkerExit.DIVERGED]
    assert not any(retryable(int(code)) for code in permanent)


def test_the_job_config_is_a_valid_alexserve_config():
    config, _ = job_config()
    assert config.dist.backend == "nccl" and config.dist.device == "cuda"


def mutated(change) -> dict:
    job = copy.deepcopy(next(job for job in pytorchjobs() if "Worker" in job["spec"]["pytorchReplicaSpecs"]))
    change(job)
    return job


def master_pod(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]


SCHEMA_BREAKS = {
    "misspelt spec field": lambda j: j["spec"].update(pytorchReplicaSpec=j["spec"].pop("pytorchReplicaSpecs")),
    "misspelt replica field": lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(restartpolicy="ExitCode"),
    "misspelt pod field": lambda j: master_pod(j)["spec"].update(terminationGracePeriodSecond=180),
    "misspelt container field": lambda j: pytorch_container(master_pod(j)).update(
        volumeMount=pytorch_container(master_pod(j)).pop("volumeMounts")
    ),
    "template metadata the CRD drops": lambda j: master_pod(j)["metadata"].update(generateName="x-"),
    "replicas as text": lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas="1"),
    "nprocPerNode as a number": lambda j: j["spec"].update(nprocPerNode=2),
    "emptyDir medium misspelt": lambda j: master_pod(j)["spec"]["volumes"][0]["emptyDir"].update(mediun="Memory"),
}


@pytest.mark.parametrize("change", SCHEMA_BREAKS.values(), ids=SCHEMA_BREAKS.keys())
def test_a_broken_manifest_fails_the_schemas(change):
    assert schema_errors(mutated(change)) != []


def pod_change(change):
    def both(job):  # Master and Worker alike, so that only the broken policy differs
        for spec in job["spec"]["pytorchReplicaSpecs"].values():
            change(spec["template"])

    return both


POLICY_BREAKS = {
    "OnFailure": lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(restartPolicy="OnFailure"),
    "one GPU": pod_change(lambda p: pytorch_container(p)["resources"]["limits"].update({"nvidia.com/gpu": 1})),
    "short grace": pod_change(lambda p: p["spec"].update(terminationGracePeriodSeconds=30)),
    "75 kept": pod_change(lambda p: pytorch_container(p)["env"].pop(0)),
    "shm on disk": pod_change(lambda p: p["spec"]["volumes"][0]["emptyDir"].pop("medium")),
    "no resume": pod_change(lambda p: pytorch_container(p)["args"].remove("--resume")),
    "wrong nnodes": pod_change(lambda p: pytorch_container(p)["args"].__setitem__(0, "--nnodes=3")),
    "unset variable": pod_change(lambda p: pytorch_container(p)["args"].__setitem__(2, "--node-rank=$(NODE_RANK)")),
    "torchrun as PID 1": pod_change(lambda p: pytorch_container(p).update(command=["torchrun"])),
    "runs elsewhere": pod_change(lambda p: p["spec"]["volumes"][1]["persistentVolumeClaim"].update(claimName="x")),
    "one pod different": lambda j: master_pod(j)["spec"].update(terminationGracePeriodSeconds=600),
}


@pytest.mark.parametrize("change", POLICY_BREAKS.values(), ids=POLICY_BREAKS.keys())
def test_a_broken_policy_is_caught(change, monkeypatch):
    assert policy_problems(mutated(change), monkeypatch) != []


def test_a_broken_webhook_rule_is_caught():
    renamed = mutated(lambda j: pytorch_container(master_pod(j)).update(name="trainer"))
    assert webhook_problems(renamed) == ["Master: no container named pytorch"]
    two_masters = mutated(lambda j: j["spec"]["pytorchReplicaSpecs"]["Master"].update(replicas=2))
    assert webhook_problems(two_masters) == ["Master replicas must be 1"]
