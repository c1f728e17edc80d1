"""What tests share, imported as `helpers.*` (pytest puts tests/ on sys.path; no conftest, no test imports another).

- processes: real processes per rank over gloo, always with a timeout; `run_ranks` runs a test module's rank function
- parity: the small float64 model and batch of the parity tests, and the comparison with the single-process reference
- tensors: `context`, a message for torch.testing.assert_close that says what differs
- checkpoints: two-tower checkpoints whose every value encodes (step, tower)
- datasets: a tiny prepared image tree with every kind of bad file, built once per process
- worker_jobs: the command-line settings of the small worker runs
- supervisor, fake_worker: a real supervisor process for the supervisor tests, and a stand-in worker
"""
