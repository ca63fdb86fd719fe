"""Private context never leaves: a real gateway whose remote model is a recording upstream
(a real loopback server that stores every byte, forwarding to llama_cpp.server), random
canaries in every mode, streaming and not, with tools and multi-turn history, and the
paths nobody marks: names in free text and a password inside code."""

from __future__ import annotations

import json
import secrets
import string

import httpx
import openai
import pytest

from tests.conftest import _wait_local_loaded
from tests.support.recording_upstream import RecordingUpstream
from tests.support.servers import start_gateway

MODES = ("local_only", "sketch", "redact")


def _word(n: int) -> str:
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(n))


CANARY = {
    "code": f"Kx{secrets.token_hex(4)}",
    "name": "Zo" + _word(7),  # capitalised in the context: a name
    "word": "qu" + _word(12),  # a long lowercase word, no digits
    "mail": f"{_word(8)}@{_word(6)}.example",
    "phone": f"+44 20 {secrets.randbelow(9000) + 1000} {secrets.randbelow(9000) + 1000}",
    # nobody marks these: the default `names` and credential rules must find them
    "first": f"Ve{_word(6)}",  # each word is a canary: half a name must not leak either
    "last": f"Ko{_word(7)}",
    "company": f"No{_word(7)}",
    "town": f"Qu{_word(6)}",
    "dbpass": f"pw{secrets.token_hex(6)}",
}
NAME = CANARY["name"].capitalize()
CONTEXT = (f"My neighbour is {NAME}. My locker code is {CANARY['code']}. My favourite "
           f"dessert is {CANARY['word']} pie. My e-mail is {CANARY['mail']}.")
TOOLS = [{"type": "function", "function": {
    "name": "send_email", "description": "Send an e-mail",
    "parameters": {"type": "object", "properties": {"to": {"type": "string"},
                                                    "body": {"type": "string"}}}}}]


def scenarios() -> dict[str, dict]:
    return {
        "context_field": {"private_context": [CONTEXT],
                          "messages": [{"role": "user",
                                        "content": f"Write one line inviting {NAME} to tea."}]},
        "private_message": {"messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": CONTEXT, "private": True},
            {"role": "user", "content": f"Suggest a gift for {NAME}."}]},
        "history_tools": {"private_context": CONTEXT, "tools": TOOLS, "messages": [
            {"role": "user", "content": "What is my locker code?"},
            {"role": "assistant", "content": f"Your locker code is {CANARY['code']}."},
            {"role": "user", "content": f"E-mail it to {NAME} please."}]},
        "unmarked_pii": {"messages": [{"role": "user", "content":
                                       f"Draft a reply to {CANARY['mail']}; they can call "
                                       f"{CANARY['phone']}."}]},
        "names_free_text": {"messages": [{"role": "user", "content":
                                          f"write to my colleague {CANARY['first']} "
                                          f"{CANARY['last']} at {CANARY['company']} "
                                          "Traders about the offsite in "
                                          f"{CANARY['town']}"}]},
        "credential_in_code": {"messages": [{"role": "user", "content":
                                             "Why does this fail to connect?\n```python\n"
                                             "engine = create_engine(\"postgresql://app:"
                                             f"{CANARY['dbpass']}@db.internal:5432/prod\")\n"
                                             "```"}]},
    }


@pytest.fixture(scope="module")
def recording(cloud_server):
    upstream = RecordingUpstream(cloud_server.url).start()
    yield upstream
    upstream.stop()


def _config(local_model_path, recording_url: str, **privacy) -> dict:
    return {
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 2048},
            "cloud": {"backend": "openai", "base_url": recording_url, "model": "qwen-cloud",
                      "max_retries": 0},
        },
        "routing": {"default": "cloud"},
        "privacy": {"mode": "local_only", "sketch_max_tokens": 16, **privacy},
    }


@pytest.fixture(scope="module")
def private_gateway(local_model_path, recording, workdir):
    server = start_gateway(_config(local_model_path, recording.url), workdir,
                           name="privacy-gateway", ready_path="/health")
    _wait_local_loaded(server.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(private_gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=private_gateway.url + "/v1", api_key="unused",
                         max_retries=0, timeout=300)


def _leaks(data: bytes | str) -> list[str]:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    low = text.lower()
    found = [k for k, v in CANARY.items() if v.lower() in low]
    digits = "".join(c for c in CANARY["phone"] if c.isdigit())
    if digits in "".join(c for c in text if c.isdigit() or c.isspace()).replace(" ", ""):
        found.append("phone-digits")
    return found


def _ask(sdk: openai.OpenAI, case: dict, mode: str, stream: bool, rid: str):
    extra = {k: v for k, v in case.items() if k not in ("messages", "tools")}
    kwargs = dict(model="tandem", messages=case["messages"], max_tokens=8, temperature=0,
                  extra_body={**extra, "privacy": mode}, extra_headers={"x-request-id": rid})
    if "tools" in case:
        kwargs["tools"] = case["tools"]
    if not stream:
        raw = sdk.chat.completions.with_raw_response.create(**kwargs)
        message = raw.parse().choices[0].message
        return raw.headers, (message.content or "") + json.dumps(
            [c.function.arguments for c in message.tool_calls or []])
    with sdk.chat.completions.with_streaming_response.create(stream=True, **kwargs) as raw:
        text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)
        return raw.headers, text


ANSWERED: dict[str, str] = {}  # request id -> mode, filled by the per-mode tests


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_answers_without_sending_canaries(mode, sdk, recording):
    """Every scenario once per mode; streaming alternates so each mode and each scenario
    runs both ways across the three modes (the 2-core machine is slow)."""
    m = MODES.index(mode)
    for i, (name, case) in enumerate(scenarios().items()):
        stream = (i + m) % 2 == 1
        rid = f"priv-{mode}-{int(stream)}-{name}"
        before = len(recording.received)
        headers, _ = _ask(sdk, case, mode, stream, rid)
        assert headers["x-tandem-privacy"] == mode, rid
        sent = len(recording.received) - before
        assert sent == 0 if mode == "local_only" else sent == 1, rid  # sketch/redact: 1 call
        ANSWERED[rid] = mode
    assert _leaks(recording.all_bytes()) == []


def test_no_canary_in_any_byte_log_or_audit(private_gateway, recording):
    assert len(ANSWERED) == 3 * len(scenarios())
    assert len(recording.chat_bodies()) >= 8  # the remote model was really used
    assert _leaks(recording.all_bytes()) == []
    log = private_gateway.log.read_text()
    assert "priv-sketch-1-context_field" in log  # the access log has the requests ...
    assert _leaks(log) == []  # ... and none of their private data
    for rid, mode in ANSWERED.items():
        audit = httpx.get(f"{private_gateway.url}/v1/tandem/egress/{rid}").json()
        assert _leaks(json.dumps(audit)) == [], rid
        sent = [r for r in audit.get("data", []) if not r["blocked"]]
        assert (mode == "local_only") == (not sent), rid


def test_audit_is_exactly_what_was_sent(sdk, private_gateway, recording):
    case = scenarios()["context_field"]
    before = len(recording.received)
    _ask(sdk, case, "redact", False, "priv-audit-1")
    bodies = recording.chat_bodies()[-1:]
    assert len(recording.received) == before + 1
    audit = httpx.get(f"{private_gateway.url}/v1/tandem/egress/priv-audit-1").json()
    assert [r["payload"].encode() for r in audit["data"]] == bodies
    assert "<PRIVATE_1>" in audit["data"][0]["payload"] or "<PERSON" in audit["data"][0][
        "payload"]
    missing = httpx.get(f"{private_gateway.url}/v1/tandem/egress/never-seen")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_plain_requests_are_untouched(sdk, recording):
    raw = sdk.chat.completions.with_raw_response.create(
        model="tandem", messages=[{"role": "user", "content": "Say OK."}], max_tokens=4,
        temperature=0)
    assert raw.headers["x-tandem-privacy"] == "none"
    assert raw.headers["x-tandem-route"] == "cloud"


def test_bad_privacy_fields_are_400(sdk):
    for extra, param in [({"private_context": 5}, "private_context"),
                         ({"privacy": "sometimes"}, "privacy")]:
        with pytest.raises(openai.BadRequestError) as err:
            sdk.chat.completions.create(model="tandem", max_tokens=4, extra_body=extra,
                                        messages=[{"role": "user", "content": "hi"}])
        assert err.value.body["param"] == param


@pytest.fixture(scope="module")
def failing_gateway(local_model_path, recording, workdir):
    """Its name detector cannot load its pipeline: detection fails on every request."""
    config = _config(local_model_path, recording.url, mode="redact",
                     detectors=["marked", "pii", "ner"],
                     detector_options={"ner": {"model": "no_such_spacy_pipeline"}})
    server = start_gateway(config, workdir, name="privacy-failing", ready_path="/health")
    _wait_local_loaded(server.url)
    yield server
    server.stop()


def test_failed_detection_blocks_not_forwards(failing_gateway, recording):
    sdk = openai.OpenAI(base_url=failing_gateway.url + "/v1", api_key="x", max_retries=0)
    before = len(recording.received)
    for stream in (False, True):
        with pytest.raises(openai.PermissionDeniedError) as err:
            sdk.chat.completions.create(
                model="cloud", max_tokens=4, stream=stream,
                messages=[{"role": "user", "content": "Plan a trip to Lisbon."}])
        assert err.value.body["code"] == "egress_blocked"
        assert err.value.response.headers["x-tandem-privacy"] == "blocked"
        assert "detection failed" in err.value.body["message"]
    assert len(recording.received) == before
    # A local model may still answer: nothing leaves the machine.
    ok = sdk.chat.completions.create(model="local", max_tokens=4,
                                     messages=[{"role": "user", "content": "Say hi."}])
    assert ok.choices[0].message.content
    metrics = httpx.get(failing_gateway.url + "/metrics").text
    assert 'tandem_egress_blocks_total{reason="detection_failed"} 2.0' in metrics


def test_a_gateway_without_a_local_model_redacts_names_instead_of_refusing(recording,
                                                                          workdir):
    """No local model and no `privacy.mode`: a request naming someone is answered with
    placeholders (the cloud never sees the name, the answer gets it back), not a 403."""
    config = {"models": {"cloud": {"backend": "openai", "base_url": recording.url,
                                   "model": "qwen-cloud", "max_retries": 0}},
              "routing": {"default": "cloud"}}
    server = start_gateway(config, workdir, name="privacy-cloud-only", ready_path="/health")
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0,
                               timeout=300)
        before = len(recording.received)
        raw = client.chat.completions.with_raw_response.create(
            model="cloud", max_tokens=8, temperature=0, messages=[{
                "role": "user", "content": f"write to my colleague {CANARY['first']} "
                                           f"{CANARY['last']} about lunch"}])
        assert raw.headers["x-tandem-privacy"] == "redact"
        assert raw.parse().choices[0].message is not None
        sent = b"".join(recording.received[before:]).decode("utf-8", "replace").lower()
        assert sent and CANARY["first"].lower() not in sent
        assert CANARY["last"].lower() not in sent
    finally:
        server.stop()
