"""POST /v1/embeddings through a real gateway with the official SDK: the local GGUF
embedded in-process (checked against llama-cpp-python's own mean-pooled embedding of
the same model), a real llama_cpp.server as the cloud (passed through, through the
egress guard), formats, dimensions, every bad input, privacy, and chat streams that
keep flowing while an embedding runs."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time

import httpx
import numpy as np
import openai
import pytest
from llama_cpp import Llama

from tests.support.servers import start_gateway, start_llama_cpp_server

N_CTX = 512  # the local model's window: the longest input it embeds
N_EMBD = 896  # Qwen2.5-0.5B's hidden size
TEXTS = ["reverse a list in python", "sort a dictionary by its values",
         "the weather in spring is mild and rainy"]


@pytest.fixture(scope="module")
def embed_cloud(local_model_path, tmp_path_factory):
    """llama_cpp.server serves /v1/embeddings only with --embedding; the GGUF names no
    pooling, so it would return one vector per token: mean pooling, as the gateway's."""
    server = start_llama_cpp_server(
        local_model_path, tmp_path_factory.mktemp("embed-cloud"), alias="qwen-embed",
        extra_args=("--embedding", "True", "--kv_overrides", "qwen2.pooling_type=int:1"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gw(local_model_path, embed_cloud, tmp_path_factory):
    local = {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": N_CTX,
             "parallel": 2}
    config = {
        "models": {
            "local": local,
            "cloud": {"backend": "openai", "base_url": embed_cloud.url + "/v1",
                      "model": "qwen-embed", "max_retries": 0},
            "tuned": {"backend": "proxy_tuning", "base": "local", "expert": "local",
                      "anti_expert": "local", "n_ctx": 256, "parallel": 1},
        },
        "routing": {"default": "local", "aliases": {"fast": "local"},
                    "strong": "cloud", "weak": "local"},
    }
    server = start_gateway(config, tmp_path_factory.mktemp("embed-gw"), name="embeddings")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sdk(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def vocab(local_model_path) -> Llama:
    return Llama(str(local_model_path), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def reference(local_model_path) -> Llama:
    """llama-cpp-python's own embedding path, mean pooling, on the same GGUF."""
    return Llama(str(local_model_path), embedding=True, n_ctx=N_CTX, n_batch=N_CTX,
                 n_ubatch=N_CTX, kv_overrides={"qwen2.pooling_type": 1}, verbose=False)


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float64)


def test_one_string_is_one_unit_vector_equal_to_llama_cpp_python(sdk, reference):
    out = sdk.embeddings.create(model="local", input=TEXTS[0])
    assert out.object == "list" and out.model == "local"
    assert len(out.data) == 1 and out.data[0].object == "embedding"
    v = vectors(out)[0]
    assert v.shape == (N_EMBD,)
    assert abs(np.linalg.norm(v) - 1) < 1e-5
    tokens = len(reference.tokenize(TEXTS[0].encode()))
    assert out.usage.prompt_tokens == out.usage.total_tokens == tokens
    ref = unit(reference.embed(TEXTS[0]))
    assert float(v @ ref) > 0.999  # same model, same pooling; kernels differ a little


def test_a_list_keeps_order_same_text_same_vector_different_texts_differ(sdk):
    out = sdk.embeddings.create(model="local", input=[TEXTS[0], TEXTS[1], TEXTS[0], TEXTS[2]])
    v = vectors(out)
    assert v.shape == (4, N_EMBD)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert float(v[0] @ v[2]) > 0.9999
    for i, j in [(0, 1), (0, 3), (1, 3)]:
        assert float(v[i] @ v[j]) < 0.9, (i, j)
    alone = vectors(sdk.embeddings.create(model="local", input=TEXTS[1]))[0]
    assert float(alone @ v[1]) > 0.9999  # batched with others or alone: the same vector


def test_token_ids_embed_as_their_text(sdk, vocab):
    ids = [vocab.tokenize(t.encode(), add_bos=True, special=False) for t in TEXTS[:2]]
    text = vectors(sdk.embeddings.create(model="local", input=TEXTS[:2]))
    one = vectors(sdk.embeddings.create(model="local", input=ids[0]))
    many = sdk.embeddings.create(model="local", input=ids)
    assert many.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    assert float(one[0] @ text[0]) > 0.9999
    assert np.all(np.sum(vectors(many) * text, axis=1) > 0.9999)


def test_base64_is_little_endian_float32_and_the_sdk_default_decodes_it(sdk):
    floats = sdk.embeddings.create(model="local", input=TEXTS[:2], encoding_format="float")
    b64 = sdk.embeddings.create(model="local", input=TEXTS[:2], encoding_format="base64")
    default = sdk.embeddings.create(model="local", input=TEXTS[:2])  # the SDK asks base64
    for f, b, d in zip(floats.data, b64.data, default.data):
        assert isinstance(b.embedding, str)
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        assert decoded.shape == (N_EMBD,)
        assert np.allclose(decoded, f.embedding, atol=1e-6)
        assert np.allclose(d.embedding, f.embedding, atol=1e-6)


def test_dimensions_truncate_and_renormalise(sdk):
    full = vectors(sdk.embeddings.create(model="local", input=TEXTS[:2]))
    for dims in (1, 64, N_EMBD):
        out = vectors(sdk.embeddings.create(model="local", input=TEXTS[:2], dimensions=dims))
        assert out.shape == (2, dims)
        assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
        expected = full[:, :dims] / np.linalg.norm(full[:, :dims], axis=1, keepdims=True)
        assert np.allclose(out, expected, atol=1e-4)


def test_tandem_and_aliases_embed_with_the_default_model(sdk):
    local = vectors(sdk.embeddings.create(model="local", input=TEXTS[0]))[0]
    for name in ("tandem", "fast"):
        raw = sdk.embeddings.with_raw_response.create(model=name, input=TEXTS[0])
        assert raw.headers["x-tandem-route"] == "local"
        out = raw.parse()
        assert out.model == "local"
        assert float(vectors(out)[0] @ local) > 0.9999


BAD = [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["ok", ""]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": [[1, 2], []]}, "input"),
    ({"input": ["text", 5]}, "input"),
    ({"input": [1, "text"]}, "input"),
    ({"input": [[1], "text"]}, "input"),
    ({"input": [-1, 2]}, "input"),
    ({"input": [1.5]}, "input"),
    ({"input": [True]}, "input"),
    ({"input": 7}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": [10**7]}, "input"),  # outside the vocabulary
    ({"input": list(range(1, N_CTX + 2))}, "input"),  # one token over the window
    ({"input": "word " * (N_CTX + 10)}, "input"),
    ({"input": ["short", "word " * (N_CTX + 10)]}, "input"),
    ({"encoding_format": "hex"}, "encoding_format"),
    ({"encoding_format": 1}, "encoding_format"),
    ({"dimensions": 0}, "dimensions"),
    ({"dimensions": -3}, "dimensions"),
    ({"dimensions": "8"}, "dimensions"),
    ({"dimensions": N_EMBD + 1}, "dimensions"),
    ({"model": ""}, "model"),
    ({"model": None}, "model"),
    ({"model": "tuned"}, "model"),  # proxy-tuning cannot embed
    ({"model": "router-random-0.5"}, "model"),
]


@pytest.mark.parametrize("change,param", BAD, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD)])
def test_bad_input_is_a_400_naming_the_field(gw, change, param):
    body = {"model": "local", "input": "hello", **change}
    r = httpx.post(gw.url + "/v1/embeddings", json=body, timeout=120)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err
    assert err["message"] and "Traceback" not in r.text


def test_missing_fields_and_broken_json_are_400(gw):
    for body, param in [({"input": "x"}, "model"), ({"model": "local"}, "input")]:
        r = httpx.post(gw.url + "/v1/embeddings", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = httpx.post(gw.url + "/v1/embeddings", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_over_long_input_says_why_and_is_not_truncated(sdk):
    with pytest.raises(openai.BadRequestError) as err:
        sdk.embeddings.create(model="local", input=["fine", "word " * (N_CTX + 10)])
    body = err.value.body
    assert body["param"] == "input" and body["code"] == "context_length_exceeded"
    assert "input[1]" in body["message"] and f"at most {N_CTX} tokens" in body["message"]


def test_unknown_model_is_404(sdk):
    with pytest.raises(openai.NotFoundError) as err:
        sdk.embeddings.create(model="no-such-model", input="hello")
    assert err.value.body["code"] == "model_not_found"


def test_cloud_is_passed_through_and_agrees_with_the_local_model(sdk, gw):
    raw = sdk.embeddings.with_raw_response.create(
        model="cloud", input=TEXTS, encoding_format="float", dimensions=8,
        extra_headers={"x-request-id": "emb-cloud-1"})
    assert raw.headers["x-tandem-route"] == "cloud"
    out = raw.parse()
    assert out.model == "cloud" and out.usage.prompt_tokens > 0
    cloud = np.array([unit(v) for v in vectors(out)])
    # llama_cpp.server ignores dimensions and does not normalise: the vectors are its own
    assert cloud.shape == (3, N_EMBD)
    local = vectors(sdk.embeddings.create(model="local", input=TEXTS))
    assert np.all(np.sum(cloud * local, axis=1) > 0.999)
    audit = httpx.get(gw.url + "/v1/tandem/egress/emb-cloud-1").json()["data"]
    assert len(audit) == 1 and audit[0]["url"].endswith("/v1/embeddings")
    sent = json.loads(audit[0]["payload"])
    assert sent == {"model": "qwen-embed", "input": TEXTS, "dimensions": 8,
                    "encoding_format": "float"}


def test_cloud_floats_become_base64_when_asked(sdk):
    floats = sdk.embeddings.create(model="cloud", input=TEXTS[:2], encoding_format="float")
    b64 = sdk.embeddings.create(model="cloud", input=TEXTS[:2], encoding_format="base64")
    default = sdk.embeddings.create(model="cloud", input=TEXTS[:2])
    for f, b, d in zip(floats.data, b64.data, default.data):
        decoded = np.frombuffer(base64.b64decode(b.embedding), dtype="<f4")
        assert np.allclose(decoded, f.embedding, rtol=1e-5, atol=1e-6)
        assert np.allclose(d.embedding, f.embedding, rtol=1e-5, atol=1e-6)


def test_private_input_never_leaves_for_the_cloud(sdk, gw):
    private = "send the invoice to dana.whitfield@example.org today"
    with pytest.raises(openai.PermissionDeniedError) as err:
        sdk.embeddings.create(model="cloud", input=[TEXTS[0], private],
                              extra_headers={"x-request-id": "emb-private-1"})
    assert err.value.body["code"] == "egress_blocked"
    assert "local model" in err.value.body["message"]
    assert "dana" not in err.value.body["message"].lower()
    audit = httpx.get(gw.url + "/v1/tandem/egress/emb-private-1").json()["data"]
    assert [r["payload"] for r in audit] == [None]  # blocked: nothing was sent
    assert len(sdk.embeddings.create(model="local", input=private).data) == 1


def test_marked_private_context_is_checked_and_never_forwarded(sdk, gw):
    secret = "my neighbour vesna korlat"
    with pytest.raises(openai.PermissionDeniedError):
        sdk.embeddings.create(model="cloud", input=f"a note for {secret}",
                              extra_body={"private_context": secret})
    out = sdk.embeddings.create(model="cloud", input=TEXTS[0],
                                extra_body={"private_context": secret},
                                extra_headers={"x-request-id": "emb-private-2"})
    assert len(out.data) == 1  # the input holds nothing private: it may go
    payload = httpx.get(gw.url + "/v1/tandem/egress/emb-private-2").json()["data"][0]["payload"]
    assert "private_context" not in payload and "vesna" not in payload.lower()


def test_concurrent_embeddings_take_turns_and_agree(sdk):
    alone = vectors(sdk.embeddings.create(model="local", input=TEXTS))
    results: list = [None] * 4

    def run(i: int) -> None:
        results[i] = vectors(sdk.embeddings.create(model="local", input=TEXTS))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for got in results:
        assert got is not None and np.all(np.sum(got * alone, axis=1) > 0.9999)


def test_a_chat_stream_keeps_flowing_while_an_embedding_runs(sdk):
    arrivals: list[float] = []
    first = threading.Event()

    def chat() -> None:
        stream = sdk.chat.completions.create(
            model="local", stream=True, max_tokens=300, temperature=0,
            messages=[{"role": "user", "content": "Write a long story about a lighthouse."}])
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
                first.set()

    thread = threading.Thread(target=chat)
    thread.start()
    assert first.wait(120)
    long_inputs = [f"{TEXTS[i % 3]} " * 20 for i in range(8)]  # ~ 8 x 120 tokens
    started = time.monotonic()
    out = sdk.embeddings.create(model="local", input=long_inputs)
    ended = time.monotonic()
    thread.join(300)
    assert len(out.data) == 8
    during = [t for t in arrivals if started + 0.05 < t < ended - 0.05]
    assert ended - started > 0.5, "the embedding was too quick to tell anything"
    assert len(during) >= 3, (len(during), ended - started, len(arrivals))


def test_a_caller_that_leaves_stops_its_embedding(gw, sdk):
    # 2,048 inputs of ~250 tokens: minutes of work even for a fast CPU
    huge = {"model": "local", "input": [f"{TEXTS[i % 3]} " * 45 for i in range(2048)]}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/embeddings", json=huge, timeout=httpx.Timeout(30, read=3))
    started = time.monotonic()
    out = sdk.embeddings.create(model="local", input=TEXTS[0])  # queued behind it
    assert len(out.data) == 1
    assert time.monotonic() - started < 60  # the big job stopped at its next decode


def test_weights_released_during_a_job_are_freed_after_it(local_model_path):
    """A client closed (its weights released) while an embedding decodes: the job pinned
    the weights, so it finishes on them, and its own release frees them and the context."""
    from clients.errors import UpstreamError
    from clients.llama_cpp import weights
    from clients.llama_cpp.embeddings import embedder_for

    path = str(local_model_path)
    llm = weights.acquire(path, 2, 0)
    embedder = embedder_for(llm, None, N_CTX, 2)

    async def main():
        job = asyncio.ensure_future(embedder.embed(["word " * 500] * 3))
        while embedder._ctx is None:  # the job has pinned the weights and started
            await asyncio.sleep(0.01)
        weights.release(llm)  # what the client's close does
        assert weights.is_loaded(path)
        return await job

    vectors, tokens = asyncio.run(main())
    assert vectors.shape == (3, N_EMBD) and tokens > 1000
    assert not weights.is_loaded(path)  # the job's release was the last one
    with pytest.raises(UpstreamError) as err:
        asyncio.run(embedder.embed(["after"]))
    assert err.value.status == 503
    again = weights.acquire(path, 2, 0)
    try:
        assert embedder_for(again, None, N_CTX, 2) is not embedder
    finally:
        weights.release(again)


def test_embedding_requests_are_counted(gw):
    metrics = httpx.get(gw.url + "/metrics").text
    assert 'tandem_embedding_requests_total{route="local",status="200"}' in metrics
    assert 'tandem_embedding_requests_total{route="cloud",status="200"}' in metrics
    assert 'tandem_embedding_requests_total{route="cloud",status="403"}' in metrics
    assert 'tandem_embedding_requests_total{route="none",status="400"}' in metrics
    assert 'tandem_embedding_requests_total{route="local",status="cancelled"}' in metrics
    assert 'tandem_requests_total{model="local",route="local",status="200"}' in metrics


def test_a_chat_only_upstream_is_a_clear_400(client):
    """An upstream without /embeddings (the fault upstream answers 404 there) is the
    caller's wrong model, not a gateway failure."""
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="flaky-solo", input="hello")
    assert err.value.body["code"] == "embeddings_unsupported"
    assert err.value.body["param"] == "model"
