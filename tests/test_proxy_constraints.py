"""response_format and logprobs on proxy-tuned models (tiny models written here).

The JSON constraint masks the *fused* distribution: every answer parses and follows the
schema, greedy and sampled, with a local base and with a remote top-k base (the mask
enters the certificate's bound). Logprobs are the fused distribution's: each token's
logprob equals log_softmax(base + alpha * (expert - anti)) computed independently with
plain llama-cpp-python, and the chosen token is the best of its top_logprobs.
"""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest

from clients.scoring import log_softmax
from tests.support.proxy_reference import QUESTION, Independent, tiny_config, write_tiny_set
from tests.support.servers import start_gateway

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["answer", "count"],
          "properties": {"answer": {"enum": ["yes", "no", "maybe"]},
                         "count": {"type": "integer", "minimum": 0, "maximum": 99}}}
FORMAT = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("tiny-constraints"))


@pytest.fixture(scope="module")
def gateway(tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("constraints")
    base = start_gateway({"server": {"max_logprobs": -1},
                          "models": {"base": {"backend": "llama_cpp", "n_ctx": 512,
                                              "n_threads": 1,
                                              "model": str(tiny["base"].path)}},
                          "routing": {"default": "base"}}, tmp, name="constraint-base")
    extra = {"remote": {"backend": "openai", "model": "base", "max_retries": 0,
                        "base_url": base.url + "/v1"}}
    proxies = {"pt": {"base": "base"},
               "pt-certified": {"base": "remote", "mode": "certified", "base_top_k": 3},
               "pt-speculative": {"base": "remote", "mode": "speculative", "base_top_k": 3}}
    server = start_gateway(tiny_config(tiny, proxies, extra), tmp, name="constraint-gw")
    yield server
    server.stop()
    base.stop()


def _ask(server, model: str, **kw):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                           timeout=120)
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], **kw)


def _follows_schema(text: str) -> dict:
    value = json.loads(text)
    assert set(value) == {"answer", "count"}, value
    assert value["answer"] in ("yes", "no", "maybe")
    assert isinstance(value["count"], int) and 0 <= value["count"] <= 99
    return value


def test_unconstrained_tiny_models_do_not_write_json(gateway):
    text = _ask(gateway, "pt", temperature=0, max_tokens=40).choices[0].message.content
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("model", ["pt", "pt-certified", "pt-speculative"])
def test_greedy_json_schema_answers_parse_and_agree_across_modes(gateway, model):
    reference = _ask(gateway, "pt", temperature=0, max_tokens=80, response_format=FORMAT)
    got = _ask(gateway, model, temperature=0, max_tokens=80, response_format=FORMAT)
    _follows_schema(got.choices[0].message.content)
    assert got.choices[0].finish_reason == "stop"
    assert got.choices[0].message.content == reference.choices[0].message.content


@pytest.mark.parametrize("model", ["pt", "pt-certified"])
def test_sampled_json_schema_answers_parse(gateway, model):
    values = [_follows_schema(_ask(gateway, model, temperature=1.0, seed=seed,
                                   max_tokens=80, response_format=FORMAT)
                              .choices[0].message.content) for seed in range(4)]
    assert len({json.dumps(v) for v in values}) > 1  # sampled, not one fixed answer


def test_json_object_is_an_object(gateway):
    """Free-form JSON: a tiny random model may ramble inside a string until max_tokens
    (as any engine's would), but what it writes is an object from the first byte, and
    an answer it ends itself parses."""
    for seed in range(3):
        r = _ask(gateway, "pt", temperature=1.0, seed=seed, max_tokens=60,
                 response_format={"type": "json_object"})
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text.lstrip().startswith("{")
        if reason == "stop":
            assert isinstance(json.loads(text), dict)


def test_streamed_json_is_the_same_json(gateway):
    whole = _ask(gateway, "pt", temperature=0, max_tokens=80, response_format=FORMAT)
    chunks = list(_ask(gateway, "pt", temperature=0, max_tokens=80, response_format=FORMAT,
                       stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content


def test_bad_schema_is_a_clear_400(gateway):
    with pytest.raises(openai.BadRequestError) as err:
        _ask(gateway, "pt", max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}})
    assert err.value.body["param"] == "response_format"


def test_logprobs_are_the_fused_distribution(gateway, tiny):
    independent = Independent(tiny)
    r = _ask(gateway, "pt", temperature=0, max_tokens=6, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 6
    generated: list[int] = []
    for entry in entries:
        fused = log_softmax(independent.fused(generated))
        token = int(np.argmax(fused))
        assert entry.token == independent.text([token])
        assert abs(entry.logprob - float(fused[token])) < 1e-3
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)
        assert entry.top_logprobs[1].logprob <= entry.logprob
        generated.append(token)
    streamed = list(_ask(gateway, "pt", temperature=0, max_tokens=6, logprobs=True,
                         stream=True))
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content]
    assert tokens == [e.token for e in entries]
