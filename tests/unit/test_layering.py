"""Dependencies flow one way: cli -> supervisor -> (launches) worker -> train -> {model, parallel, data, checkpoint}.

The training side never imports the service, the service never imports torch,
and `contract/` (what both sides agree on) imports neither. Checked on the
source (every import statement, including those inside functions) and, for
torch, on what a fresh interpreter really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "alexserve"

TRAINING_SIDE = ["train", "model", "parallel", "data", "checkpoint", "contract", "worker.py"]
SERVICE_AND_COMMANDS = ("alexserve.supervisor", "alexserve.cli")
TORCH_FREE_MODULES = [
    "alexserve.contract.names",
    "alexserve.contract.worker_messages",
    "alexserve.contract.supervisor_channel",
    "alexserve.contract.telemetry",
    "alexserve.checkpoint.naming",
    "alexserve.durable",
    "alexserve.cli",
]


def python_files(part: str) -> list[Path]:
    path = PACKAGE / part
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, wherever it sits (top level or inside a function)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def imports_of(parts: list[str], banned: tuple[str, ...]) -> list[str]:
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for part in parts
        for path in python_files(part)
        for line, module in imported_modules(path)
        if module.startswith(banned)
    ]


def test_the_training_side_never_imports_the_service_or_the_commands():
    assert imports_of(TRAINING_SIDE, SERVICE_AND_COMMANDS) == []


def test_the_contract_and_the_checkpoint_naming_rule_never_import_torch_or_either_side():
    banned = ("torch", "alexserve.train", "alexserve.supervisor", "alexserve.model", "alexserve.parallel")
    assert imports_of(["contract", "checkpoint/naming.py"], banned) == []


def test_the_supervisor_never_imports_torch_in_its_source():
    assert imports_of(["supervisor"], ("torch", "alexserve.train", "alexserve.model", "alexserve.parallel")) == []


@pytest.mark.parametrize(
    "modules",
    [
        [
            f"alexserve.supervisor.{p.stem}"
            for p in sorted((PACKAGE / "supervisor").glob("*.py"))
            if p.stem != "__main__"
        ],
        ["alexserve.cli.supervisor", "alexserve.cli.job"],
        TORCH_FREE_MODULES,
    ],
    ids=["supervisor", "service-commands", "contract"],
)
def test_a_fresh_interpreter_loads_no_torch_for(modules):
    script = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules)
    script += "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
    script += "assert not loaded, f'torch was loaded: {loaded[:5]}'\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
