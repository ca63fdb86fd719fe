"""A real redis-server on a free loopback port, for tests of state shared by replicas."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

from tests.support.servers import free_port


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Yields the server's URL (``redis://127.0.0.1:PORT/0``); no persistence."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required (make test installs Debian's redis-server)"
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:  # ready once it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)
