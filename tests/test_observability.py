"""/metrics in Prometheus text and one JSON access-log line per request, without content."""

from __future__ import annotations

import json

import httpx
from prometheus_client.parser import text_string_to_metric_families


def _samples(gateway) -> dict[tuple[str, tuple], float]:
    text = httpx.get(gateway.url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_tokens_fallbacks_and_queue(client, gateway, fault):
    before = _samples(gateway)
    client.chat.completions.create(model="local", max_tokens=3,
                                   messages=[{"role": "user", "content": "hi"}])
    fault.script(*[{"kind": "status", "status": 500}] * 3)
    client.chat.completions.create(model="flaky", max_tokens=3,
                                   messages=[{"role": "user", "content": "hi"}])
    httpx.post(gateway.url + "/v1/chat/completions", json={"model": "nope", "messages": []})
    after = _samples(gateway)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("tandem_requests_total", model="local", route="local", status="200") == 1
    assert delta("tandem_requests_total", model="flaky", route="local", status="200") == 1
    assert delta("tandem_requests_total", model="unknown", route="none", status="400") == 1
    assert delta("tandem_fallbacks_total", from_model="flaky", to_model="local",
                 stage="before_first_byte") == 1
    assert delta("tandem_tokens_total", route="local", direction="out") == 6
    assert delta("tandem_routing_decisions_total", rule="explicit", model="local") == 2
    assert ("tandem_local_queue_depth", (("model", "local"),)) in after
    assert after[("tandem_asyncio_tasks", ())] >= 1


def test_access_log_is_json_with_request_id_and_no_content(client, gateway):
    secret = "my-very-private-sentence-42"
    raw = client.chat.completions.with_raw_response.create(
        model="local", max_tokens=2, messages=[{"role": "user", "content": secret}])
    rid = raw.headers["x-request-id"]
    lines = [json.loads(line) for line in gateway.log.read_text().splitlines()
             if line.startswith("{")]
    mine = [r for r in lines if r.get("request_id") == rid]
    assert len(mine) == 1
    entry = mine[0]
    assert entry["route"] == "local" and entry["status"] == 200
    # the log agrees with the usage the client got (greedy decoding may stop at EOS after
    # one token when earlier tests' cache state changes the numerics; 2 is the cap)
    usage = raw.parse().usage
    assert 1 <= entry["completion_tokens"] == usage.completion_tokens <= 2
    assert entry["prompt_tokens"] == usage.prompt_tokens > 0 and entry["duration_ms"] > 0
    assert secret not in gateway.log.read_text()
