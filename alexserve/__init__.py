"""alexserve: the AlexNet paper's two-tower training system as a service.

Layout, one concern per package:
  config       validated configuration, the one home of the paper's constants
  model/       the towers, the paper's LRN, the single-process grouped form
  parallel/    process groups and the tower-to-tower exchange (send/recv autograd)
  data/        preparation, synthetic data and the augmenting loaders
  train/       the training step, loop, checkpoints, evaluation
  supervisor/  job control over ZeroMQ and Prometheus /metrics
  bench/       benchmarks that print side-by-side ratios
  worker       the `torchrun -m alexserve.worker` entry point
  cli          the `alexserve` command
"""

__version__ = "0.1.0"
