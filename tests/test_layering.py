"""Layers point one way: the HTTP edge on top, the runtime and the engines below.

Read from the source with ``ast`` (every ``import`` and ``from ... import``, at module level
or inside a function), so a wrong import fails here even on a path no test executes.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"


def imports_of(path: Path) -> set[str]:
    """Every module name ``path`` imports, absolute; relative imports resolved against its package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def files(*where: str) -> list[Path]:
    out: list[Path] = []
    for w in where:
        p = SERVER / w
        out.extend(sorted(p.rglob("*.py")) if p.is_dir() else [p])
    assert out, where
    return out


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in paths:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_the_checker_sees_imports_inside_functions(tmp_path):
    probe = SERVER / "edge" / "_layering_probe.py"
    probe.write_text("def f():\n    from fastapi import FastAPI\n    import server.api.app\n")
    try:
        assert offenders([probe], ("fastapi", "server.api")) == [
            "server/edge/_layering_probe.py imports fastapi",
            "server/edge/_layering_probe.py imports fastapi.FastAPI",
            "server/edge/_layering_probe.py imports server.api.app",
        ]
    finally:
        probe.unlink()


@pytest.mark.parametrize("layer", ["api", "router", "edge"])
def test_http_layers_import_no_torch(layer):
    assert offenders(files(layer), ("torch", "vllm", "triton")) == []


@pytest.mark.parametrize("layer", ["engine", "runtime.py", "edge", "sampling.py", "capacity"])
def test_lower_layers_import_no_web_framework_and_nothing_above(layer):
    assert offenders(files(layer), ("fastapi", "server.api", "server.router")) == []


def test_router_imports_nothing_from_the_node_api_or_the_engines():
    assert offenders(files("router"), ("server.api", "server.engine", "server.runtime")) == []


def test_edge_imports_no_engine_and_no_runtime():
    assert offenders(files("edge"), ("server.engine", "server.runtime")) == []


@pytest.mark.parametrize("module, absent", [
    ("server.router.app", ("torch", "vllm", "server.engine", "server.api", "server.runtime")),
    ("server.api.app", ("torch", "vllm", "server.router")),
    ("server.runtime", ("torch", "vllm", "fastapi", "server.api", "server.router")),
    ("server.edge.render", ("torch", "fastapi", "server.engine", "server.runtime", "server.api", "server.router")),
])
def test_importing_a_layer_loads_nothing_above_or_beside_it(module, absent):
    """The transitive check: import in a fresh interpreter and look at sys.modules."""
    import json
    import subprocess
    import sys

    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m for m in loaded if any(m == a or m.startswith(a + ".") for a in absent)] == []
