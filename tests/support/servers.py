"""Real servers on loopback for the tests: the gateway, llama_cpp.server, helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server started as a subprocess; waits for ``ready_path`` to answer 200."""

    def __init__(self, cmd: list[str], port: int, ready_path: str, log: Path,
                 env: dict[str, str] | None = None, timeout_s: float = 300,
                 cwd: Path = ROOT) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited early:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{cmd[:4]} not ready in {timeout_s}s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log_file.close()


def start_gateway(config: dict, tmp: Path, name: str = "gateway",
                  env: dict[str, str] | None = None, ready_path: str = "/ready",
                  cwd: Path = ROOT) -> ServerProcess:
    """The gateway of the checkout at ``cwd`` (default: this one) on a free port."""
    port = free_port()
    config = {**config, "server": {**config.get("server", {}), "port": port}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return ServerProcess(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(path),
         "--log-level", "warning"],
        port, ready_path, tmp / f"{name}.log", env=env, cwd=cwd,
    )


def start_llama_cpp_server(model_path: Path, tmp: Path, alias: str,
                           extra_args: tuple[str, ...] = ()) -> ServerProcess:
    """llama-cpp-python's own OpenAI-compatible server: a real third-party 'cloud'."""
    port = free_port()
    return ServerProcess(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
         "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "2048", "--interrupt_requests", "False",
         "--n_threads", str(os.cpu_count() or 2), *extra_args],
        port, "/v1/models", tmp / f"llama_cpp_server_{alias}.log",
    )
