"""`alexserve supervisor`: a thin shell over the service's own command line (alexserve/supervisor/command_line.py).

The parser and `main` live with the service, so `python -m alexserve.supervisor` runs the same code without the
service importing the shell.
"""

from __future__ import annotations

from alexserve.supervisor.command_line import PROG, build_parser, log_to_stderr, main, options_from_args, parse_args

__all__ = ["PROG", "build_parser", "log_to_stderr", "main", "options_from_args", "parse_args"]
