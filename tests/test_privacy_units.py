"""Privacy without a network: detectors, normal forms, the egress guard, placeholders and
their restoration at every chunk boundary, and the single outbound choke point."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import orjson
import pytest

from clients.base import Capabilities, ChatClient, Readiness
from clients.errors import InvalidRequest
from clients.private import RedactClient
from privacy.analysis import Analyzer
from privacy.audit import AuditStore, EgressRecord
from privacy.detectors import Detector, PatternDetector, Texts, build_detector
from privacy.guard import EgressBlocked, EgressState, activate, check_egress
from privacy.overlap import ContextIndex
from privacy.redact import Redactor, json_escape
from privacy.spans import Span, normalise

ROOT = Path(__file__).resolve().parents[1]


def kinds(text: str) -> dict[str, str]:
    return {s.text: s.kind for s in PatternDetector().detect(Texts([], [text]))}


@pytest.mark.parametrize("text,kind,value", [
    ("write to ana.b+x@mail.example.org today", "EMAIL", "ana.b+x@mail.example.org"),
    ("call +44 20 7946 0958 now", "PHONE", "+44 20 7946 0958"),
    ("call (555) 010-4477 now", "PHONE", "(555) 010-4477"),
    ("card 4111-1111-1111-1111 exp", "CARD", "4111-1111-1111-1111"),
    ("IBAN DE89 3704 0044 0532 0130 00 ok", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("ssn 123-45-6789.", "NATIONAL_ID", "123-45-6789"),
    ("NI number AB 12 34 56 C", "NATIONAL_ID", "AB 12 34 56 C"),
    ("passport number X1234567 please", "NATIONAL_ID", "X1234567"),
    ("ssh to 192.168.7.21 please", "IP_ADDRESS", "192.168.7.21"),
    ("host 2001:db8::8a2e:370:7334 up", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ("key sk-proj-abcDEF1234567890xyz here", "SECRET", "sk-proj-abcDEF1234567890xyz"),
    ("aws AKIAIOSFODNN7EXAMPLE", "SECRET", "AKIAIOSFODNN7EXAMPLE"),
    ("password: hunter2hunter", "SECRET", "hunter2hunter"),
    ("I was born on 3 March 1990.", "DATE_OF_BIRTH", "3 March 1990"),
    ("DOB: 1990-03-03", "DATE_OF_BIRTH", "1990-03-03"),
])
def test_pii_found(text, kind, value):
    assert kinds(text).get(value) == kind


@pytest.mark.parametrize("text", [
    "card 4111 1111 1111 1112 fails Luhn",
    "IBAN DE89 3704 0044 0532 0130 01 fails mod 97",
    "connect to 127.0.0.1 or 0.0.0.0",
    "the answer is 1000000007 modulo",
    "version 1.2.3 released on 2024-05-01",
    "def add(a, b): return a + b",
])
def test_pii_not_found(text):
    assert kinds(text) == {}


def test_normal_forms():
    assert normalise("Ｊｏｈｎ\u200b  SMITH\n") == "john smith"
    assert normalise("Ǆ") == normalise("dž")


def test_overlap_rule():
    index = ContextIndex(["My neighbour Vesna Korlat is allergic to peanuts; code 4471."])
    text = "Write a note for Vesna about peanuts and code 4471, allergic to peanuts!"
    shared = [text[a:b] for a, b in index.shared(text)]
    assert shared == ["Vesna", "code 4471, allergic to peanuts"]  # "about peanuts": common
    assert not index.shared("Write a note about the weather")  # stopwords, common words


def state(spans, marked=(), **kw) -> EgressState:
    return EgressState("req-1", list(spans), list(marked), audit=AuditStore(), **kw)


def payload(text: str) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})


@pytest.mark.parametrize("variant", [
    "Call me at 555 010 4477", "call me at 5550104477", "CALL ME AT (555)-010-4477",
    "call\u200b me at 555.010.4477", "ｃａｌｌ me at ５５５０１０４４７７",
])
def test_guard_blocks_normalised_variants(variant):
    s = state([Span("555-010-4477", "PHONE", "pii"), Span("call me at", "PRIVATE", "x")])
    with pytest.raises(EgressBlocked) as err:
        s.check("cloud", "http://x/v1/chat/completions", payload(variant))
    assert err.value.status == 403 and "4477" not in err.value.message


def test_guard_sees_through_json_escapes_and_context_runs():
    s = state([], ["Ingrid Bosvelt keeps her spare key under the blue flowerpot"])
    escaped = b'{"messages":[{"role":"user","content":"\\u0049ngrid Bosvelt"}]}'
    with pytest.raises(EgressBlocked):
        s.check("cloud", "u", escaped)
    with pytest.raises(EgressBlocked):  # a run of the context, not a detected span
        s.check("cloud", "u", payload("it is under the blue flowerpot"))
    s.check("cloud", "u", payload("Write a short poem about spring."))
    records = s.audit.get("req-1", None)
    assert [r.blocked is None for r in records] == [False, False, True]
    assert all("Bosvelt" not in json.dumps(r.to_json()) for r in records)


def test_guard_fails_closed():
    failed = state([], failed="detector 'ner' raised ImportError")
    with pytest.raises(EgressBlocked):
        failed.check("cloud", "u", payload("hello"))
    broken = state([Span("secret words", "PRIVATE", "x")])
    broken._matcher = object()  # the check itself raises
    with pytest.raises(EgressBlocked) as err:
        broken.check("cloud", "u", payload("hello"))
    assert "check failed" in err.value.message


def test_check_egress_uses_the_request_context():
    async def run() -> None:
        activate(state([Span("Vesna Korlat", "PERSON", "ner")]))

        async def child() -> None:  # a task started by the request inherits its state
            check_egress("cloud", "u", payload("hi vesna korlat"))

        await asyncio.create_task(child())

    with pytest.raises(EgressBlocked):
        asyncio.run(run())
    check_egress("cloud", "u", payload("hi vesna korlat"))  # no request: nothing to guard


class Boom(Detector):
    name = "boom"

    def detect(self, texts):
        raise RuntimeError("analyser down")


def test_raising_detector_marks_the_plan_failed():
    plan = Analyzer([build_detector("marked"), Boom()]).analyse(
        {"messages": [{"role": "user", "content": "hi"}]})
    assert plan.failed and plan.private


def test_bad_marks_are_400s():
    analyzer = Analyzer([build_detector("marked")])
    for body, param in [({"messages": [], "private_context": 3}, "private_context"),
                        ({"messages": [{"role": "user", "content": "x", "private": "yes"}]},
                         "messages[0].private"),
                        ({"messages": [], "privacy": 1}, "privacy")]:
        with pytest.raises(InvalidRequest) as err:
            analyzer.analyse(body)
        assert err.value.param == param


def test_unknown_detector_is_refused():
    with pytest.raises(ValueError, match="unknown detector"):
        build_detector("nope")


REDACTOR = Redactor([Span("Vesna Korlat", "PERSON", "ner"), Span("v@k.org", "EMAIL", "pii"),
                     Span('say "hi"', "PRIVATE", "overlap")], ["Vesna Korlat, v@k.org"])
ANSWER = 'Dear <PERSON_1>, mail <EMAIL_1>; PERSON_1 said <PRIVATE_1>. <PERSON_12> <b>'


def test_redact_and_restore():
    assert REDACTOR.redact("hi vesna  korlat at V@K.ORG") == "hi <PERSON_1> at <EMAIL_1>"
    assert "<PERSON_1> (a person)" in REDACTOR.note()
    assert REDACTOR.restore(ANSWER) == ('Dear Vesna Korlat, mail v@k.org; Vesna Korlat said '
                                        'say "hi". <PERSON_12> <b>')


def test_stream_restoration_exact_at_every_split():
    want = REDACTOR.restore(ANSWER)
    for i in range(len(ANSWER) + 1):
        for j in range(i, len(ANSWER) + 1):
            r = REDACTOR.restorer()
            got = r.feed(ANSWER[:i]) + r.feed(ANSWER[i:j]) + r.feed(ANSWER[j:]) + r.flush()
            assert got == want, (i, j)


class Scripted(ChatClient):
    """Yields fixed chunks: only the restoration logic is under test here."""

    def __init__(self, pieces: list[str], args: list[str]) -> None:
        super().__init__("scripted")
        self.pieces, self.args, self.seen = pieces, args, []

    async def readiness(self):
        return Readiness(True, "")

    async def chat(self, body):
        raise NotImplementedError

    async def chat_stream(self, body):
        self.seen.append(body)
        for p in self.pieces:
            yield {"choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
        for a in self.args:
            yield {"choices": [{"index": 0, "delta": {"tool_calls": [
                {"index": 0, "function": {"arguments": a}}]}, "finish_reason": None}]}
        yield {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


def test_redact_client_restores_streams_and_tool_arguments():
    plan = Analyzer([build_detector(n) for n in ("marked", "overlap", "pii")]).analyse({
        "messages": [{"role": "user", "content": "mail ana@x.org the plan"}],
        "private_context": 'Ana\'s note: "quote" ana@x.org'})
    args = '{"to": "<EMAIL_1>"}'
    text = "Sent to <EMAIL_1>."

    async def run(cut: int):
        client = Scripted([text[:cut], text[cut:]], [args[:cut % len(args)],
                                                     args[cut % len(args):]])
        chunks = [c async for c in RedactClient(client, plan).chat_stream({
            "messages": [{"role": "user", "content": "mail ana@x.org the plan"}],
            "private_context": "x"})]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        arguments = "".join(t["function"]["arguments"] for c in chunks
                            for t in c["choices"][0]["delta"].get("tool_calls") or [])
        return client.seen[0], content, arguments

    for cut in range(len(text) + 1):
        sent, content, arguments = asyncio.run(run(cut))
        assert "ana@x.org" not in json.dumps(sent) and "private_context" not in sent
        assert content == "Sent to ana@x.org."
        assert json.loads(arguments) == {"to": "ana@x.org"}
    assert json_escape('a"b') == 'a\\"b'


def test_audit_store_is_bounded():
    store = AuditStore(ttl_s=3600, max_requests=2, max_bytes=10_000)
    for rid in ("a", "b", "c"):
        store.add(rid, "k1", EgressRecord("cloud", "u", 0.0, "x" * 100))
    assert store.get("a", "k1") is None and store.get("c", "k1")
    assert store.get("c", "other-key") is None
    big = AuditStore(max_bytes=1024)
    big.add("a", None, EgressRecord("cloud", "u", 0.0, "x" * 2000))
    assert big.get("a", None) is None


def test_one_outbound_send_path():
    """Every outbound request of the gateway goes through OpenAIClient.post (the guard)."""
    sends = re.compile(r"\.(post|put|patch|request|ws_connect)\(|\bClientSession\(")
    hits = []
    for path in [*ROOT.glob("clients/**/*.py"), *ROOT.glob("server/**/*.py"),
                 *ROOT.glob("privacy/**/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if sends.search(line) and "@app." not in line:
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    allowed = {"self.http.post(url, data=payload)", "self._http = aiohttp.ClientSession(",
               "await self.store.put("}  # the state store (privacy memory), not a network send
    assert [h for h in hits if not any(a in h for a in allowed)
            and ".post(self." not in h and ".post(url" not in h] == []


class Named(Scripted):
    def __init__(self, name: str, local: bool) -> None:
        super().__init__([], [])
        self.name = name
        self.capabilities = Capabilities(local=local)


def _stage(**privacy):
    from privacy.stage import PrivacyStage
    from server.config import PrivacyConfig

    clients = {"cloud": Named("cloud", False), "local": Named("local", True)}
    return PrivacyStage(PrivacyConfig(**privacy), clients)


def _prepare(stage, body):
    return asyncio.run(stage.prepare(body, None, "r1"))


PRIVATE_BODY = {"messages": [{"role": "user", "content": "hi"}], "private_context": "Vesna"}


def test_stage_builds_the_chain_per_mode():
    from clients.private import LocalWithContext, SketchClient

    stage = _stage(mode="redact")
    plain = _prepare(stage, {"messages": [{"role": "user", "content": "hi"}]})
    assert stage.chain(plain, ("cloud",)) == (("cloud",), stage.clients)  # untouched
    chain, clients = stage.chain(_prepare(stage, PRIVATE_BODY), ("cloud",))
    assert chain == ("cloud",) and isinstance(clients["cloud"], RedactClient)
    chain, clients = stage.chain(_prepare(stage, {**PRIVATE_BODY, "privacy": "local_only"}),
                                 ("cloud",))
    assert chain == ("local",) and isinstance(clients["local"], LocalWithContext)
    chain, clients = stage.chain(_prepare(stage, {**PRIVATE_BODY, "privacy": "sketch"}),
                                 ("cloud", "local"))
    assert chain == ("cloud", "local") and isinstance(clients["cloud"], SketchClient)
    with pytest.raises(InvalidRequest):
        _prepare(stage, {**PRIVATE_BODY, "privacy": "sometimes"})


def test_stage_on_failure_local():
    stage = _stage(mode="redact", egress_on_failure="local")
    chain, _ = stage.chain(_prepare(stage, PRIVATE_BODY), ("cloud",))
    assert chain == ("cloud", "local")  # a blocked egress hands over to the local model
    stage.analyzer.detectors.append(Boom())
    failed = _prepare(stage, {"messages": [{"role": "user", "content": "hi"}]})
    assert failed.mode == "local_only" and stage.chain(failed, ("cloud",))[0] == ("local",)


@pytest.mark.parametrize("privacy,needle", [
    ({"mode": "bogus"}, "privacy.mode"), ({"detectors": ["pii", "nope"]}, "unknown detector"),
    ({"egress_on_failure": "maybe"}, "egress_on_failure"),
    ({"local_model": "cloud"}, "privacy.local_model")])
def test_config_refuses_bad_privacy(privacy, needle):
    from server.config import ConfigError, parse_config

    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_config({"models": {"cloud": {"backend": "openai", "base_url": "http://x/v1",
                                           "model": "m"}},
                      "routing": {"default": "cloud"}, "privacy": privacy})


def test_mode_precedence_request_key_config():
    from types import SimpleNamespace

    stage = _stage(mode="redact")
    key = SimpleNamespace(name="app", privacy_mode="sketch")
    assert stage.mode_for(None, None) == "redact"
    assert stage.mode_for(None, key) == "sketch"
    assert stage.mode_for("local_only", key) == "local_only"
    prepared = _prepare(stage, PRIVATE_BODY)
    assert prepared.state.owner is None and prepared.state.audit is stage.audit


def test_ner_detector_finds_names_places_organisations():
    """The opt-in spaCy detector, with the real pipeline (installed by the test extra)."""
    spans = build_detector("ner").detect(Texts(
        [], ["Please write to Angela Merkel in Berlin about the Siemens contract."]))
    found = {s.text: s.kind for s in spans}
    assert found.get("Angela Merkel") == "PERSON"
    assert found.get("Berlin") == "PLACE"
    assert "Siemens" in found


def test_short_numbers_are_not_private_words():
    """'6' in a prompt template is not the '6' of a phone number in the context."""
    s = state([], ["My phone is +33 6 12 34 56 78 and I take it at 7 am in 1990."])
    s.check("cloud", "u", payload("An outline of at most 6 points, by 7."))
    with pytest.raises(EgressBlocked):
        s.check("cloud", "u", payload("born in 1990"))
