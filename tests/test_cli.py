"""The `kanmon` command as an operator meets it (W1, O2): a bad setting or argument is one
clear line and exit 2, never a traceback; `migrate` makes SQLite's directory; `serve` gives
up on gateway processes that cannot start instead of restarting them forever."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.settings import Settings, new_key_text


def kanmon_env(tmp_path: Path, **env: str) -> dict[str, str]:
    """This process's environment without its KANMON_ settings, a fresh key, and `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KANMON_")}
    clean.update({"KANMON_SECRET_KEY": new_key_text(), "KANMON_DATA_DIR": str(tmp_path / "data")})
    clean.update(env)
    return clean


def kanmon(
    *args: str, tmp_path: Path, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        env=kanmon_env(tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KANMON_CHALLENGE_TTL_SECONDS", "abc"),
        ("KANMON_ENV", "staging"),
        ("KANMON_PUSH_NUMBER_MATCHING", "maybe"),
        ("KANMON_DATABASE_URL", "mysql//x"),
        ("KANMON_REDIS_URL", "http://x"),
    ],
)
@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["worker", "--queue", "sms"]])
def test_w1_an_invalid_setting_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str], variable: str, value: str
) -> None:
    done = kanmon(*command, tmp_path=tmp_path, **{variable: value})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"kanmon: invalid setting: {variable}:" in done.stderr


@pytest.mark.parametrize(
    "arguments",
    [
        ["serve", "--port", "99999"],
        ["serve", "--port", "0"],
        ["serve", "--workers", "0"],
        ["worker", "--queue", "sms", "--concurrency", "-3"],
        ["worker", "--queue", "sms", "--concurrency", "many"],
    ],
)
def test_w1_an_out_of_range_argument_is_refused(tmp_path: Path, arguments: list[str]) -> None:
    done = kanmon(*arguments, tmp_path=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "error: argument" in done.stderr


def test_o2_an_unexpected_error_ends_a_command_as_one_json_log_line(tmp_path: Path) -> None:
    """A log pipeline reads one JSON object per line: the traceback goes inside the record."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # nothing listens once the probe closes
    done = kanmon(
        "migrate",
        tmp_path=tmp_path,
        KANMON_DATABASE_URL=f"postgres://postgres@127.0.0.1:{closed}/nothing",
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    record = json.loads(lines[0])
    assert record["level"] == "ERROR"
    assert record["command"] == "migrate"
    assert "ConnectionRefusedError" in record["exception"]


def test_w1_migrate_makes_the_sqlite_directory(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "kanmon.sqlite3"
    done = kanmon("migrate", tmp_path=tmp_path, KANMON_DATABASE_URL=f"sqlite://{target}")
    assert done.returncode == 0, done.stderr
    assert target.exists()
    # And the default, under a data directory that does not exist yet.
    done = kanmon("migrate", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "kanmon.sqlite3").exists()


def test_w1_serve_gives_up_on_processes_that_cannot_start(tmp_path: Path) -> None:
    """Every gateway process fails in its startup (an SMS allow-list it refuses): the parent
    stops after a few tries, with exit 3, instead of restarting them forever."""
    done = kanmon(
        "serve",
        "--workers",
        "2",
        "--port",
        "18699",
        tmp_path=tmp_path,
        timeout=120,
        KANMON_REDIS_URL="redis://127.0.0.1:1/0",
        KANMON_DATABASE_URL=f"sqlite://{tmp_path / 'k.sqlite3'}",
        KANMON_SMS_ALLOWED_COUNTRY_CODES="x,y",
    )
    assert done.returncode == 3, done.stderr[-2000:]
    assert "failed at startup 3 times in a row" in done.stderr


def test_w1_dev_on_a_busy_port_says_so_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = kanmon("dev", tmp_path=tmp_path, KANMON_PORT=str(port))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{port} is in use" in done.stderr
    assert not (tmp_path / "data" / "kanmon.sqlite3").exists()


def quiet_redis(url: str) -> str:
    """The suite's Redis server, another database: no other test's jobs are there."""
    base = url.split("?", 1)[0]
    if base.startswith("unix://"):
        return f"{base}?db=9"
    return base.rsplit("/", 1)[0] + "/9"


def test_w1_a_burst_worker_exits_when_its_queue_is_empty(
    tmp_path: Path, settings: Settings
) -> None:
    """Even the maintenance queue, whose crons run every second in a long-lived worker."""
    assert settings.redis_url is not None
    database = f"sqlite://{tmp_path / 'k.sqlite3'}"
    assert kanmon("migrate", tmp_path=tmp_path, KANMON_DATABASE_URL=database).returncode == 0
    done = kanmon(
        "worker",
        "--queue",
        "maintenance",
        "--burst",
        tmp_path=tmp_path,
        KANMON_DATABASE_URL=database,
        KANMON_REDIS_URL=quiet_redis(settings.redis_url),
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_w1_ctrl_c_stops_serve_and_its_processes_in_order(
    tmp_path: Path, settings: Settings
) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole process group: each gateway process hears it
    once, through the parent, and shuts down in order (no traceback, exit 0)."""
    assert settings.redis_url is not None
    database = f"sqlite://{tmp_path / 'k.sqlite3'}"
    assert kanmon("migrate", tmp_path=tmp_path, KANMON_DATABASE_URL=database).returncode == 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = kanmon_env(
        tmp_path, KANMON_DATABASE_URL=database, KANMON_REDIS_URL=quiet_redis(settings.redis_url)
    )
    serve = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--workers", "2", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert until(lambda: ready(port), 60), "the gateway never answered /readyz"
        os.killpg(serve.pid, signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
    assert serve.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # Each process said where it listens (uvicorn's own line is below the operator's level).
    listening = [json.loads(line) for line in output.splitlines() if "gateway listening" in line]
    assert len(listening) == 2, output[-3000:]
    assert {entry["url"] for entry in listening} == {f"http://127.0.0.1:{port}/graphql"}
    assert len({entry["pid"] for entry in listening}) == 2


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_w1_a_worker_whose_redis_is_gone_still_stops_on_sigterm(tmp_path: Path) -> None:
    """A worker waits for a lost Redis to come back (O2), but SIGTERM still stops it. arq's
    close removes its health key before the shutdown hook: with Redis gone that failed first,
    the database stayed open, and SQLite's connection thread kept the process alive for good.
    A supervisor must see it exit."""
    from gateway.dev import start_embedded_redis

    path = tmp_path / "k.sqlite3"
    database = f"sqlite://{path}"
    assert kanmon("migrate", tmp_path=tmp_path, KANMON_DATABASE_URL=database).returncode == 0
    # An outbox row long undispatched: the worker's sweep at startup hands it over, which
    # shows the worker's database connection is open.
    payload = json.dumps({"user_id": str(uuid.uuid4()), "notice": "phone_removed"})
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO outbox_messages VALUES (?, 'maintenance', 'notices.send', ?,"
            " '2020-01-01 00:00:00+00:00', NULL, 0)",
            (str(uuid.uuid4()), payload),
        )
    server, redis_url = start_embedded_redis()
    env = kanmon_env(tmp_path, KANMON_DATABASE_URL=database, KANMON_REDIS_URL=redis_url)
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "worker", "--queue", "maintenance"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        assert until(lambda: swept(path), 60), "the worker never swept the outbox"
        server.stop()
        assert until(lambda: "Redis unreachable" in log.read_text(), 60), log.read_text()
        assert worker.poll() is None, log.read_text()  # waiting for Redis, not gone
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
        with contextlib.suppress(Exception):
            server.stop()
    output = log.read_text()
    assert worker.returncode == 1, output  # not a clean stop: its jobs could not be handed back
    assert "worker closing without Redis" in output
    assert all(json.loads(line) for line in output.splitlines()), output  # no raw traceback


def swept(path: Path) -> bool:
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT count(*) FROM outbox_messages WHERE dispatched_at IS NULL")
        return bool(row.fetchone()[0] == 0)


def until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False
