"""The privacy stage of a chat request: analyse, pick the mode, rebuild the chain.

Runs after validation and before routing. The mode comes from the request
(``"privacy": "sketch"``), else the API key (``privacy_mode``), else the configuration
(``privacy.mode``; unset: ``local_only`` with a local model, ``redact`` without one). A
request without private spans is untouched (``x-tandem-privacy:
none``). With spans, every local model in the chain gets the context, and every remote
one becomes what the mode makes of it (clients/private.py): dropped (``local_only``),
placeholders (``redact``) or an outline writer (``sketch``). When detection failed,
``egress_on_failure: local`` answers locally; ``block`` lets the egress guard refuse.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from clients.base import ChatClient
from clients.errors import InvalidRequest
from clients.private import MODES, LocalWithContext
from privacy.analysis import Analyzer, Plan
from privacy.audit import AuditStore
from privacy.detectors import build_detector
from privacy.guard import EgressBlocked, EgressState, activate
from privacy.memory import PrivacyMemory

log = logging.getLogger("tandem.privacy")
INLINE_CHARS = 4000  # smaller bodies are analysed on the event loop: every default detector
# costs ~0.5 ms at 80 tokens and ~2 ms at 500 (bench/privacy_detect.py), bounded like parsing


@dataclass
class Prepared:
    plan: Plan
    mode: str
    state: EgressState


class PrivacyStage:
    def __init__(self, config, clients: dict[str, ChatClient],
                 on_block: Callable[[str], None] | None = None,
                 audit: AuditStore | None = None, store=None) -> None:
        self.config = config
        self.clients = clients
        self.on_block = on_block
        self.memory = None
        extra = []
        if config.memory.enabled:
            from server.state import MemoryState

            self.memory = PrivacyMemory(store if store is not None else MemoryState(),
                                        config.memory.ttl_s, config.memory.scope)
            extra = ["remembered"]
        names = list(dict.fromkeys(["marked", *config.detectors, *extra]))  # own kinds first
        self.analyzer = Analyzer([build_detector(n, **config.detector_options.get(n, {}))
                                  for n in names])
        self.audit = audit or AuditStore(config.audit_ttl_s, config.audit_max_requests,
                                         config.audit_max_bytes)
        self.local_name = config.local_model or next(
            (n for n, c in clients.items() if c.capabilities.local), None)
        self._heavy = any(getattr(d, "heavy", False) for d in self.analyzer.detectors)

    async def start(self) -> None:
        """Load detectors now; one that cannot load fails each request's detection later
        (fail closed) instead of stopping the gateway."""
        try:
            await asyncio.to_thread(self.analyzer.start)
        except Exception as err:
            log.error("privacy detectors failed to load: %s", type(err).__name__)

    def mode_for(self, requested: str | None, key) -> str:
        mode = (requested or getattr(key, "privacy_mode", None) or self.config.mode
                or ("local_only" if self.local_name else "redact"))
        if mode not in MODES:
            raise InvalidRequest(f"Invalid request: 'privacy' must be one of "
                                 f"{', '.join(sorted(MODES))}, not '{mode}'", param="privacy")
        return mode

    async def prepare(self, body: dict, key, request_id: str, remember: bool = True
                      ) -> Prepared:
        size = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
        size += len(str(body.get("private_context") or ""))
        recalled, scopes = None, []
        if self.memory is not None:
            scopes = self.memory.scopes(body, key)
            recalled = await self.memory.recall(scopes, self.memory.owner(key))
        if self._heavy or size > INLINE_CHARS or recalled:
            plan = await asyncio.to_thread(self.analyzer.analyse, body, recalled)
        else:
            plan = self.analyzer.analyse(body, recalled)
        if remember and self.memory is not None and (plan.spans or plan.marked):
            await self.memory.remember(scopes, plan.spans, plan.marked)
        mode = self.mode_for(plan.marks.mode, key)
        if plan.failed and self.config.egress_on_failure == "local":
            mode = "local_only"
        state = EgressState(request_id, plan.spans, plan.marked, plan.failed,
                            fallback_local=self.config.egress_on_failure == "local",
                            owner=getattr(key, "name", None), audit=self.audit,
                            on_block=self.on_block)
        plan.state = state
        activate(state)
        return Prepared(plan, mode, state)

    def chain(self, prepared: Prepared, chain: tuple[str, ...]
              ) -> tuple[tuple[str, ...], dict[str, ChatClient]]:
        """The chain and the per-request clients that answer it."""
        if not prepared.plan.private:
            return chain, self.clients
        plan, mode = prepared.plan, prepared.mode
        local = self.clients.get(self.local_name) if self.local_name else None
        out: dict[str, ChatClient] = {}
        for name in chain:
            client = self.clients[name]
            if client.capabilities.local:
                out[name] = LocalWithContext(client, plan)
                continue
            wrapped = MODES[mode](client, plan, local, self.config.sketch_max_tokens)
            if wrapped is not None:
                out[name] = wrapped
        on_fail_local = (self.config.egress_on_failure == "local"
                         or mode == "local_only")
        if local is not None and self.local_name not in out and (on_fail_local or not out):
            out[self.local_name] = LocalWithContext(local, plan)
        if not out:
            raise EgressBlocked("Request blocked: it holds private data, no local model is "
                                "configured, and no remote model may see it", retryable=False)
        return tuple(out), out


def privacy_header(client: ChatClient | None) -> str:
    return getattr(client, "privacy_mode", "none")

