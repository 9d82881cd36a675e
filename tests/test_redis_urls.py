"""O2: a unix:// KANMON_REDIS_URL keeps its database and credentials (redis-py's form,
unix://[[user]:password@]/path?db=N), and a malformed one is refused as a setting."""

from __future__ import annotations

import secrets

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis

from gateway.core.redis_urls import unix_socket_settings
from gateway.settings import Settings
from tests.own_valkey import client, own_valkey


def test_o2_unix_url_keeps_database_and_credentials() -> None:
    parsed = unix_socket_settings("unix://kanmon:p%40ss@/run/redis/redis.sock?db=3")
    assert parsed.unix_socket_path == "/run/redis/redis.sock"
    assert parsed.database == 3
    assert parsed.username == "kanmon"
    assert parsed.password == "p@ss"


def test_o2_unix_url_password_may_come_in_the_query() -> None:
    parsed = unix_socket_settings("unix:///tmp/r.sock?db=0&password=secret")
    assert (parsed.database, parsed.password, parsed.username) == (0, "secret", None)


def test_o2_unix_url_without_db_is_database_0() -> None:
    assert unix_socket_settings("unix:///tmp/r.sock").database == 0


@pytest.mark.parametrize("url", ["unix:///tmp/r.sock?db=three", "unix://?db=1", "unix://"])
def test_o2_malformed_unix_url_is_refused_as_a_setting(url: str) -> None:
    with pytest.raises(ValidationError, match="unix://"):
        Settings(redis_url=url)


async def test_o2_a_client_on_a_unix_url_uses_its_database() -> None:
    key = f"kanmon-test:{secrets.token_hex(8)}"
    async with own_valkey("kanmon-urls-") as server:
        async with client(f"{server.url}?db=3") as on_3:
            await on_3.set(key, "here")
        # Read back with redis-py's own client, told the socket and database directly.
        for database, expected in ((0, None), (3, b"here")):
            direct = Redis(unix_socket_path=str(server.socket_path), db=database)
            try:
                assert await direct.get(key) == expected
            finally:
                await direct.aclose()
