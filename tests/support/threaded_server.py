"""A Starlette app served by uvicorn in a background thread on a free loopback port:
what the test upstreams (faults, recording) have in common."""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette

from tests.support.servers import free_port


class ThreadedServer:
    def __init__(self, app: Starlette) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                     log_level="error", lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self):
        self._thread.start()
        while not self._server.started:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
