"""``backend: gpu_proxy_tuning`` served by a real Tandem process, asked with the openai
SDK: tiny random Llama checkpoints (safetensors + config.json) and a trained BPE
tokenizer written by the test; greedy output checked against the transformers
reference decoded independently."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

torch = pytest.importorskip("torch", reason="GPU tests need torch (CI has no GPU)")
pytest.importorskip("transformers", reason="the reference is plain transformers")
openai = pytest.importorskip("openai")

import httpx  # noqa: E402

from clients.gpu.reference import random_llama, reference_proxy_generate  # noqa: E402
from tests.support.servers import start_gateway  # noqa: E402

TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
BIG = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4)
SMALL = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
QUESTION = "Explain proxy tuning."  # random weights: a prompt whose answer has no EOS


def _tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = TEMPLATE
    return fast


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, device):
    root = tmp_path_factory.mktemp("ckpt")
    corpus = [open(p).read() for p in ("README.md", "docs/DECISIONS.md")]
    tok = _tokenizer(corpus)
    other = _tokenizer([c[::-1] for c in corpus])  # same size, other merges
    out = {}
    for name, shape, seed, t in (("base", BIG, 1, tok), ("expert", SMALL, 2, tok),
                                 ("anti", SMALL, 3, tok), ("alien", SMALL, 4, other)):
        model = random_llama(shape, seed, "cpu", torch.float32, vocab=len(t))
        model.save_pretrained(root / name, safe_serialization=True)
        t.save_pretrained(root / name)
        out[name] = root / name
    return out


def _config(ckpt, device: str, anti: str = "anti", **extra) -> dict:
    model = {"backend": "gpu_proxy_tuning", "base": str(ckpt["base"]),
             "expert": str(ckpt["expert"]), "anti_expert": str(ckpt[anti]),
             "device": device, "dtype": "float32", "n_ctx": 256, "parallel": 4, **extra}
    return {"models": {"pt": model}, "routing": {"default": "pt"}}


@pytest.fixture(scope="module")
def gateway(checkpoints, device, tmp_path_factory):
    server = start_gateway(_config(checkpoints, device), tmp_path_factory.mktemp("gw"),
                           name="gpu-gateway")
    yield server
    server.stop()


def _sdk(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def _ask(client, content=QUESTION, **kw):
    return client.chat.completions.create(
        model="pt", messages=[{"role": "user", "content": content}], **{"temperature": 0, **kw})


def _independent(ckpt, content: str, steps: int) -> tuple[str, str, int]:
    """(text, finish reason, tokens) of greedy proxy-tuning by plain transformers."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(ckpt["expert"])
    models = [LlamaForCausalLM.from_pretrained(ckpt[n], dtype=torch.float32)
              for n in ("base", "expert", "anti")]
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    tokens = reference_proxy_generate(*models, [prompt], steps)[0]
    if tok.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tok.eos_token_id)]
        return tok.decode(tokens, skip_special_tokens=True), "stop", len(tokens)
    return tok.decode(tokens, skip_special_tokens=True), "length", len(tokens)


def test_greedy_equals_independent_transformers_proxy_tuning(gateway, checkpoints):
    text, reason, n = _independent(checkpoints, QUESTION, 40)
    resp = _ask(_sdk(gateway), max_tokens=40)
    assert resp.choices[0].message.content == text
    assert resp.choices[0].finish_reason == reason
    assert resp.usage.completion_tokens == n
    assert "pt" in [m.id for m in _sdk(gateway).models.list().data]


def test_streaming_stop_sequences_and_max_tokens(gateway):
    client = _sdk(gateway)
    whole = _ask(client, max_tokens=30).choices[0].message.content
    chunks = list(_ask(client, max_tokens=30, stream=True,
                       stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len(whole) > 8
    stop = whole[len(whole) // 2: len(whole) // 2 + 3]
    cut = _ask(client, max_tokens=30, stop=[stop]).choices[0]
    assert (cut.message.content, cut.finish_reason) == (whole[:whole.index(stop)], "stop")
    short = _ask(client, max_tokens=3)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_concurrent_requests_decode_as_they_would_alone(gateway):
    """Different prompts and lengths share the batch; slots are compacted as they end."""
    client = _sdk(gateway)
    asks = [(f"{QUESTION} ({i})", 10 + 7 * i) for i in range(5)]
    alone = [_ask(client, q, max_tokens=m).choices[0].message.content for q, m in asks]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        together = list(pool.map(
            lambda a: _ask(client, a[0], max_tokens=a[1]).choices[0].message.content, asks))
    assert together == alone
    sampled = _ask(client, temperature=0.8, top_p=0.9, seed=5, max_tokens=12)
    assert sampled.usage.completion_tokens == 12 and sampled.choices[0].finish_reason == "length"


def test_unsupported_options_are_clear_400s(gateway):
    with pytest.raises(openai.BadRequestError):
        _ask(_sdk(gateway), max_tokens=4,
             tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.BadRequestError) as err:
        _ask(_sdk(gateway), max_tokens=400)
    assert "maximum context length" in err.value.message


def test_vocabulary_mismatch_is_refused_with_a_clear_message(checkpoints, device, tmp_path):
    server = start_gateway(_config(checkpoints, device, anti="alien"), tmp_path,
                           name="gpu-mismatch", ready_path="/health")
    try:
        detail = "loading"
        for _ in range(300):
            detail = httpx.get(server.url + "/ready", timeout=5).json()["models"]["pt"]["detail"]
            if detail != "loading":
                break
            time.sleep(0.1)
        assert "do not share a vocabulary" in detail
        with pytest.raises(openai.APIStatusError) as err:
            _ask(_sdk(server), max_tokens=4)
        assert err.value.status_code == 503 and "do not share a vocabulary" in err.value.message
    finally:
        server.stop()
