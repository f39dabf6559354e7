"""Imports flow one way: the worker uses the core and domain layers (settings, database, jobs,
registry) and the ML library, never the HTTP or serving layers; the library uses neither service nor
worker. Checked in a fresh interpreter, so nothing another test imported can hide a violation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What a worker must not load: the web stack, and the service's HTTP and serving layers (it
# uses service.core and service.domain only).
FORBIDDEN_FOR_WORKER = ("fastapi", "starlette", "uvicorn", "service.api", "service.serving")


def loaded_after_importing(package: str) -> list[str]:
    code = f"""
import importlib, json, pkgutil, sys
import {package} as root
for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def offending(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]


@pytest.mark.parametrize("package", ["worker"])
def test_the_worker_never_imports_the_http_or_serving_layers(package: str):
    modules = loaded_after_importing(package)
    assert "worker.runner" in modules  # the walk did import the worker
    assert offending(modules, FORBIDDEN_FOR_WORKER) == []


def test_the_library_never_imports_the_service_or_the_worker():
    modules = loaded_after_importing("e2urec")
    assert "e2urec.unlearn.e2urec" in modules
    assert offending(modules, ("service", "worker", "fastapi", "celery", "sqlalchemy")) == []


def test_the_check_itself_catches_a_forbidden_import():
    assert offending(
        ["fastapi.routing", "service.serving.engine", "service.domain.jobs"], FORBIDDEN_FOR_WORKER
    ) == [
        "fastapi.routing",
        "service.serving.engine",
    ]


def imported_names(source: str) -> set[str]:
    """Every module a piece of source imports, at any depth (function-local imports included)."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_benches_and_the_product_never_import_the_tests():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = [p for d in ("bench", "e2urec", "service", "worker") for p in (root / d).rglob("*.py")]
    assert any(p.parent.name == "bench" for p in files)
    leaks = {
        str(p.relative_to(root)): sorted(
            offending(sorted(imported_names(p.read_text())), ("tests",))
        )
        for p in files
    }
    assert {f: m for f, m in leaks.items() if m} == {}
    # and the scan would see one, function-local or not
    assert offending(sorted(imported_names("def f():\n    from tests.x import y\n")), ("tests",))
