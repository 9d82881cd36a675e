"""Static checks of deploy/: settings named there exist, env.example documents every setting,
every `kanmon ...` command line parses with the real CLI parser, and the YAML is consistent.

Nothing here builds an image or starts a container: these are the checks that can run anywhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.settings import Settings

try:
    import yaml
except ImportError:  # pragma: no cover - PyYAML is not a declared dependency
    yaml = None

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / "env.example"

KANMON_NAME = re.compile(r"(?<![A-Za-z0-9_])KANMON_[A-Z0-9_]*[A-Z0-9]")
SETTING_NAMES = {f"KANMON_{name.upper()}" for name in Settings.model_fields}

needs_yaml = pytest.mark.skipif(yaml is None, reason="PyYAML is not importable")


def _deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def _relative(path: Path) -> str:
    return path.relative_to(DEPLOY.parent).as_posix()


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml"})


def _load_all(path: Path) -> list[Any]:
    assert yaml is not None
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


# --------------------------------------------------------------------------- (1) and (2)


def test_deploy_directory_has_the_expected_files() -> None:
    for path in (DOCKERFILE, COMPOSE, ENV_EXAMPLE, K8S / "kustomization.yaml"):
        assert path.is_file(), f"missing {_relative(path)}"


@pytest.mark.parametrize("path", _deploy_files(), ids=_relative)
def test_every_kanmon_variable_named_in_deploy_is_a_setting(path: Path) -> None:
    text = path.read_text()
    unknown = sorted(set(KANMON_NAME.findall(text)) - SETTING_NAMES)
    assert not unknown, f"{_relative(path)} names variables Settings does not have: {unknown}"


def test_env_example_documents_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    missing = sorted(
        name
        for name in SETTING_NAMES
        if not re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", text)
    )
    assert not missing, f"deploy/env.example does not document: {missing}"


# --------------------------------------------------------------------------- (3) commands


def _is_kanmon(argv: list[str]) -> bool:
    return bool(argv) and (argv[0] == "kanmon" or argv[0].endswith("/kanmon"))


def _dockerfile_instructions(text: str) -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        keyword, _, rest = logical.partition(" ")
        yield keyword.upper(), rest.strip()
        logical = ""


def _exec_form(arguments: str) -> list[str]:
    if arguments.startswith("["):
        value = json.loads(arguments)
        assert isinstance(value, list)
        return [str(part) for part in value]
    return shlex.split(arguments)


def _dockerfile_commands() -> Iterator[tuple[str, list[str]]]:
    entrypoint: list[str] = []
    cmd: list[str] = []
    for keyword, arguments in _dockerfile_instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":  # a new stage: only the last one's matter
            entrypoint, cmd = [], []
        elif keyword == "ENTRYPOINT":
            entrypoint = _exec_form(arguments)
        elif keyword == "CMD":
            cmd = _exec_form(arguments)
    where = "deploy/Dockerfile CMD/ENTRYPOINT"
    yield where, [*entrypoint, *cmd]


def _compose_argv(value: Any) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    if isinstance(value, list):
        return [str(part) for part in value]
    return []


def _compose_commands() -> Iterator[tuple[str, list[str]]]:
    services = _load_all(COMPOSE)[0].get("services", {})
    for name, service in services.items():
        argv = [*_compose_argv(service.get("entrypoint")), *_compose_argv(service.get("command"))]
        yield f"deploy/compose.yaml services.{name}.command", argv
        test = (service.get("healthcheck") or {}).get("test")
        if isinstance(test, list) and test and test[0] in {"CMD", "CMD-SHELL"}:
            probe = test[1:] if test[0] == "CMD" else shlex.split(" ".join(map(str, test[1:])))
            yield f"deploy/compose.yaml services.{name}.healthcheck", [str(p) for p in probe]
        elif isinstance(test, str):
            yield f"deploy/compose.yaml services.{name}.healthcheck", shlex.split(test)


def _k8s_commands(node: Any, where: str) -> Iterator[tuple[str, list[str]]]:
    """Containers' command + args, exec probes and lifecycle hooks: any mapping with a
    `command` list (and its sibling `args`)."""
    if isinstance(node, dict):
        command = node.get("command")
        if isinstance(command, list):
            args = node.get("args") if isinstance(node.get("args"), list) else []
            yield where, [str(part) for part in [*command, *args]]
        elif isinstance(node.get("args"), list) and "image" in node:
            yield where, [str(part) for part in node["args"]]
        for key, child in node.items():
            yield from _k8s_commands(child, f"{where}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _k8s_commands(child, f"{where}[{index}]")


def _all_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = list(_dockerfile_commands())
    if yaml is not None:
        found += list(_compose_commands())
        for path in sorted(K8S.glob("*.yaml")):
            for doc in _load_all(path):
                name = (doc.get("metadata") or {}).get("name", doc.get("kind", "?"))
                found += list(_k8s_commands(doc, f"{_relative(path)} {name}"))
    seen: set[tuple[str, ...]] = set()
    unique = []
    for where, argv in found:
        key = (where.split(" ")[0], *argv)
        if _is_kanmon(argv) and key not in seen:
            seen.add(key)
            unique.append((where, argv))
    return unique


COMMANDS = _all_commands()


def _command_id(entry: tuple[str, list[str]]) -> str:
    where, argv = entry
    return f"{where.split(' ')[0]}: {shlex.join(argv)}"


def test_deploy_runs_every_process_kind() -> None:
    lines = {shlex.join(argv) for _, argv in COMMANDS}
    expected = {"kanmon serve --workers 2 --host 0.0.0.0 --port 8000", "kanmon migrate"}
    expected |= {f"kanmon worker --queue {q}" for q in ("sms", "push", "maintenance")}
    if yaml is not None:
        expected |= {f"kanmon worker --queue {q} --check" for q in ("sms", "push", "maintenance")}
    assert expected <= lines, f"not found in deploy/: {sorted(expected - lines)}"


@pytest.mark.parametrize("entry", COMMANDS, ids=[_command_id(c) for c in COMMANDS])
def test_every_kanmon_command_line_parses(entry: tuple[str, list[str]]) -> None:
    where, argv = entry
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(
            f"{where}: `{shlex.join(argv)}` is not a valid kanmon command line:\n"
            f"{stderr.getvalue().strip()}"
        )


# --------------------------------------------------------------------------- (4) YAML


@needs_yaml
@pytest.mark.parametrize("path", _yaml_files(), ids=_relative)
def test_yaml_parses(path: Path) -> None:
    assert _load_all(path), f"{_relative(path)} is empty"


@needs_yaml
def test_compose_depends_on_names_defined_services() -> None:
    services = _load_all(COMPOSE)[0]["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or []
        targets = list(depends) if isinstance(depends, dict | list) else []
        unknown = [target for target in targets if target not in services]
        assert not unknown, f"compose service {name} depends on undefined {unknown}"
        assert name not in targets, f"compose service {name} depends on itself"


@needs_yaml
def test_compose_workers_and_gateways_have_health_checks() -> None:
    services = _load_all(COMPOSE)[0]["services"]
    for name, service in services.items():
        argv = _compose_argv(service.get("command"))
        if _is_kanmon(argv) and argv[1] in {"serve", "worker"}:
            test = (service.get("healthcheck") or {}).get("test")
            assert test, f"compose service {name} has no health check"


@needs_yaml
def test_kustomization_resources_exist() -> None:
    kustomization = _load_all(K8S / "kustomization.yaml")[0]
    for resource in kustomization.get("resources", []):
        assert (K8S / resource).is_file(), f"kustomization.yaml lists missing {resource}"
    listed = set(kustomization.get("resources", []))
    unlisted = sorted(
        p.name
        for p in K8S.glob("*.yaml")
        if p.name != "kustomization.yaml" and p.name not in listed
    )
    assert not unlisted, f"deploy/k8s files not in kustomization.yaml: {unlisted}"


@needs_yaml
def test_k8s_gateway_and_worker_shutdown_settings() -> None:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _load_all(path):
            if doc.get("kind") != "Deployment":
                continue
            name = doc["metadata"]["name"]
            pod = doc["spec"]["template"]["spec"]
            grace = pod.get("terminationGracePeriodSeconds", 30)
            container = pod["containers"][0]
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv[1] == "serve":
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
                assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
                pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
                assert pre_stop[0] == "sleep", name
                assert grace > int(pre_stop[1]) + 10, name
            else:
                assert argv[1] == "worker", name
                assert grace >= 30, name
                probe = container["livenessProbe"]["exec"]["command"]
                assert probe[-1] == "--check", name
            assert container.get("resources", {}).get("requests"), f"{name}: no requests"
