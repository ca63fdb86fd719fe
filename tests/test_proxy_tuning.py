"""Proxy-tuning end to end on tiny GGUF models written by the tests: the scorers' fused
scores equal ``base + alpha * (expert - anti)`` computed independently with plain
llama-cpp-python, greedy decoding through the gateway (official SDK) follows their
argmax token for token, the remote modes agree with the reference against real servers,
and a vocabulary mismatch is refused with a clear message."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest

from clients.proxy_tuning import fusion
from server.config import parse_config
from server.runtime import Runtime
from tests.support.proxy_reference import (
    ALPHA,
    QUESTION,
    Independent,
    tiny_config,
    write_tiny_set,
)
from tests.support.servers import start_gateway, start_llama_cpp_server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def independent(tiny):
    return Independent(tiny)


def test_scorers_fuse_exactly_what_plain_llama_cpp_computes(tiny, independent):
    config = parse_config(tiny_config(tiny, {"pt": {"base": "base"}}))

    async def run() -> None:
        rt = Runtime(config, None, None)
        await rt.start()
        await rt.wait_loaded(60)
        pt = rt.clients["pt"]
        built = await pt._parts()
        parts = built.parts
        sessions = {role: await getattr(parts, role).open()
                    for role in ("base", "expert", "anti")}
        generated: list[int] = []
        for step in range(6):
            rows = {}
            for role, s in sessions.items():
                feed = independent.prompts[role] if step == 0 else generated[-1:]
                rows[role] = (await s.extend(feed))[0].logprobs
            fused = fusion.fused_full(rows["base"], rows["expert"], rows["anti"], ALPHA)
            expected = independent.fused(generated)
            assert fused.shape == expected.shape == (tiny["expert"].n_vocab,)  # pad rows cut
            np.testing.assert_allclose(fused, expected, atol=2e-4)
            generated.append(int(np.argmax(expected)))
        for s in sessions.values():
            await s.close()
        await rt.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def tiny_gateway(tiny, tmp_path_factory):
    config = tiny_config(tiny, {"pt": {"base": "base"}, "pt-spec-local":
                                {"base": "base", "mode": "speculative"}})
    server = start_gateway(config, tmp_path_factory.mktemp("gw"), name="tiny-gateway")
    yield server
    server.stop()


def sdk(server, timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=timeout)


def ask(client: openai.OpenAI, model: str, **kw):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": QUESTION}], temperature=0, **kw)


def test_greedy_through_the_gateway_follows_the_fused_argmax(tiny_gateway, independent):
    tokens, reason = independent.greedy(40)
    resp = ask(sdk(tiny_gateway), "pt", max_tokens=40)
    choice = resp.choices[0]
    assert choice.message.content == independent.text(tokens)
    assert choice.finish_reason == reason
    assert resp.usage.completion_tokens == len(tokens)
    assert resp.model == "pt"


def test_streaming_stop_and_listing(tiny_gateway, independent):
    client = sdk(tiny_gateway)
    whole = ask(client, "pt", max_tokens=30).choices[0].message.content
    chunks = list(ask(client, "pt", max_tokens=30, stream=True,
                      stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len(whole) > 8
    stop = whole[len(whole) // 2: len(whole) // 2 + 3]
    cut = ask(client, "pt", max_tokens=30, stop=[stop]).choices[0]
    assert cut.message.content == whole[: whole.index(stop)]
    assert cut.finish_reason == "stop"
    assert "pt" in [m.id for m in client.models.list().data]


def test_local_speculative_schedule_gives_the_same_tokens(tiny_gateway):
    client = sdk(tiny_gateway)
    a = ask(client, "pt", max_tokens=40).choices[0].message.content
    b = ask(client, "pt-spec-local", max_tokens=40).choices[0].message.content
    assert a == b


def test_unsupported_options_are_clear_400s(tiny_gateway):
    client = sdk(tiny_gateway)
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "pt", n=2)
    assert "n must be 1" in err.value.message
    with pytest.raises(openai.BadRequestError):
        ask(client, "pt", tools=[{"type": "function", "function": {"name": "f",
                                                                    "parameters": {}}}])


def test_vocabulary_mismatch_is_refused_with_a_clear_message(tiny, tmp_path_factory):
    config = tiny_config(tiny, {"bad": {"base": "base"}},
                         extra_models={"alt": {"backend": "llama_cpp", "n_ctx": 512,
                                               "model": str(tiny["alt"].path)}})
    config["models"]["bad"]["anti_expert"] = "alt"
    server = start_gateway(config, tmp_path_factory.mktemp("bad"), name="mismatch",
                           ready_path="/health")
    try:
        detail = ""
        for _ in range(100):
            state = httpx.get(server.url + "/ready", timeout=5).json()
            detail = state["models"]["bad"]["detail"]
            if detail != "loading":
                break
            asyncio.run(asyncio.sleep(0.1))
        assert "do not share a vocabulary" in detail and "'alt'" in detail
        with pytest.raises(openai.APIStatusError) as err:
            ask(sdk(server), "bad", max_tokens=4)
        assert err.value.status_code == 503
        assert "do not share a vocabulary" in err.value.message
    finally:
        server.stop()


@pytest.fixture(scope="module")
def remote_gateway(tiny, tmp_path_factory):
    """Gateway whose proxy-tuned models reach the same tiny base in-process and through
    Tandem's own /v1/completions (token ids, prompt_logprobs: what vLLM offers)."""
    tmp = tmp_path_factory.mktemp("remote")
    base_cfg = {"server": {"max_logprobs": -1},
                "models": {"base": {"backend": "llama_cpp", "model": str(tiny["base"].path),
                                    "n_ctx": 512, "n_threads": 1}},
                "routing": {"default": "base"}}
    tandem_base = start_gateway(base_cfg, tmp, name="tiny-base")
    extra = {"tandem-base": {"backend": "openai", "model": "base", "max_retries": 0,
                             "base_url": tandem_base.url + "/v1"}}
    proxies = {"pt": {"base": "base"}}
    for mode in MODES:
        proxies[f"t-{mode}"] = {"base": "tandem-base", "mode": mode, "base_top_k": 3}
    server = start_gateway(tiny_config(tiny, proxies, extra), tmp, name="remote-gateway")
    yield server
    for s in (server, tandem_base):
        s.stop()


MODES = ("reference", "certified", "speculative")


def test_remote_modes_match_the_reference(remote_gateway):
    client = sdk(remote_gateway)
    local = ask(client, "pt", max_tokens=24).choices[0].message.content
    assert len(local) > 8
    for mode in MODES:
        got = ask(client, f"t-{mode}", max_tokens=24).choices[0].message.content
        assert got == local, f"Tandem base, {mode}"


def test_remote_streaming_speculative(remote_gateway):
    client = sdk(remote_gateway)
    whole = ask(client, "t-speculative", max_tokens=24).choices[0].message.content
    chunks = list(ask(client, "t-speculative", max_tokens=24, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole


def test_llama_cpp_server_base_agrees_in_every_mode(tiny, tmp_path_factory):
    """llama-cpp-python's server takes text prompts only (tokens travel detokenized and
    are re-tokenized there) and names tokens by string: the echo dialect."""
    tmp = tmp_path_factory.mktemp("echo")
    base = start_llama_cpp_server(tiny["base"].path, tmp, alias="tiny-base",
                                  extra_args=("--logits_all", "True", "--n_ctx", "512"))
    extra = {"llama-base": {"backend": "openai", "base_url": base.url + "/v1",
                            "model": "tiny-base", "max_retries": 0}}
    proxies = {f"e-{mode}": {"base": "llama-base", "mode": mode, "base_top_k": 3,
                             "scoring_api": "echo"} for mode in MODES}
    server = start_gateway(tiny_config(tiny, proxies, extra), tmp, name="echo-gateway")
    try:
        client = sdk(server, timeout=120)
        answers = [ask(client, f"e-{mode}", max_tokens=6).choices[0].message.content
                   for mode in MODES]
        assert len(answers[0]) > 4
        assert answers[1] == answers[0] and answers[2] == answers[0]
    finally:
        server.stop()
        base.stop()


def test_gemma_base_with_qwen_experts_is_refused(local_model_path):
    """Real checkpoints with different tokenizers (MODELS.md: Gemma 262,144 entries vs
    Qwen 151,936): refused at start-up with both names in the message."""
    from clients.model_store import resolve

    gemma = resolve("gemma-3-270m")
    config = parse_config({
        "models": {
            "qwen": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 512},
            "gemma": {"backend": "llama_cpp", "model": str(gemma), "n_ctx": 512,
                      "chat_template": "{% for m in messages %}{{ m.content }}\n{% endfor %}"},
            "pt": {"backend": "proxy_tuning", "base": "gemma", "expert": "qwen",
                   "anti_expert": "qwen", "n_ctx": 512, "base_template": "plain"},
        },
        "routing": {"default": "qwen"},
    })

    async def run() -> str:
        rt = Runtime(config, None, None)
        await rt.start()
        await rt.wait_loaded(120)
        state = await rt.clients["pt"].readiness()
        await rt.close()
        return state.detail

    detail = asyncio.run(run())
    assert "do not share a vocabulary" in detail
    assert "'qwen'" in detail and "'gemma'" in detail and "262144" in detail


def test_concurrent_requests_beyond_parallel_all_complete(tiny_gateway):
    """More simultaneous requests than `parallel` wait their turn (none dropped, none
    stuck holding half of the scoring slots they need)."""
    expected = ask(sdk(tiny_gateway), "pt", max_tokens=12).choices[0].message.content

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=tiny_gateway.url + "/v1", api_key="unused",
                                    max_retries=0, timeout=120)
        calls = [client.chat.completions.create(
            model="pt", messages=[{"role": "user", "content": QUESTION}], temperature=0,
            max_tokens=12) for _ in range(6)]
        answers = await asyncio.gather(*calls)
        await client.close()
        return [a.choices[0].message.content for a in answers]

    assert asyncio.run(run()) == [expected] * 6
