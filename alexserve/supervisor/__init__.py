"""Job control and metrics: the service users talk to (its commands: `alexserve supervisor` and `alexserve job`).

    service          the one-thread poll loop: control socket, worker channels, lifecycle tick; /metrics
    verbs            one handler per control verb (submit, list, status, pause, resume, stop, ...)
    lifecycle        worker groups over a job's life: launch, reap, relaunch within the budget, kill
    channels         the worker channels: reports in (PULL), commands to each job's rank 0 (ROUTER)
    states           the job state machine as data, and `transition`, the only state setter
    jobs             job records and their atomic persistence (durable.write_through)
    command_line     `alexserve supervisor` / `python -m alexserve.supervisor`: flags, start, signals
    options          ServerOptions: what `alexserve supervisor`'s flags become
    control_messages control requests and replies (client <-> supervisor), the one list of verbs
    client           `Client`: the REQ end of the control socket
    spec             the job spec (a JobConfig plus restart budget and run dir)
    metrics          the Prometheus registry
    http_endpoint    /metrics and /healthz
    process          torchrun launch, process-tree kill, leftover cleanup (psutil)
    launcher         runs torchrun so it dies with the supervisor
    auth             token and loopback rules

What workers send and receive is in alexserve/contract/ (worker_messages,
supervisor_channel), shared with the training side; the supervisor never
imports torch.
"""
