"""LoRA adapters on llama.cpp models: a tiny GGUF and a tiny adapter written here.

With the adapter, a model's logits equal those of the same model with ``B @ A`` merged
into its weights; without it, they equal the plain model's; a model and the same file
with an adapter share one copy of the weights; a proxy-tuned model whose expert is the
adapter gives the same answers as one whose expert is the merged file; a missing or
mismatched adapter is a clear error, never a crash.
"""

from __future__ import annotations

import asyncio

import numpy as np
import openai
import pytest

from clients.llama_cpp import weights
from clients.proxy_tuning.expert.lora_gguf import write_lora_gguf
from server.config import parse_config
from server.runtime import Runtime
from tests.support.servers import start_gateway
from tests.support.tiny_gguf import write_tiny_gguf

SEED, N_EMBD, N_FF, N_LAYER = 5, 32, 64, 2
RANK, LORA_ALPHA, LORA_SCALE = 4, 8.0, 0.75
# Hugging Face module -> (llama.cpp tensor, (n_out, n_in))
TARGETS = {
    "model.layers.0.self_attn.q_proj": ("blk.0.attn_q.weight", (N_EMBD, N_EMBD)),
    "model.layers.1.self_attn.v_proj": ("blk.1.attn_v.weight", (N_EMBD, N_EMBD)),
    "model.layers.0.mlp.down_proj": ("blk.0.ffn_down.weight", (N_EMBD, N_FF)),
    "model.layers.1.mlp.up_proj": ("blk.1.ffn_up.weight", (N_FF, N_EMBD)),
}
PROMPT = "hello world what is the answer"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora")
    rng = np.random.default_rng(11)
    pairs, deltas = {}, {}
    for module, (tensor, (n_out, n_in)) in TARGETS.items():
        a = rng.standard_normal((RANK, n_in)).astype(np.float32) * 0.3
        b = rng.standard_normal((n_out, RANK)).astype(np.float32) * 0.3
        pairs[module] = (a, b)
        deltas[tensor] = LORA_SCALE * LORA_ALPHA / RANK * (b @ a)
    tiny = dict(seed=SEED, n_embd=N_EMBD, n_ff=N_FF, n_layer=N_LAYER)
    other = write_tiny_gguf(d / "other.gguf", seed=9, n_embd=48, n_ff=N_FF, n_layer=N_LAYER)
    wrong = {m: (a, b) for m, (a, b) in pairs.items() if "q_proj" in m}
    return {
        "base": write_tiny_gguf(d / "base.gguf", **tiny),
        "merged": write_tiny_gguf(d / "merged.gguf", **tiny, deltas=deltas),
        "lora": write_lora_gguf(d / "adapter.gguf", "llama", N_LAYER, pairs, LORA_ALPHA),
        "other": other,
        "wrong_lora": write_lora_gguf(d / "wrong.gguf", "llama", N_LAYER, wrong, LORA_ALPHA),
        "dir": d,
    }


def config(files, extra: dict | None = None) -> dict:
    local = {"backend": "llama_cpp", "n_ctx": 512, "parallel": 2, "n_threads": 1}
    base = str(files["base"].path)
    return {"models": {
        "plain": {**local, "model": base},
        "expert": {**local, "model": base, "lora": str(files["lora"]),
                   "lora_scale": LORA_SCALE},
        "merged": {**local, "model": str(files["merged"].path)},
        "big": {**local, "model": str(files["other"].path)},
        "pt-lora": {"backend": "proxy_tuning", "base": "big", "expert": "expert",
                    "anti_expert": "plain", "alpha": 1.5, "n_ctx": 512},
        "pt-merged": {"backend": "proxy_tuning", "base": "big", "expert": "merged",
                      "anti_expert": "plain", "alpha": 1.5, "n_ctx": 512},
        **(extra or {}),
    }, "routing": {"default": "plain"}}


async def _rows(client, tokens: list[int], steps: int) -> list[np.ndarray]:
    """Next-token log-probabilities after the prompt and after each greedy step."""
    scorer = await client.token_scorer(512, 2)
    session = await scorer.open()
    rows, feed = [], tokens
    for _ in range(steps):
        row = (await session.extend(feed))[0].logprobs
        rows.append(row.copy())
        feed = [int(np.argmax(row))]
    await session.close()
    return rows


def test_adapter_logits_equal_merged_weights_and_weights_load_once(files):
    async def run() -> None:
        rt = Runtime(parse_config(config(files)), None, None)
        await rt.start()
        await rt.wait_loaded(60)
        plain, expert, merged = (rt.clients[n] for n in ("plain", "expert", "merged"))
        assert plain._model.llm is expert._model.llm  # one copy of base.gguf's weights
        assert merged._model.llm is not plain._model.llm
        prompt = plain.tokenize_text(PROMPT)
        with_lora = await _rows(expert, prompt, 5)
        reference = await _rows(merged, prompt, 5)
        without = await _rows(plain, prompt, 5)
        for a, b in zip(with_lora, reference):
            np.testing.assert_allclose(a, b, atol=1e-4)
        # the adapter moved the logits, and the plain model's context has none of it
        assert max(float(np.abs(a - c).max()) for a, c in zip(with_lora, without)) > 0.1
        from llama_cpp import Llama

        ref = Llama(model_path=str(files["base"].path), n_ctx=512, n_threads=1,
                    logits_all=True, verbose=False)
        ref.eval(prompt)
        expected = np.array(ref.scores[ref.n_tokens - 1])
        expected = expected - (expected.max() + np.log(np.exp(expected - expected.max()).sum()))
        np.testing.assert_allclose(without[0], expected, atol=1e-4)
        ref.close()
        await rt.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def gateway(files):
    server = start_gateway(config(files), files["dir"], name="lora-gateway")
    yield server
    server.stop()


def _sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def test_served_completions_with_the_adapter_equal_the_merged_model(gateway):
    client = _sdk(gateway)

    def complete(model: str):
        return client.completions.create(model=model, prompt=PROMPT, max_tokens=12,
                                         temperature=0, logprobs=3)

    lora, merged, plain = complete("expert"), complete("merged"), complete("plain")
    assert lora.choices[0].text == merged.choices[0].text
    np.testing.assert_allclose(lora.choices[0].logprobs.token_logprobs,
                               merged.choices[0].logprobs.token_logprobs, atol=1e-3)
    assert lora.choices[0].logprobs.token_logprobs != plain.choices[0].logprobs.token_logprobs


def test_proxy_tuned_with_an_adapter_equals_proxy_tuned_with_merged_weights(gateway):
    client = _sdk(gateway)
    messages = [{"role": "user", "content": PROMPT}]
    answers = [client.chat.completions.create(model=m, messages=messages, temperature=0,
                                              max_tokens=24).choices[0].message.content
               for m in ("pt-lora", "pt-merged")]
    assert answers[0] == answers[1] and answers[0]


@pytest.mark.parametrize("lora, says", [
    ("missing.gguf", "does not exist"),
    ("wrong_lora", "refused LoRA adapter"),
])
def test_bad_adapter_is_a_clear_error(files, lora, says):
    path = str(files["dir"] / lora) if lora == "missing.gguf" else str(files[lora])
    cfg = {"models": {"bad": {"backend": "llama_cpp", "model": str(files["other"].path),
                              "n_ctx": 256, "parallel": 1, "n_threads": 1, "lora": path}},
           "routing": {"default": "bad"}}

    async def run() -> None:
        rt = Runtime(parse_config(cfg), None, None)
        await rt.start()
        await rt.wait_loaded(30)
        state = await rt.clients["bad"].readiness()
        assert not state.ready and says in state.detail, state.detail
        await rt.close()
        assert not weights.is_loaded(str(files["other"].path))  # a failed load lets go

    asyncio.run(run())
