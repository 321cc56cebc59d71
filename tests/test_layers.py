"""Imports run one way, bottom to top: models <- aidc.core (config, topology, metrics, store,
the site model) <- collectors, alerts <- the runtime <- the web (HTTP API, dashboards) and the
CLI. Read from the source, every import of every module, those inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("aidc", "models", "collectors", "alerts", "dashboards", "simulators")
# a layer -> what it may import of ours (and its own layer); above the runtime, the web
# (aidc.api, aidc.http, aidc.web, dashboards) and the CLI may import any of them
MAY_IMPORT = {
    "models": (),
    "aidc.core": ("models",),
    "collectors": ("aidc.core",),
    "alerts": ("aidc.core", "models"),
    "aidc.runtime": ("aidc.core", "models", "collectors", "alerts"),
}
SIMULATOR_MAY_NOT = ("collectors.modbus", "collectors.snmp", "collectors.opcua", "collectors")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module of ours that ``path`` imports, by its full name."""
    tree, here = ast.parse(path.read_text()), module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in OURS}


def within(module: str, allowed: tuple[str, ...]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed)


def layer_of(module: str) -> str | None:
    return next((layer for layer in MAY_IMPORT if within(module, (layer,))), None)


SOURCES = sorted(p for d in OURS for p in (ROOT / d).rglob("*.py"))


@pytest.mark.parametrize("path", [p for p in SOURCES if layer_of(module_name(p)) in MAY_IMPORT],
                         ids=lambda p: module_name(p))
def test_a_module_imports_only_the_layers_below_it(path):
    layer = layer_of(module_name(path))
    allowed = (layer, *MAY_IMPORT[layer])
    wrong = sorted(m for m in imports(path) if not within(m, allowed)
                   and m not in ("aidc", "aidc.core"))  # the packages themselves
    assert not wrong, f"{module_name(path)} ({layer}) imports {wrong}"


def test_the_simulators_share_no_encoding_code_with_the_collectors():
    for path in (ROOT / "simulators").rglob("*.py"):
        shared = sorted(m for m in imports(path) if m in SIMULATOR_MAY_NOT
                        or within(m, SIMULATOR_MAY_NOT[:3]))
        assert not shared, f"{module_name(path)} imports {shared}"


def test_the_check_reads_imports_inside_functions_and_relative_ones():
    # what the checks above rely on, on the modules they are about
    assert "aidc.core.config" in imports(ROOT / "aidc" / "runtime.py")
    assert "simulators.site" in imports(ROOT / "aidc" / "cli.py")  # imported where it runs
    assert layer_of("aidc.core.store.influx") == "aidc.core"
    assert layer_of("aidc.api") is None and layer_of("dashboards.app") is None
