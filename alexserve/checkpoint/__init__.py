"""Checkpoints: the on-disk store, the run-level save and restore, and the folder naming rule.

    naming            the folder and marker names, torch-free: the supervisor reads them too
    store             `CheckpointStore`: crash-safe multi-rank checkpoints, complete or invisible
    run_checkpointer  `RunCheckpointer`: what a training run saves and restores, across ranks

Nothing here may import torch at package level: the supervisor imports `naming`.
"""
