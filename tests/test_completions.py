"""POST /v1/completions through the real gateway with the official SDK: raw and token-id
prompts, echo and logprobs checked against llama-cpp-python's own ``logits_all`` run
of the same model, vLLM's prompt_logprobs and token-id spelling, streaming, errors."""

from __future__ import annotations

import httpx
import numpy as np
import openai
import pytest

from clients.base import Capabilities, ChatClient, Readiness
from clients.errors import InvalidRequest
from routers.policy import Policy
from server.auth import hash_key
from server.completions import choose_model
from tests.support.logits_reference import SHAPE_TOL, TOL, ids, ref, ref_logprobs  # noqa: F401
from tests.support.servers import start_gateway

PROMPT = "def fibonacci(n):\n    "


def test_text_and_token_id_prompts_complete_alike(client, ref):
    tokens = ids(ref, PROMPT)
    a = client.completions.create(model="local", prompt=PROMPT, max_tokens=6, temperature=0)
    b = client.completions.create(model="local", prompt=tokens, max_tokens=6, temperature=0)
    assert a.object == "text_completion" and a.id.startswith("cmpl-")
    assert a.model == "local" and a.choices[0].finish_reason == "length"
    assert a.choices[0].text and a.choices[0].text == b.choices[0].text
    assert a.usage.prompt_tokens == len(tokens) == b.usage.prompt_tokens
    assert a.usage.completion_tokens == 6
    assert a.usage.total_tokens == len(tokens) + 6


def test_echo_logprobs_equal_log_softmax_of_the_logits(client, ref):
    tokens = ids(ref, PROMPT)
    out = client.completions.create(model="local", prompt=tokens, max_tokens=3,
                                    temperature=0, echo=True, logprobs=3,
                                    extra_body={"return_tokens_as_token_ids": True})
    choice = out.choices[0]
    lp = choice.logprobs
    generated = [int(t.removeprefix("token_id:")) for t in lp.tokens[len(tokens):]]
    assert [int(t.removeprefix("token_id:")) for t in lp.tokens[: len(tokens)]] == tokens
    assert len(generated) == 3
    assert choice.text.startswith(ref.detokenize(tokens).decode())
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # as OpenAI/vLLM
    whole = tokens + generated
    expected = ref_logprobs(ref, tokens, generated)
    for i in range(1, len(whole)):
        assert lp.token_logprobs[i] == pytest.approx(expected[i - 1, whole[i]], abs=TOL)
        top = lp.top_logprobs[i]
        assert 3 <= len(top) <= 4  # the token itself first, then the top 3
        best = np.argsort(-expected[i - 1])[:3]
        for tid in best:
            assert top[f"token_id:{tid}"] == pytest.approx(expected[i - 1, tid], abs=TOL)
    # greedy: every generated token is the argmax of the model's distribution
    for j, tok in enumerate(generated):
        assert expected[len(tokens) - 1 + j].argmax() == tok
    offsets = lp.text_offset
    assert offsets[0] == 0 and offsets == sorted(offsets)


def test_prompt_logprobs_in_vllm_format(client, ref):
    tokens = ids(ref, "The capital of France is")
    out = client.completions.create(model="local", prompt=tokens, max_tokens=1,
                                    temperature=0, extra_body={"prompt_logprobs": 2})
    plp = out.choices[0].prompt_logprobs
    assert len(plp) == len(tokens) and plp[0] is None
    expected = ref_logprobs(ref, tokens)
    for i in range(1, len(tokens)):
        entry = plp[i]
        keys = list(entry)
        assert keys[0] == str(tokens[i])  # the prompt token first, as vLLM
        assert 2 <= len(entry) <= 3
        mine = entry[str(tokens[i])]
        assert set(mine) == {"logprob", "rank", "decoded_token"}
        assert mine["logprob"] == pytest.approx(expected[i - 1, tokens[i]], abs=TOL)
        row, value = expected[i - 1], expected[i - 1, tokens[i]]
        assert (row > value + TOL).sum() + 1 <= mine["rank"] <= (row >= value - TOL).sum()
        assert mine["decoded_token"] == ref.detokenize([tokens[i]]).decode("utf-8", "replace")
        others = [v["rank"] for k, v in entry.items() if k != str(tokens[i])]
        assert sorted(others + [mine["rank"]] * (mine["rank"] <= 2)) == [1, 2]
    assert out.choices[0].logprobs is None


def test_prompt_logprobs_from_scores_only_the_tail(client, ref):
    tokens = ids(ref, "for i in range(10):\n    print(i)\n")
    whole = client.completions.create(model="local", prompt=tokens, max_tokens=1,
                                      temperature=0, extra_body={"prompt_logprobs": 3})
    tail = client.completions.create(
        model="local", prompt=tokens, max_tokens=1, temperature=0,
        extra_body={"prompt_logprobs": 3, "prompt_logprobs_from": len(tokens) - 3})
    a, b = whole.choices[0].prompt_logprobs, tail.choices[0].prompt_logprobs
    assert len(b) == len(tokens) and b[: len(tokens) - 3] == [None] * (len(tokens) - 3)
    for i in range(len(tokens) - 3, len(tokens)):
        assert next(iter(b[i])) == next(iter(a[i])) == str(tokens[i])
        for key in set(a[i]) & set(b[i]):
            # The tail ran as a 4-token batch on cached KV: other kernel shapes.
            assert b[i][key]["logprob"] == pytest.approx(a[i][key]["logprob"], abs=SHAPE_TOL)
    assert tail.choices[0].text == whole.choices[0].text


def test_max_tokens_zero_with_echo_scores_the_prompt_only(client, ref):
    tokens = ids(ref, "x = 1\ny = 2\n")
    out = client.completions.create(model="local", prompt=tokens, max_tokens=0, echo=True,
                                    logprobs=0)
    choice = out.choices[0]
    assert choice.text == ref.detokenize(tokens).decode()
    assert len(choice.logprobs.tokens) == len(tokens)
    assert out.usage.completion_tokens == 0 and out.usage.prompt_tokens == len(tokens)
    expected = ref_logprobs(ref, tokens)
    got = np.array(choice.logprobs.token_logprobs[1:], dtype=np.float64)
    want = np.array([expected[i - 1, tokens[i]] for i in range(1, len(tokens))])
    assert np.abs(got - want).max() < TOL


def test_repeated_prompt_scoring_ignores_the_prefix_cache(client, ref):
    """The same prompt twice (the second could reuse cached KV, which has no logits)
    must score every position both times, identically."""
    tokens = ids(ref, "import numpy as np\nimport")
    client.completions.create(model="local", prompt=tokens, max_tokens=2, temperature=0)
    runs = [client.completions.create(model="local", prompt=tokens, max_tokens=0, echo=True,
                                      logprobs=1).choices[0].logprobs.token_logprobs
            for _ in range(2)]
    assert runs[0][0] is None and None not in runs[0][1:]
    assert runs[0][1:] == pytest.approx(runs[1][1:], abs=1e-4)


def test_batch_prompts_and_n(client):
    out = client.completions.create(model="local", prompt=["1, 2, 3,", "a, b, c,"], n=2,
                                    max_tokens=3, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.choices[0].text == out.choices[1].text != out.choices[2].text
    assert out.usage.completion_tokens == 12


def test_stream_matches_non_stream_with_usage(client):
    whole = client.completions.create(model="local", prompt=PROMPT, max_tokens=5,
                                      temperature=0, logprobs=1)
    chunks = list(client.completions.create(model="local", prompt=PROMPT, max_tokens=5,
                                            temperature=0, logprobs=1, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    streamed = [lp for c in chunks if c.choices and c.choices[0].logprobs
                for lp in c.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(whole.choices[0].logprobs.token_logprobs, abs=1e-4)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_with_echo_sends_the_prompt_first(client):
    chunks = list(client.completions.create(model="local", prompt="2 + 2 =", max_tokens=2,
                                            temperature=0, echo=True, stream=True))
    assert chunks[0].choices[0].text == "2 + 2 ="
    assert all(c.usage is None for c in chunks)


def test_cloud_model_is_passed_through(client):
    out = client.completions.create(model="cloud", prompt="def add(a, b):", max_tokens=4,
                                    temperature=0)
    assert out.model == "cloud" and out.choices[0].text
    assert out.usage.completion_tokens > 0


@pytest.mark.parametrize("body, status, param, code", [
    ({"prompt": [1, 2, 10**7]}, 400, "prompt", None),
    ({"prompt": "hi " * 3000}, 400, "prompt", "context_length_exceeded"),
    ({"prompt": "hi", "max_tokens": 4000}, 400, "prompt", "context_length_exceeded"),
    ({"prompt": 123}, 400, "prompt", None),
    ({"prompt": [1, "a"]}, 400, "prompt", None),
    ({"prompt": ""}, 400, "prompt", None),
    ({"prompt": []}, 400, "prompt", None),
    ({"prompt": [-1]}, 400, "prompt", None),
    ({"prompt": "hi", "logprobs": 21}, 400, "logprobs", None),
    ({"prompt": "hi", "prompt_logprobs": -1}, 400, "prompt_logprobs", None),
    ({"prompt": "hi", "prompt_logprobs_from": -1}, 400, "prompt_logprobs_from", None),
    ({"prompt": "hi", "logprobs": True}, 400, "logprobs", None),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens", None),
    ({"prompt": "hi", "prompt_logprobs": 1, "stream": True}, 400, "prompt_logprobs", None),
    ({"prompt": "hi", "suffix": "x"}, 400, "suffix", None),
    ({"prompt": "hi", "model": "nope"}, 404, "model", "model_not_found"),
    ({"prompt": "hi", "model": "down"}, 503, None, None),
])
def test_errors_are_openai_objects(gateway, body, status, param, code):
    payload = {"model": "local", "max_tokens": 2, **body}
    r = httpx.post(gateway.url + "/v1/completions", json=payload, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert r.headers.get("x-request-id")


def test_malformed_json_and_sdk_errors(gateway, client):
    r = httpx.post(gateway.url + "/v1/completions", content=b"{nope",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="local", prompt=[5, 151936 * 10], max_tokens=1)
    big = httpx.post(gateway.url + "/v1/completions",
                     json={"model": "local", "prompt": "x" * 300_000})
    assert big.status_code == 413


def test_stop_and_seed(client):
    stopped = client.completions.create(model="local", prompt="1, 2, 3, 4,", max_tokens=12,
                                        temperature=0, stop=[","])
    assert stopped.choices[0].finish_reason == "stop" and "," not in stopped.choices[0].text
    a, b = (client.completions.create(model="local", prompt="Once upon a time", max_tokens=8,
                                      temperature=1.0, seed=7) for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


KEY = "sk-completions-test"


@pytest.fixture(scope="module")
def open_gateway(local_model_path, workdir):
    """A gateway allowing whole-vocabulary logprobs (server.max_logprobs: -1), with a key
    that may use 'tandem' only."""
    config = {"server": {"max_logprobs": -1},
              "models": {"local": {"backend": "llama_cpp", "model": str(local_model_path),
                                   "n_ctx": 512, "parallel": 2}},
              "routing": {"default": "local"},
              "auth": {"keys": [{"name": "scorer", "key_sha256": hash_key(KEY),
                                 "models": ["tandem"]}]},
              "state": {"sqlite_path": str(workdir / "completions-state.sqlite")}}
    server = start_gateway(config, workdir, name="gateway-full-vocab")
    yield server
    server.stop()


def test_keys_and_metrics_apply(open_gateway):
    url = open_gateway.url + "/v1/completions"
    body = {"model": "tandem", "prompt": "hi", "max_tokens": 1}
    assert httpx.post(url, json=body).status_code == 401
    denied = httpx.post(url, json={**body, "model": "local"},
                        headers={"authorization": f"Bearer {KEY}"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "model_not_allowed"
    ok = httpx.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert ok.status_code == 200 and ok.headers["x-tandem-route"] == "local"
    metrics = httpx.get(open_gateway.url + "/metrics").text
    assert 'tandem_requests_total{model="tandem",route="local",status="200"}' in metrics


def test_whole_vocabulary_prompt_logprobs(open_gateway, ref):
    tokens = ids(ref, "Hello world")
    r = httpx.post(open_gateway.url + "/v1/completions", timeout=120,
                   headers={"authorization": f"Bearer {KEY}"}, json={
        "model": "tandem", "prompt": tokens, "max_tokens": 1, "prompt_logprobs": -1,
        "logprobs": -1, "temperature": 0, "return_tokens_as_token_ids": True})
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    n_vocab = ref.n_vocab()
    expected = ref_logprobs(ref, tokens)
    for i in range(1, len(tokens)):
        entry = choice["prompt_logprobs"][i]
        assert len(entry) == n_vocab
        got = np.array([entry[str(t)]["logprob"] for t in range(n_vocab)])
        assert np.logaddexp.reduce(got) == pytest.approx(0.0, abs=1e-3)  # a distribution
        assert np.abs(got - expected[i - 1]).max() < TOL
    top = choice["logprobs"]["top_logprobs"][0]
    assert len(top) == n_vocab and all(k.startswith("token_id:") for k in top)


class _ChatOnly(ChatClient):
    """A client that declares no completions (as composite clients do)."""

    capabilities = Capabilities()

    async def readiness(self) -> Readiness:
        return Readiness(True, "")

    async def chat(self, body: dict) -> dict:
        raise NotImplementedError

    def chat_stream(self, body: dict):
        raise NotImplementedError


class _Runtime:
    def __init__(self) -> None:
        self.clients = {"mixer": _ChatOnly("mixer"), "weak": _ChatOnly("weak")}
        self.policy = Policy(list(self.clients), "mixer", [], routers={"random": object()},
                             strong="mixer", weak="weak")


@pytest.mark.parametrize("model, message", [
    ("mixer", "cannot serve /v1/completions"),
    ("tandem", "cannot serve /v1/completions"),  # the default model, here chat-only
    ("router-random-0.5", "names a router"),
])
def test_models_that_cannot_complete_are_a_clear_400(model, message):
    with pytest.raises(InvalidRequest) as err:
        choose_model(_Runtime(), model)
    assert err.value.status == 400 and message in err.value.message
    assert err.value.param == "model"
