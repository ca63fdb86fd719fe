"""Finding private spans in a request and guarding every byte that leaves the machine.

``spans`` (the span model and normal forms), ``detectors`` (one interface, a registry),
``analysis`` (a chat body in, its private spans out), ``redact`` (typed placeholders and
their streaming-safe restoration), ``guard`` (the egress check on outbound bytes) and
``audit`` (what was sent, per request, for a bounded time).
"""
