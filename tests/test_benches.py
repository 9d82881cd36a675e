"""The benches the README's performance section quotes still run against the code they measure.

They live outside `src/` and no other test imports them, so a renamed function in the gateway
broke all four at import without failing the suite once. Every bench answers `--help` (which
imports everything it uses); the login bench also runs for real, briefly, against a real
`kanmon serve`, and must print its one JSON line with every phase done and no error, and the
argon2 ceiling bench runs against the bare server it starts itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from gateway.settings import Settings
from tests.gateway_processes import process_environment, running_gateways

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = ["login_totp.py", "push_approval.py", "sms_pipeline.py", "soak.py", "argon2_ceiling.py"]
RUN_SECONDS = 120.0


async def run_script(
    script: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / script),
        *args,
        cwd=BENCH,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_SECONDS):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("script", SCRIPTS)
async def test_every_bench_imports_and_answers_help(script: str) -> None:
    code, out, err = await run_script(script, "--help")
    assert code == 0, err
    assert "usage:" in out


async def test_argon2_ceiling_bench_runs_its_own_server() -> None:
    code, out, err = await run_script(
        "argon2_ceiling.py",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
        "--runs",
        "1",
        "--concurrency",
        "2",
    )
    assert code == 0, err
    (run,) = json.loads(out)["runs"]
    assert run["verifies_per_s"] > 0
    assert run["ratio_to_bound"] > 0


async def test_login_bench_runs_every_phase_against_a_real_gateway(settings: Settings) -> None:
    async with running_gateways(settings, 1, prefix="bench") as (gateway,):
        code, out, err = await run_script(
            "login_totp.py",
            "--url",
            gateway.base_url,
            "--seconds",
            "1",
            "--warmup",
            "0",
            "--concurrency",
            "2",
            "--accounts",
            "4",
            "--check-rate-cap",
            "20",
            "--login-headroom",
            "0.05",
            env=process_environment(settings),
        )
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    figures = json.loads(lines[0])
    assert figures["checks"]["checks_per_s"] > 0
    assert figures["logins"]["logins_per_s"] > 0
    assert figures["logins"]["argon2_bound_per_s"] > 0
    assert figures["viewer"]["queries_per_s"] > 0
    for phase in ("checks", "logins", "viewer"):
        assert figures[phase]["errors"] == 0, figures[phase]
