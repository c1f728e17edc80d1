"""Command-line settings of the small worker runs that the integration tests start (`python -m alexserve.worker`)."""

from __future__ import annotations

# 256 images / 32 = 8 steps an epoch; 2 epochs; dropout on (the paper's 0.5), so its seeding is exercised too; a
# checkpoint every 3 steps and at each epoch end.
CHECKPOINTED_JOB = [
    "--set",
    "data.source=generated",
    "--set",
    "model.width=0.125",
    "--set",
    "model.input_size=64",
    "--set",
    "data.scale_size=73",
    "--set",
    "model.init_scheme=he",
    "--set",
    "optim.learning_rate=0.002",
    "--set",
    "data.generated_train_images=256",
    "--set",
    "data.generated_val_images=64",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.num_epochs=2",
    "--set",
    "train.checkpoint_every_steps=3",
    "--set",
    "train.log_every_steps=1",
]
