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


def _valkey_pids() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"valkey-server" in (entry / "cmdline").read_bytes():
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


async def test_w2_dev_runs_the_whole_system_and_stops_cleanly(tmp_path: Path) -> None:
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KANMON_")}
    env.update({"KANMON_PORT": str(port), "KANMON_DATA_DIR": str(tmp_path / "data")})
    before = _valkey_pids()
    process = await asyncio.create_subprocess_exec(
        str(KANMON),
        "dev",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
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
        assert _valkey_pids() - before, "no embedded server was started"

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
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest, _ = await process.communicate()
    assert process.returncode == 0, rest.decode(errors="replace")[-4000:]
    assert not (_valkey_pids() - before), "the embedded server outlived kanmon dev"
