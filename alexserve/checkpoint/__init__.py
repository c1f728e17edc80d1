"""Checkpoints: the on-disk store, the run-level save and restore, the folder naming rule, the export.

    naming            the folder and marker names, torch-free: the supervisor reads them too
    store             `CheckpointStore`: crash-safe multi-rank checkpoints, complete or invisible
    run_checkpointer  `RunCheckpointer`: what a training run saves and restores, across ranks
    rng_state         the global RNG states a shard carries, so a resumed run draws what an unbroken one would
    export            a committed checkpoint as one single-process model file, sealed with its SHA-256

Nothing here may import torch at package level: the supervisor imports `naming`.
"""
