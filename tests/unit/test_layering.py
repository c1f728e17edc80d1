"""Dependencies flow one way: cli -> supervisor -> (launches) worker -> train -> {model, parallel, data, checkpoint}.

The training side never imports the service, the service never imports torch
nor the shell (cli), the layers below training never reach up into it (what a
checkpoint saves of the schedule is handed down), and `contract/` (what both
sides agree on) imports neither side. Checked on the
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
    """(line, module) for every import in the file, wherever it sits (top level or inside a function); relative
    imports are made absolute, so `from ..train import schedule` counts as alexserve.train.schedule."""
    package = list(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                found += [(node.lineno, ".".join([*base, alias.name])) for alias in node.names]
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


@pytest.mark.parametrize("layer", ["checkpoint", "model", "parallel", "data"])
def test_the_layers_below_training_never_reach_up_into_it(layer):
    """checkpoint -> train was the arrow that crept in: the schedule's state now comes down as a protocol."""
    assert imports_of([layer], ("alexserve.train", "alexserve.worker")) == []


def test_the_service_never_imports_the_shell():
    """`python -m alexserve.supervisor` runs the service's own command line, not cli's."""
    assert imports_of(["supervisor"], ("alexserve.cli",)) == []


def test_the_import_scan_sees_relative_and_nested_imports(tmp_path, monkeypatch):
    """The checks above can fail: an import written any of these ways is found."""
    fake = tmp_path / "alexserve"
    (fake / "checkpoint").mkdir(parents=True)
    (fake / "checkpoint" / "sneaky.py").write_text(
        "from ..train import schedule\nfrom ..train.schedule import PlateauSchedule\n"
        "def later():\n    import alexserve.train.loop\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert [line.split(" imports ")[1] for line in imports_of(["checkpoint"], ("alexserve.train",))] == [
        "alexserve.train",
        "alexserve.train.schedule",
        "alexserve.train.loop",
    ]


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


MAX_MODULE_LINES = 400  # small modules with one job each (STYLE.md); a module past it is a second job to split off


def test_no_module_of_the_package_is_over_400_lines():
    lengths = {path: len(path.read_text().splitlines()) for path in sorted(PACKAGE.rglob("*.py"))}
    assert len(lengths) > 50  # the scan saw the package, not an empty folder
    too_long = {str(path.relative_to(PACKAGE.parent)): n for path, n in lengths.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"over {MAX_MODULE_LINES} lines: {too_long}"
