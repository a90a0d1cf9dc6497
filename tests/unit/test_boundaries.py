"""The house rules, read from the import graph and the source (ast, no imports executed): where
each kind of knowledge lives, so that a new feature is a thin addition in an obvious room."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from schemas import topology

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "services", "pipelines", "ops")


def modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """Modules `path` imports; with `top_level_only`, not those inside functions or TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def strings(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return {node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_layers_import_only_downwards() -> None:
    allowed = {
        "schemas": {"schemas"},
        "pipelines": {"schemas", "pipelines"},
        "services": {"schemas", "pipelines", "services"},
        "ops": {"schemas", "services", "pipelines", "ops"},
    }
    wrong = []
    for layer, may in allowed.items():
        for path in modules(layer):
            for name in imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top not in may:
                    wrong.append(f"{rel(path)} imports {name}")
    assert not wrong, wrong


def test_no_service_imports_another_services_package() -> None:
    shared = {"bus", "files", "jobfiles", "logs", "metrics", "runtime", "styles", "readside", "library"}
    wrong = []
    for path in modules("services"):
        own = path.relative_to(ROOT / "services").parts[0]
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1 and parts[1] not in shared | {own}:
                wrong.append(f"{rel(path)} imports {name}")
    assert not wrong, wrong


def test_routes_and_the_domain_import_no_storage_driver_or_broker_client() -> None:
    wrong = [f"{rel(path)} imports {name}" for path in modules("services/ingress")
             for name in imports(path) if name.split(".")[0] in ("duckdb", "aio_pika", "aiormq")]
    assert not wrong, wrong


def test_no_torch_or_diffusers_at_import_time_outside_pipelines() -> None:
    wrong = [f"{rel(path)} imports {name}" for path in modules("services", "schemas", "ops")
             for name in imports(path, top_level_only=True) if name.split(".")[0] in ("torch", "diffusers")]
    assert not wrong, wrong


def test_only_topology_spells_routing_keys_and_headers() -> None:
    names = {value for key, value in vars(topology).items() if key.isupper() and isinstance(value, str)}
    names = {name for name in names if "." in name or name.startswith("x-")}
    assert {"job.accepted", "x-death", "x-darkroom-reason"} <= names
    wrong = []
    for path in modules(*PACKAGES):
        if path.name == "topology.py" or "bench" in path.parts:
            continue
        wrong += [f"{rel(path)} spells {value!r}" for value in strings(path) & names]
    assert not wrong, wrong


@pytest.mark.parametrize(("needle", "homes"), [
    ("structlog.configure", ["services/logs.py"]),
    # Durable writes: whole files (temp, fsync, rename) and the event log's fsynced appends.
    ("os.fsync", ["services/files.py", "services/recorder/store.py"]),
])
def test_ops_and_services_share_one_copy_of_each_mechanism(needle: str, homes: list[str]) -> None:
    found = [rel(path) for path in modules(*PACKAGES) if needle in path.read_text()]
    assert found == homes, found
