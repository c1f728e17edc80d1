"""Job control and metrics: the service users talk to.

    server        `alexserve supervisor`: control socket, worker groups, state machine, /metrics
    client        `alexserve job submit|list|status|pause|resume|stop|cancel|checkpoint-now|logs`
    spec          the job spec (a JobConfig plus restart budget and run dir)
    jobs          job records, states, atomic persistence
    protocol      control requests and replies (client <-> supervisor)
    messages      worker reports and commands (worker <-> supervisor)
    worker_link   the worker's end: `SupervisorChannel.from_env(rank)`
    metrics       the Prometheus registry
    http_endpoint /metrics and /healthz
    process       torchrun launch, process-tree kill, leftover cleanup
    launcher      runs torchrun so it dies with the supervisor
    auth          token and loopback rules
"""
