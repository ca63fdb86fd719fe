"""OpenTelemetry spans: where one request's time went (privacy, routing, each upstream
attempt and fallback, the wait for a local slot).

Spans go through the global tracer provider. Without ``server.tracing.enabled`` and
without a provider set by the host (``opentelemetry-instrument``, a test's in-memory
exporter) every span is OpenTelemetry's no-op, which costs about a microsecond. With
it, ``install`` sets a provider that batches spans to an OTLP/HTTP collector off the
event loop (the SDK's exporter thread). Spans carry names, routes and numbers, never
message content.
"""

from __future__ import annotations

import logging

from opentelemetry import trace

log = logging.getLogger("tandem.tracing")
TRACER = trace.get_tracer("tandem")  # a proxy: it follows whichever provider is set later


def install(cfg) -> object | None:
    """The provider for ``server.tracing`` when enabled (set globally once per process;
    a provider the host already set is kept and used)."""
    if not cfg.enabled:
        return None
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


def child(parent, name: str, **attributes):
    """A span under ``parent`` (explicitly: a stream's later work runs in another task,
    where the request's span is not the current one)."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    span = TRACER.start_span(name, context=context)
    annotate(span, **attributes)
    return span
