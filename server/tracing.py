"""OpenTelemetry spans: where one request's time went (privacy, routing, each upstream
attempt and fallback, the wait for a local slot).

Spans go through the global tracer provider. With ``server.tracing.enabled``,
``install`` sets a provider that batches spans to an OTLP/HTTP collector off the event
loop (the SDK's exporter thread); a provider the host set first (``opentelemetry-instrument``,
a test's in-memory exporter) is used as it is. Without either, at app start, no span is
made at all: OpenTelemetry's no-op spans still cost a context copy, a provider lookup
and a context-manager frame each, four times a request. A provider must therefore be
set before the app is created, as ``opentelemetry-instrument`` does. Spans carry names,
routes and numbers, never message content.
"""

from __future__ import annotations

import contextlib
import inspect
import logging

from opentelemetry import trace

log = logging.getLogger("tandem.tracing")
TRACER = trace.get_tracer("tandem")  # a proxy: it follows whichever provider is set
_recording = True  # set by install(): whether any provider takes spans in this process


def _host_set(provider: object) -> bool:
    """A provider someone set, not OpenTelemetry's deferred proxy (the API has no public
    "is configured" query; the proxies' class names are the contract FastAPI uses too)."""
    return not type(provider).__name__.startswith(("Proxy", "NoOp"))


def install(cfg) -> object | None:
    """The provider for ``server.tracing`` when enabled (set globally once per process;
    a provider the host already set is kept and used). Also decides, for this process,
    whether spans are made at all."""
    global _recording
    if not cfg.enabled:
        _recording = _host_set(trace.get_tracer_provider())
        return None
    _recording = True
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        log.warning("tracing: a tracer provider is already set; its exporters are used")
        return current
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=cfg.otlp_endpoint, headers=dict(cfg.headers))))
    trace.set_tracer_provider(provider)
    return provider


def shutdown(provider) -> None:
    """Flush what is batched (at exit)."""
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


def span_attributes(**values) -> dict:
    """``tandem.``-prefixed span attributes, without the unset ones (OpenTelemetry
    refuses None)."""
    return {f"tandem.{k}": v for k, v in values.items() if v is not None}


def annotate(span, **values) -> None:
    """Set ``tandem.`` attributes on a span that records; on a no-op span (tracing off,
    or sampled out) nothing is built, so the request path pays nothing for them."""
    if span is not None and span.is_recording():
        span.set_attributes(span_attributes(**values))


def event(span, name: str, **values) -> None:
    """An event on a span that records (as ``annotate``)."""
    if span is not None and span.is_recording():
        span.add_event(name, span_attributes(**values))


def fastapi_telemetry() -> dict:
    """FastAPI's own OpenTelemetry (0.165 and later: a server span, metrics and logs per
    request) for the providers that are set at app start, and off for the others: left
    on, it asks OpenTelemetry for all three providers on every request, for nothing.
    The keyword arguments for ``FastAPI(...)`` (none on a FastAPI without it)."""
    from fastapi import FastAPI
    from opentelemetry import _logs, metrics

    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": _recording,
                          "metrics": _host_set(metrics.get_meter_provider()),
                          "logs": _host_set(_logs.get_logger_provider())}}


def start(name: str):
    """A request's root span; the no-op span when spans go nowhere."""
    return TRACER.start_span(name) if _recording else trace.INVALID_SPAN


def scope(span):
    """``trace.use_span(span, end_on_exit=True)``; for the no-op span, nothing to enter."""
    if span is trace.INVALID_SPAN:
        return contextlib.nullcontext(span)
    return trace.use_span(span, end_on_exit=True)


def child(parent, name: str, **attributes):
    """A span under ``parent`` (explicitly: a stream's later work runs in another task,
    where the request's span is not the current one)."""
    if not _recording:
        return trace.INVALID_SPAN
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = TRACER.start_span(name, context=context)
    annotate(span, **attributes)
    return span
