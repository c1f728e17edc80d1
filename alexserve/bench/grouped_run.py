"""The single-process reference of `bench.learning`: the grouped model trained exactly like the towers.

`train_grouped` mirrors `TowerTrainer.train_epoch` / `finish_epoch` (train/loop.py) in one process on the CPU, with
nothing checkpointed: what the pair's learning is measured against, side by side.
"""

from __future__ import annotations

import math
import time

import torch

from alexserve.config import JobConfig
from alexserve.train.history import EpochRecord


def train_grouped(job: JobConfig, log) -> list[EpochRecord]:
    """One process, the grouped model, the tower loop's schedule: one EpochRecord per epoch (nothing checkpointed).

    Mirrors TowerTrainer.train_epoch / finish_epoch: the same data source
    (dp_rank 0 of 1, as a single pair), dropout seeds, learning rate per step
    (warmup, then the plateau schedule), evaluation modes and stopping rule.
    """
    from alexserve.data.factory import build_eval_source, build_train_source
    from alexserve.model import AlexNetGrouped
    from alexserve.model.dropout import dropout_seed
    from alexserve.train.divergence import near_chance
    from alexserve.train.evaluation import evaluate
    from alexserve.train.optimizer import PaperSGD
    from alexserve.train.schedule import PlateauSchedule, warmup_steps
    from alexserve.train.step import grouped_train_step

    cfg = job.train
    device = torch.device("cpu")
    model = AlexNetGrouped.from_seed(job.model, cfg.seed).to(dtype=getattr(torch, cfg.dtype))
    optimizer = PaperSGD.from_config(model.parameters(), job.optim)
    schedule = PlateauSchedule(job.optim, job.lr_epoch_budget)
    optimizer.set_lr(schedule.lr)
    train_source = build_train_source(job, device=device)
    eval_source = build_eval_source(job, device=device)
    ramp_steps = warmup_steps(job.warmup_epochs_used, train_source.steps_per_epoch)
    records: list[EpochRecord] = []
    global_step = 0
    try:
        for epoch in range(cfg.num_epochs):
            started = time.perf_counter()
            model.train()
            loss_sum = errors = images_seen = 0
            for images, labels in train_source.batches(epoch, 0):
                optimizer.set_lr(schedule.lr_at_step(global_step, ramp_steps))
                result = grouped_train_step(model, optimizer, images, labels, dropout_seed(cfg.seed, 0, global_step))
                global_step += 1
                if not math.isfinite(result.loss):
                    raise SystemExit(
                        f"single process: the loss is {result.loss} at step {global_step}; the run diverged"
                    )
                loss_sum += result.loss * result.images
                errors += result.top1_errors
                images_seen += result.images
                if cfg.max_steps is not None and global_step >= cfg.max_steps:
                    break
            ten_crop = (epoch + 1) % cfg.ten_crop_every_epochs == 0 or epoch + 1 == cfg.num_epochs
            model.eval()
            logits_of = lambda batch: model(batch, None)  # noqa: E731
            modes = ("center", "ten_crop") if ten_crop else ("center",)
            results = {
                mode: evaluate(logits_of, eval_source, mode, mirrors=job.data.test_time_mirrors) for mode in modes
            }
            lr_used = optimizer.param_groups[0]["lr"]  # the last step's, as the loop records it
            optimizer.set_lr(schedule.step(results["center"].top1_error))
            ten = results.get("ten_crop")
            records.append(
                EpochRecord(
                    epoch=epoch + 1,
                    step=global_step,
                    train_loss=loss_sum / max(images_seen, 1),
                    train_top1_error=errors / max(images_seen, 1),
                    val_top1_error=results["center"].top1_error,
                    val_top5_error=results["center"].top5_error,
                    val_top1_error_10crop=ten.top1_error if ten else None,
                    val_top5_error_10crop=ten.top5_error if ten else None,
                    lr=lr_used,
                    epoch_seconds=time.perf_counter() - started,
                    near_chance=near_chance(results["center"].top1_error, job.model.classes),
                )
            )
            log(f"epoch {epoch + 1} done: val centre top-1 err {results['center'].top1_error:.3f}, lr {lr_used:g}")
            if schedule.should_stop or (cfg.max_steps is not None and global_step >= cfg.max_steps):
                break
    finally:
        train_source.close()
        eval_source.close()
    return records
