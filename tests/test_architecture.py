"""ARCHITECTURE.md's import rules, executable: graphql > login/security > factors > accounts >
core; factor packages never import each other; gateway never imports workers; the domain never
imports strawberry or starlette."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
DOMAIN = (
    "gateway.core",
    "gateway.accounts",
    "gateway.factors",
    "gateway.login",
    "gateway.security",
)
LAYERS = ["gateway.core", "gateway.accounts", "gateway.factors", "gateway.login"]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts)


MODULES = {_module(p): _imports(p) for p in SRC.rglob("*.py") if "migrations" not in p.parts}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(DOMAIN)))
def test_domain_imports_no_transport(module: str) -> None:
    bad = {i for i in MODULES[module] if i.split(".")[0] in {"strawberry", "starlette", "workers"}}
    assert not bad, f"{module} imports {bad}"


# The process launchers start gateways and workers alike; nothing else may reach into workers.
LAUNCHERS = {"gateway.cli", "gateway.dev"}


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if m.startswith("gateway") and m not in LAUNCHERS)
)
def test_gateway_never_imports_workers(module: str) -> None:
    assert not {i for i in MODULES[module] if i.split(".")[0] == "workers"}


def test_lower_layers_never_import_higher_ones() -> None:
    for low_index, low in enumerate(LAYERS):
        higher = [*LAYERS[low_index + 1 :], "gateway.security", "gateway.graphql"]
        for module, imports in MODULES.items():
            if not _within(module, low):
                continue
            for imported in imports:
                assert not any(_within(imported, h) for h in higher), f"{module} -> {imported}"


def test_factor_packages_never_import_each_other() -> None:
    factors = {p.name for p in (SRC / "gateway" / "factors").iterdir() if p.is_dir()} - {
        "__pycache__"
    }
    for module, imports in MODULES.items():
        for own in factors:
            if not _within(module, f"gateway.factors.{own}"):
                continue
            for other in factors - {own}:
                assert not any(_within(i, f"gateway.factors.{other}") for i in imports), module
