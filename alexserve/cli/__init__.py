"""The `alexserve` command: one subcommand per module of this package, each a thin shell over a library.

Each subcommand module exposes `main(argv: list[str] | None) -> int`; this file
only dispatches, so `alexserve --help` starts fast and a missing optional
dependency of one subcommand (DALI, say) does not break the others.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("alexserve.worker", "run one tower of a training job (normally started by torchrun)"),
    "synth": ("alexserve.cli.synth", "generate a learnable ImageNet-like JPEG dataset"),
    "digits": ("alexserve.cli.digits", "write scikit-learn's handwritten digits as a JPEG class-folder tree"),
    "prepare": ("alexserve.cli.prepare", "rescale/crop an ImageNet-style tree once and compute mean image and PCA"),
    "export": ("alexserve.cli.export", "write a checkpoint as one single-process model file"),
    "eval": ("alexserve.cli.eval", "top-1/top-5 error of a checkpoint on a prepared val tree"),
    "predict": ("alexserve.cli.predict", "top-5 classes of raw images"),
    "supervisor": ("alexserve.cli.supervisor", "run the job-control and /metrics service"),
    "job": ("alexserve.cli.job", "talk to a running supervisor: submit, list, status, ..."),
    "doctor": ("alexserve.cli.doctor", "check this host: GPUs, NCCL/gloo, DALI, two-tower parity, throughput"),
}


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = ["usage: alexserve COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "`alexserve COMMAND --help` describes one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"alexserve: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
