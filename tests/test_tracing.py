"""OpenTelemetry spans, read back with the SDK's in-memory exporter: the gateway runs in
this process (uvicorn in a thread, so the test's tracer provider is the one it uses),
with the real local model, the real cloud server and the fault upstream."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.app import create_app
from server.config import GatewayConfig
from tests.conftest import gateway_config
from tests.support.servers import free_port

SECRET = "Quorvath Ellingsby lives at 12 Brackenmoor Lane"


@pytest.fixture(scope="module")
def traced(local_model_path, cloud_server, fault, monkeypatch_module):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # once per process; no other test sets one
    monkeypatch_module.setenv("TANDEM_TEST_FLAKY_KEY", "sk-flaky")
    config = gateway_config(local_model_path, cloud_server.url + "/v1", fault.url)
    config["privacy"] = {"detectors": ["marked", "pii"]}
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(GatewayConfig.model_validate(config)),
                                           host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused",
                           max_retries=0, timeout=120)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    yield client, exporter
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _trace_of(exporter: InMemorySpanExporter, request_id: str, timeout_s: float = 10):
    """Every span of the request whose root carries ``request_id`` (a stream's root
    ends when the stream does)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        spans = exporter.get_finished_spans()
        root = next((s for s in spans if s.name == "tandem.chat"
                     and s.attributes.get("tandem.request_id") == request_id), None)
        if root is not None:
            return root, [s for s in spans if s.context.trace_id == root.context.trace_id
                          and s is not root]
        time.sleep(0.05)
    raise AssertionError(f"no finished trace for {request_id}")


def test_fallback_trace_has_each_attempt_and_the_fallback_event(traced, fault):
    client, exporter = traced
    fault.script(*[{"kind": "status", "status": 500}] * 3)
    raw = client.chat.completions.with_raw_response.create(
        model="flaky", messages=[{"role": "user", "content": "Say hi."}], max_tokens=3)
    root, spans = _trace_of(exporter, raw.headers["x-request-id"])
    assert root.attributes["tandem.route"] == "local"
    assert root.attributes["tandem.status"] == "200"
    upstream = sorted((s for s in spans if s.name == "tandem.upstream"),
                      key=lambda s: s.attributes["tandem.attempt"])
    assert [s.attributes["tandem.model"] for s in upstream] == ["flaky", "local"]
    assert upstream[0].status.status_code == trace.StatusCode.ERROR
    assert upstream[1].status.status_code != trace.StatusCode.ERROR
    assert all(s.parent.span_id == root.context.span_id for s in spans
               if s.name in ("tandem.upstream", "tandem.route", "tandem.privacy"))
    fallback = [e for e in root.events if e.name == "tandem.fallback"]
    assert fallback and fallback[0].attributes["tandem.failed"] == "flaky"
    assert fallback[0].attributes["tandem.next"] == "local"
    decided = next(s for s in spans if s.name == "tandem.route")
    assert decided.attributes["tandem.model"] == "flaky"
    wait = [s for s in spans if s.name == "tandem.local.queue_wait"]
    assert len(wait) == 1 and wait[0].parent.span_id == upstream[1].context.span_id


def test_stream_trace_ends_with_the_stream(traced):
    client, exporter = traced
    with client.chat.completions.with_streaming_response.create(
            model="cloud", messages=[{"role": "user", "content": "Count to 5."}],
            max_tokens=8, stream=True, stream_options={"include_usage": True}) as resp:
        request_id = resp.headers["x-request-id"]
        chunks = list(resp.iter_lines())
    assert chunks
    root, spans = _trace_of(exporter, request_id)
    assert root.attributes["tandem.stream"] is True
    assert root.attributes["tandem.completion_tokens"] == 8
    opened = next(s for s in spans if s.name == "tandem.upstream")
    assert opened.attributes["tandem.model"] == "cloud" and opened.attributes["tandem.stream"]
    assert opened.end_time <= root.end_time


def test_privacy_span_counts_spans_and_never_holds_content(traced):
    client, exporter = traced
    raw = client.chat.completions.with_raw_response.create(
        model="local", max_tokens=3, messages=[{"role": "user", "content": "Who is it?"}],
        extra_body={"private_context": SECRET})
    root, spans = _trace_of(exporter, raw.headers["x-request-id"])
    privacy = next(s for s in spans if s.name == "tandem.privacy")
    assert privacy.attributes["tandem.private_spans"] >= 1
    assert root.attributes["tandem.private"] is True
    for span in [root, *spans]:
        values = " ".join(str(v) for v in span.attributes.values())
        values += " ".join(str(v) for e in span.events for v in e.attributes.values())
        assert "Quorvath" not in values and "Brackenmoor" not in values


def test_without_a_provider_no_span_is_made(monkeypatch):
    """No provider at app start and tracing off: no span objects, no context copies,
    and FastAPI's own telemetry is told there is nothing to report to."""
    from types import SimpleNamespace

    from server import tracing

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    monkeypatch.setattr(tracing, "_recording", True)
    assert tracing.install(SimpleNamespace(enabled=False)) is None
    assert tracing.start("tandem.chat") is trace.INVALID_SPAN
    assert tracing.child(trace.INVALID_SPAN, "tandem.route") is trace.INVALID_SPAN
    with tracing.scope(trace.INVALID_SPAN) as span:
        assert span is trace.INVALID_SPAN
    telemetry = tracing.fastapi_telemetry().get("telemetry")
    assert telemetry is None or telemetry["tracing"] is False
