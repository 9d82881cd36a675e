"""`kanmon dev` on a fresh machine: SQLite, an embedded Redis-compatible server, migrations,
the gateway and the workers in one process; Ctrl-C stops all of it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx

KANMON = Path(sys.executable).parent / "kanmon"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _valkey_pids(under: Path) -> set[int]:
    """The valkey-servers whose files are under `under` (this test's own: its config file is
    on the command line), whatever else runs on the machine."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"valkey-server" in command and str(under).encode() in command:
                found.add(int(entry.name))
    return found


async def test_w2_dev_runs_the_whole_system_and_stops_cleanly(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group. The embedded server
    must not take it too (it would die under the workers, which would then close without
    Redis): `kanmon dev` stops it last, and leaves no socket directory behind."""
    port = _free_port()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    env.update(
        {
            "KANMON_PORT": str(port),
            "KANMON_DATA_DIR": str(tmp_path / "data"),
            "TMPDIR": str(temporary),
        }
    )
    process = await asyncio.create_subprocess_exec(
        str(KANMON),
        "dev",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group, as a shell job is
    )
    assert process.stdout is not None
    try:
        banner = ""
        async with asyncio.timeout(60):
            while "GraphiQL:" not in banner:
                line = await process.stdout.readline()
                assert line, "kanmon dev exited before serving"
                banner = line.decode()
        assert f"http://127.0.0.1:{port}/graphql" in banner
        assert _valkey_pids(temporary), "no embedded server was started"

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["checks"] == {"database": True, "redis": True}
            signed = await http.post(
                "/graphql",
                json={
                    "query": 'mutation { signUp(username: "devuser", password: "long enough",'
                    " client: {kind: WEB}) { token } }"
                },
            )
            assert signed.json()["data"]["signUp"]["token"]
            ide = await http.get("/graphql", headers={"accept": "text/html"})
            assert "graphiql" in ide.text.lower()
        assert (tmp_path / "data" / "kanmon.sqlite3").exists()

        # The operator's commands reach the running system through the settings it shares.
        shared = (tmp_path / "data" / "dev.env").read_text().split()
        assert "KANMON_ENV=development" in shared
        admin_env = {**env, **dict(line.split("=", 1) for line in shared)}
        admin = await asyncio.create_subprocess_exec(
            str(KANMON),
            "admin",
            "queues",
            env=admin_env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            report, _ = await admin.communicate()
        assert admin.returncode == 0, report.decode(errors="replace")
    finally:
        os.killpg(process.pid, signal.SIGINT)
        async with asyncio.timeout(30):
            rest, _ = await process.communicate()
    output = rest.decode(errors="replace")
    assert process.returncode == 0, output[-4000:]
    assert "without Redis" not in output, output[-4000:]
    assert '"level": "ERROR"' not in output, output[-4000:]
    assert "lost Redis" not in output, output[-4000:]
    assert not _valkey_pids(temporary), "the embedded server outlived kanmon dev"
    assert list(temporary.iterdir()) == [], "the embedded server's directory was left behind"
    assert not (tmp_path / "data" / "dev.env").exists()
