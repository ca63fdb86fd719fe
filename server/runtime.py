"""Everything one configuration builds (policy, clients, chat service, keys), and how a
new configuration replaces it without dropping a request.

A reload builds the new runtime first (reusing clients whose model config did not
change, so a local model is not loaded twice), starts it, then swaps it in; requests
already running finish on the old one, whose remaining clients close once it is idle.
An invalid file changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from clients.base import ChatClient, build_client
from routers.policy import Policy
from server.auth import Gatekeeper
from server.chat import ChatService
from server.config import ConfigError, GatewayConfig, load_config
from privacy.stage import PrivacyStage
from server.observe import GatewayMetrics
from server.state import StateStore

log = logging.getLogger("tandem.runtime")
RETIRE_TIMEOUT_S = 600.0


class Runtime:
    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics | None,
                 store: StateStore | None, previous: "Runtime | None" = None) -> None:
        self.config = config
        try:
            self.policy = Policy.from_config(config, store, metrics)
        except ValueError as err:  # a missing, corrupt or mismatched router checkpoint
            raise ConfigError(f"routing: {err}") from None
        reusable = previous.reusable_clients(config) if previous else {}
        self.reused = set(reusable)
        self.clients: dict[str, ChatClient] = {
            name: reusable.get(name) or build_client(name, model_cfg)
            for name, model_cfg in config.models.items()
        }
        for client in self.clients.values():
            client.bind(self.clients)
        self.prices = {name: (m.price_input_per_mtok, m.price_output_per_mtok)
                       for name, m in config.models.items() if m.backend == "openai"}
        self.keys = {k.key_sha256: k for k in config.auth.keys}
        self.privacy = PrivacyStage(config.privacy, self.clients, self._count_block,
                                    previous.privacy.audit if previous else None,
                                    store or (previous.privacy.memory.store
                                              if previous and previous.privacy.memory
                                              else None))
        self.service = ChatService(self.policy, self.clients, metrics, Gatekeeper(store),
                                   self.prices, self.privacy)
        self.created = int(time.time())

    def _count_block(self, reason: str) -> None:
        if self.service.metrics is not None:
            self.service.metrics.egress_blocks.labels(reason).inc()

    def reusable_clients(self, new: GatewayConfig) -> dict[str, ChatClient]:
        return {name: client for name, client in self.clients.items()
                if not client.composite
                and name in new.models and new.models[name] == self.config.models[name]}

    async def start(self) -> None:
        await asyncio.gather(*(c.start() for n, c in self.clients.items()
                               if n not in self.reused), self.privacy.start())
        if self.policy.live is not None:
            await self.policy.live.start()

    async def wait_loaded(self, timeout_s: float) -> None:
        """Until every client reports ready or loading has failed/timed out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = await asyncio.gather(*(c.readiness() for c in self.clients.values()))
            if all(s.ready or s.detail != "loading" for s in states):
                return
            await asyncio.sleep(0.2)

    async def close(self, keep: set[int] = frozenset()) -> None:
        if self.policy.live is not None:
            await self.policy.live.close()
        await asyncio.gather(*(c.close() for c in self.clients.values() if id(c) not in keep),
                             return_exceptions=True)

    async def retire(self, successor: "Runtime") -> None:
        """Close what the successor does not reuse, once no request uses this runtime."""
        deadline = time.monotonic() + RETIRE_TIMEOUT_S
        while self.service.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await self.close(keep={id(c) for c in successor.clients.values()})


class RuntimeHolder:
    """The app's current runtime, swapped atomically by ``reload``."""

    def __init__(self, runtime: Runtime, config_path: str | None,
                 metrics: GatewayMetrics | None, store: StateStore | None) -> None:
        self.current = runtime
        self.config_path = config_path
        self.metrics = metrics
        self.store = store
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task] = set()

    async def reload(self) -> Runtime:
        """Re-read the config file; raises ConfigError (old runtime untouched) if invalid."""
        async with self._lock:
            config = load_config(Path(self.config_path) if self.config_path else None)
            old = self.current
            new = Runtime(config, self.metrics, self.store, previous=old)
            await new.start()
            await new.wait_loaded(timeout_s=600)
            if self.metrics is not None:
                self.metrics.use(new.clients, new.prices)
            self.current = new
            task = asyncio.get_running_loop().create_task(old.retire(new))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            log.warning("configuration reloaded: models %s (reused %s)",
                        ", ".join(new.clients), ", ".join(sorted(new.reused)) or "none")
            return new
