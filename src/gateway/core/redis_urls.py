"""A unix:// Redis URL in the form redis-py documents: unix://[[user]:password@]/path?db=N.

arq's `RedisSettings.from_dsn` reads redis:// and rediss:// only, so a socket URL is parsed
here; its database and credentials must not be dropped on the way (a gateway on db 0 and a
worker told db 3 would never see each other's jobs).
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from arq.connections import RedisSettings


def unix_socket_settings(url: str) -> RedisSettings:
    """ValueError when the URL names no socket path or a database that is not a number."""
    parts = urlsplit(url)
    if parts.scheme != "unix" or not parts.path:
        raise ValueError("a unix:// URL names its socket's path, e.g. unix:///run/redis.sock?db=0")
    query = parse_qs(parts.query)
    database = query.get("db", ["0"])[-1]
    if not database.isdigit():
        raise ValueError(f"the db of a unix:// Redis URL is a number, not {database!r}")
    password = parts.password if parts.password is not None else query.get("password", [None])[-1]
    return RedisSettings(
        unix_socket_path=unquote(parts.path),
        database=int(database),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(password) if password else None,
    )
