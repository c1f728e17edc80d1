"""`alexserve doctor`: the self-check a user runs on a new host before the first job.

    alexserve doctor                 # every check this host can run (GPU checks where there are GPUs)
    alexserve doctor --device cpu    # the CPU subset only

`checks.py` runs the checks and prints one table row each (pass, fail or skip, and
what was measured); `pair_rank.py` is what each of the two spawned tower processes
runs (send/recv, the two-tower step, its throughput); `report.py` is the table.
"""
