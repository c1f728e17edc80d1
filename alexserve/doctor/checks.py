"""The doctor's checks, each a function that returns table rows; `run_checks` runs those this host can.

On a GPU host: the GPUs seen; NCCL send/recv between GPU 0 and GPU 1 (skipped with one GPU); DALI's
`mixed` (nvJPEG) decode of generated JPEGs, with the paper's crop, flip and lighting, against the PIL
loader's pixels; one two-tower step against the grouped model (max relative difference); a 20-step
throughput figure (the two-tower pair on two GPUs, the grouped model on one).

On CPU: the same on CPU: gloo send/recv between two processes, DALI's CPU decode and augmentation,
the two-tower step on gloo against the grouped model in float64, and the pair's throughput.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alexserve.doctor.pair_rank import PARITY_SEED, parity_batch, parity_model_config, throughput_setup
from alexserve.doctor.report import CheckResult

# Relative to the largest magnitude of each compared tensor. In float64 the two forms differ only by summation
# order (~1e-13); float32 rounding on a GPU (TF32 off) stays near 1e-6. A real mistake (a missing half, the towers
# swapped, a doubled gradient) is O(1).
PARITY_TOLERANCE = {"float64": 1e-9, "float32": 1e-3}
# DALI on CPU and PIL both decode with libjpeg-turbo and do the same float32 arithmetic. nvJPEG (DALI's `mixed`)
# rounds the IDCT and chroma upsampling its own way: a grey level or so on average; a wrong crop, flip or lighting
# moves the mean by tens of levels.
DALI_CPU_MAX_DIFFERENCE = 1e-3
DALI_GPU_MEAN_DIFFERENCE = 2.0


def gpus_seen(want: str) -> list[CheckResult]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU build"
        if want == "cuda":
            return [CheckResult("GPUs seen", "fail", f"no CUDA GPU visible ({why}); check the driver and the image")]
        return [CheckResult("GPUs seen", "skip", f"no CUDA GPU visible ({why}): the CPU checks only")]
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    shown = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
    return [
        CheckResult("GPUs seen", "pass", f"{count} ({shown}); torch {torch.__version__}, CUDA {torch.version.cuda}")
    ]


# ----------------------------------------------------------------------------- the two tower processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_pair(device: str, steps: int, out: Path, timeout: float) -> tuple[list[dict], str]:
    """Both ranks' reports (pair_rank.py), and the tail of their stderr when one failed."""
    port = _free_port()
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=threads,
        )
        command = [sys.executable, "-m", "alexserve.doctor.pair_rank", "--out", str(out), "--device", device]
        command += ["--steps", str(steps), "--timeout", str(max(10.0, timeout / 2))]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    deadline, errors = time.monotonic() + timeout, []
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            _, err = proc.communicate()
            errors.append(f"rank {rank} still running after {timeout:.0f} s: killed")
        if proc.returncode:
            tail = [line for line in (err or "").strip().splitlines() if line.strip()][-1:]
            errors.append(f"rank {rank} exited {proc.returncode}" + (f": {tail[0]}" if tail else ""))
    reports = []
    for rank in range(2):
        path = out / f"rank{rank}.json"
        reports.append(json.loads(path.read_text()) if path.is_file() else {})
    return reports, "; ".join(errors)


def max_relative_difference(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e|: one number per tensor, at the scale of the tensor."""
    scale = float(expected.abs().max().clamp_min(1e-30))
    return float((actual.double() - expected.double()).abs().max()) / scale


def grouped_reference() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The grouped model's logits, loss and gradients on the parity batch, in float64 on CPU."""
    from alexserve.model import AlexNetGrouped

    model = AlexNetGrouped.from_seed(parity_model_config(), PARITY_SEED).double()
    images, labels = parity_batch()
    logits = model(images, None)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return model, logits.detach(), loss.detach()


def compare_with_grouped(out: Path) -> tuple[float, str]:
    """(largest relative difference over logits, loss and every gradient, the tensor it is in)."""
    from alexserve.model import join_tower_states

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    model, logits, loss = grouped_reference()
    differences = {}
    for rank, result in enumerate(ranks):
        differences[f"rank {rank} logits"] = max_relative_difference(result["logits"], logits)
        differences[f"rank {rank} loss"] = max_relative_difference(result["loss"], loss)
    grads = join_tower_states(model.cfg, [r["grads"] for r in ranks])
    for name, param in model.named_parameters():
        differences[f"gradient of {name}"] = max_relative_difference(grads[name], param.grad)
    worst = max(differences, key=differences.get)
    return differences[worst], worst


def pair_checks(device: str, num_gpus: int, steps: int, timeout: float) -> list[CheckResult]:
    """send/recv, the two-tower step against the grouped model, and the pair's throughput: one pair of processes."""
    backend = "nccl" if device == "cuda" else "gloo"
    where = "cuda:0 <-> cuda:1" if device == "cuda" else "CPU, 2 processes"
    rows = []
    if device == "cpu" and num_gpus == 1:
        rows.append(CheckResult("send/recv (nccl)", "skip", "needs 2 GPUs (1 seen); the pair below runs on gloo/CPU"))
    with tempfile.TemporaryDirectory(prefix="alexserve-doctor-") as tmp:
        out = Path(tmp)
        began = time.monotonic()
        reports, errors = run_pair(device, steps, out, timeout)
        error_of = {r["error"]["part"]: r["error"]["message"] for r in reports if "error" in r}

        def failed(part: str) -> str | None:
            if part in error_of:
                return error_of[part]
            if any(part not in r for r in reports):
                return errors or "not run: an earlier part failed"
            return None

        name = f"send/recv ({backend}, {where})"
        why = failed("send_recv")
        if why:
            rows.append(CheckResult(name, "fail", why))
        else:
            e = reports[0]["send_recv"]
            rows.append(
                CheckResult(name, "pass", f"{e['bytes'] / 1e6:.0f} MB each way, {e['gigabytes_per_second']:.2f} GB/s")
            )
        name = f"two-tower step vs grouped ({backend})"
        why = failed("two_tower_step")
        if why:
            rows.append(CheckResult(name, "fail", why))
        else:
            dtype = reports[0]["two_tower_step"]["dtype"]
            difference, where_worst = compare_with_grouped(out)
            tolerance = PARITY_TOLERANCE[dtype]
            status = "pass" if difference <= tolerance else "fail"
            detail = (
                f"max relative difference {difference:.1e} ({where_worst}; tolerance {tolerance:.0e}, {dtype}, "
                "logits, loss and every gradient)"
            )
            rows.append(CheckResult(name, status, detail))
        name = f"throughput (two-tower pair, {backend})"
        why = failed("throughput")
        if why:
            rows.append(CheckResult(name, "fail", why))
        else:
            t = reports[0]["throughput"]
            rows.append(
                CheckResult(
                    name,
                    "pass",
                    f"{t['images_per_second']:.0f} images/s (width {t['width']}, input {t['input_size']}, batch "
                    f"{t['batch_size']}, {t['steps']} steps, fp32; whole check {time.monotonic() - began:.0f} s)",
                )
            )
    return rows


def grouped_throughput(device: torch.device, steps: int) -> list[CheckResult]:
    """The one-GPU mode: the grouped model's step, nothing read back, under training's math (doctor/timing.py)."""
    from alexserve.doctor.timing import time_training_steps
    from alexserve.model import AlexNetGrouped
    from alexserve.train.optimizer import PaperSGD
    from alexserve.train.step import grouped_step_tensors

    cfg, batch = throughput_setup(device)
    model = AlexNetGrouped.from_seed(cfg, 0).to(device)
    optimizer = PaperSGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    images = (torch.randn(batch, 3, cfg.input_size, cfg.input_size, generator=g) * 60.0).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    seconds = time_training_steps(lambda: grouped_step_tensors(model, optimizer, images, labels, None), steps, device)
    rate = steps * batch / seconds
    detail = f"{rate:.0f} images/s (width {cfg.width}, input {cfg.input_size}, batch {batch}, {steps} steps, fp32)"
    return [CheckResult(f"throughput (grouped model, {device})", "pass", detail)]


# ----------------------------------------------------------------------------- DALI


def write_tiny_prepared_tree(root: Path, scale: int = 96, per_class: int = 4) -> Path:
    """Two classes of smooth generated JPEGs, laid out as `alexserve prepare` would, with their stats."""
    from PIL import Image

    from alexserve.data.prepared_tree import CLASSES_FILE, STATS_FILE, ClassInfo, write_class_index
    from alexserve.data.stats import PIXEL_SCALE, DatasetStats

    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:scale, 0:scale] / scale
    images = []
    for label in range(2):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi, 3)
            channels = [np.sin(2 * np.pi * (1 + label) * (xs + ys * c / 3) + phase[c]) for c in range(3)]
            pixels = (127.5 + 100 * np.stack(channels, axis=-1)).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.JPEG", "JPEG", quality=95)
            images.append(pixels.astype(np.float64))
    stack = np.stack(images)
    pixels = stack.reshape(-1, 3) / PIXEL_SCALE
    covariance = np.cov(pixels, rowvar=False)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    DatasetStats(
        mean_image=stack.mean(axis=0).astype(np.float32),
        rgb_covariance=covariance,
        rgb_eigenvalues=eigenvalues[::-1].copy(),
        rgb_eigenvectors=eigenvectors[:, ::-1].copy(),
        num_images=len(images),
        scale_size=scale,
    ).save(root / STATS_FILE)
    write_class_index(root / CLASSES_FILE, [ClassInfo(i, f"class{i}", f"class {i}") for i in range(2)])
    return root / "train"


def dali_decode(device: torch.device) -> list[CheckResult]:
    """The DALI training loader on `device` against the PIL loader on CPU: same plan, so the same pixels."""
    from alexserve.config import DataConfig, JobConfig, ModelConfig, TrainConfig
    from alexserve.data.dali_loader import DALI_IMPORT_ERROR
    from alexserve.data.factory import build_train_source

    gpu = device.type == "cuda"
    name = "DALI decode + augment (" + ("mixed, nvJPEG" if gpu else "CPU") + ")"
    if DALI_IMPORT_ERROR is not None:
        if gpu:
            return [
                CheckResult(
                    name, "fail", f"DALI does not import ({DALI_IMPORT_ERROR}): pip install nvidia-dali-cuda120"
                )
            ]
        return [CheckResult(name, "skip", f"DALI does not import ({DALI_IMPORT_ERROR}); on CPU the PIL loader is used")]
    with tempfile.TemporaryDirectory(prefix="alexserve-doctor-") as tmp:
        train_dir = write_tiny_prepared_tree(Path(tmp))

        def job(loader: str) -> JobConfig:
            return JobConfig(
                model=ModelConfig(num_classes=2, input_size=64),
                data=DataConfig(source="folder", train_dir=train_dir, loader=loader, num_workers=1),
                train=TrainConfig(batch_size=4, seed=0),
            )

        dali = build_train_source(job("dali"), device=device)
        pil = build_train_source(job("pil"), device=torch.device("cpu"))
        try:
            got = [(x.cpu(), y.cpu()) for x, y in dali.batches(0)]
            want = list(pil.batches(0))
        finally:
            dali.close()
            pil.close()
    if [y.tolist() for _, y in got] != [y.tolist() for _, y in want]:
        return [CheckResult(name, "fail", "labels differ from the PIL loader's: batches out of the plan's order")]
    differences = torch.cat([(xd - xp).abs().flatten() for (xd, _), (xp, _) in zip(got, want)])
    largest, mean = float(differences.max()), float(differences.mean())
    detail = (
        f"{sum(len(y) for _, y in got)} generated JPEGs, crop/flip/lighting; |DALI - PIL| max {largest:.2g}, "
        f"mean {mean:.2g} grey levels"
    )
    ok = mean <= DALI_GPU_MEAN_DIFFERENCE if gpu else largest <= DALI_CPU_MAX_DIFFERENCE
    return [CheckResult(name, "pass" if ok else "fail", detail)]


# ----------------------------------------------------------------------------- all together


def host_line() -> str:
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return (
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, {gpus} CUDA GPU(s)"
    )


def _guarded(name: str, check, *args) -> list[CheckResult]:
    """A check that raises is a failed row, not a crashed doctor."""
    try:
        return check(*args)
    except Exception as err:  # noqa: BLE001 - every failure is a row of the table
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        return [CheckResult(name, "fail", f"{type(err).__name__}: {message}")]


def run_checks(device: str = "auto", steps: int = 20, timeout: float = 300.0) -> list[CheckResult]:
    """Every check this host can run. `device`: 'auto' (GPUs where there are), 'cpu' or 'cuda' (GPUs required)."""
    results = _guarded("GPUs seen", gpus_seen, device)
    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() and device != "cpu" else 0
    if device == "cuda" and num_gpus == 0:
        return results
    pair_device = "cuda" if num_gpus >= 2 else "cpu"
    results += _guarded("two-tower pair", pair_checks, pair_device, num_gpus, steps, timeout)
    if num_gpus == 1:
        results += _guarded("throughput (grouped model)", grouped_throughput, torch.device("cuda", 0), steps)
    loader_device = torch.device("cuda", 0) if num_gpus else torch.device("cpu")
    results += _guarded("DALI decode + augment", dali_decode, loader_device)
    return results
