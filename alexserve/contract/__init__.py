"""What the training side and the service agree on, torch-free: both import it, neither imports the other.

names               exchange points, environment variables, worker exit codes: each list once
worker_messages     reports (worker -> supervisor) and commands (supervisor -> worker)
supervisor_channel  the worker's end of the ZeroMQ link to its supervisor
telemetry           what training reports (`TelemetrySink`) and where its commands come from
                    (`CommandSource`), each a protocol with a do-nothing default and a supervisor-backed one
"""
