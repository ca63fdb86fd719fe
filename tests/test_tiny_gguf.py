"""The tiny GGUF models the exact-arithmetic tests write: valid, shared tokenizer,
deterministic, clearly separated logits, servable by the gateway's llama.cpp client."""

from __future__ import annotations

import asyncio

import gguf
import numpy as np
import pytest
import yaml
from llama_cpp import Llama

from clients.llama_cpp.client import LlamaCppClient
from clients.model_store import resolve
from server.config import parse_config
from tests.support.tiny_gguf import UNUSED, tiny_vocab, write_tiny_gguf

TEXTS = [
    "hello world",
    "Hello, World! def print(x): return 42\n\tsecond line",
    "  leading spaces and trailing ",
    "unicode: é ü 中文 🙂",
    "",
]


_LOADED: dict[str, Llama] = {}


def _llm(path) -> Llama:
    """One Llama per file for the whole module: loading is most of the cost."""
    if str(path) not in _LOADED:
        _LOADED[str(path)] = Llama(model_path=str(path), logits_all=True, n_ctx=256,
                                   n_threads=1, verbose=False)
    return _LOADED[str(path)]


def _logits(llm: Llama, text: str) -> np.ndarray:
    llm.reset()
    llm.eval(llm.tokenize(text.encode(), add_bos=True))
    return np.array(llm.scores[: llm.n_tokens], dtype=np.float32)


def _gguf_tokens(path) -> list[str]:
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    written = {
        "a": write_tiny_gguf(d / "a.gguf", seed=1),
        "a2": write_tiny_gguf(d / "a2.gguf", seed=1),
        "b": write_tiny_gguf(d / "b.gguf", seed=2, n_embd=64),
        "pad": write_tiny_gguf(d / "pad.gguf", seed=3, n_pad=9, pad_logit_scale=0.0),
        "alt": write_tiny_gguf(d / "alt.gguf", seed=1, vocab="alt"),
        "f16": write_tiny_gguf(d / "f16.gguf", seed=4, dtype="f16"),
    }
    yield written
    _LOADED.clear()


def test_loads_tokenizes_and_round_trips(models):
    m = models["a"]
    llm = _llm(m.path)
    assert llm.n_vocab() == m.n_vocab == len(m.vocab) > 300
    assert (llm.token_bos(), llm.token_eos()) == (m.vocab.bos_id, m.vocab.eos_id)
    for text in TEXTS:
        ids = llm.tokenize(text.encode(), add_bos=False)
        assert llm.detokenize(ids).decode() == text
    # Whole-word pieces are used, not only characters and bytes.
    ids = llm.tokenize(b"hello world", add_bos=False)
    assert [m.vocab.tokens[i] for i in ids] == ["hello", "\u2581world"]
    chat = b"<|im_start|>user\nhi<|im_end|>\n"
    ids = llm.tokenize(chat, add_bos=False, special=True)
    assert ids[0] == m.vocab.im_start_id and m.vocab.im_end_id in ids
    assert llm.detokenize(ids, special=True) == chat


def test_logits_have_vocab_width_and_are_not_degenerate(models):
    for key in ("a", "b", "f16"):
        m = models[key]
        scores = _logits(_llm(m.path), "the answer is yes")
        assert scores.shape[1] == m.n_vocab
        assert np.isfinite(scores).all()
        text_ids = np.setdiff1d(np.arange(m.n_vocab), m.suppressed)
        last = scores[-1][text_ids]
        top2 = np.sort(last)[-2:]
        assert 2.0 < last.std() < 8.0, key
        assert top2[1] - top2[0] > 1e-3, key  # a clear argmax
        assert len(np.unique(last)) > 0.99 * len(text_ids)
        # The context matters: each position predicts something different.
        assert len({int(np.argmax(row)) for row in scores}) > 1


def test_non_text_tokens_are_suppressed_unless_asked(models, tmp_path):
    m = models["a"]
    assert set(m.suppressed) == {*range(3, 259), m.vocab.unk_id, m.vocab.bos_id,
                                 m.vocab.im_start_id}
    scores = _logits(_llm(m.path), "unicode: é ü 中文, then <0x41> hello\n" * 2)
    text_ids = np.setdiff1d(np.arange(m.n_vocab), m.suppressed)
    gap = scores[:, text_ids].max(axis=1) - scores[:, list(m.suppressed)].max(axis=1)
    assert gap.min() > 20.0
    raw = write_tiny_gguf(tmp_path / "raw.gguf", seed=1, suppress_non_text=False)
    assert raw.suppressed == ()
    scores = _logits(_llm(raw.path), "unicode: é ü 中文, then <0x41> hello\n" * 2)
    assert (scores[:, list(m.suppressed)].max(axis=1) > scores[:, text_ids].max(axis=1)).any()


def test_same_arguments_same_bytes_other_seed_same_tokenizer(models):
    a, a2, b = models["a"], models["a2"], models["b"]
    assert a.path.read_bytes() == a2.path.read_bytes()
    assert a.path.read_bytes() != b.path.read_bytes()
    assert _gguf_tokens(a.path) == _gguf_tokens(b.path) == list(a.vocab.tokens)
    la, lb = _llm(a.path), _llm(b.path)
    for text in TEXTS:
        assert la.tokenize(text.encode()) == lb.tokenize(text.encode())
    assert not np.allclose(_logits(la, "hello")[-1], _logits(lb, "hello")[-1])


def test_padding_rows_trail_the_shared_vocabulary(models):
    m, base = models["pad"], models["a"]
    assert m.n_vocab == len(base.vocab) + 9 and m.n_pad == 9
    tokens = _gguf_tokens(m.path)
    assert tokens[: len(base.vocab)] == list(base.vocab.tokens)
    types = gguf.GGUFReader(str(m.path)).fields["tokenizer.ggml.token_type"]
    assert [int(types.parts[i][0]) for i in types.data[-9:]] == [UNUSED] * 9
    llm = _llm(m.path)
    assert llm.n_vocab() == m.n_vocab
    for text in TEXTS:
        assert llm.tokenize(text.encode()) == _llm(base.path).tokenize(text.encode())
    last = _logits(llm, "hello world")[-1]
    assert np.all(last[len(base.vocab):] == 0.0)  # pad_logit_scale=0
    assert np.all(last[: len(base.vocab)] != 0.0)


def test_alt_vocabulary_differs_in_the_shared_range(models):
    base, alt = models["a"].vocab, models["alt"].vocab
    shared = min(len(base), len(alt))
    assert base.tokens[:shared] != alt.tokens[:shared]
    assert tiny_vocab("alt") == alt and tiny_vocab() == base
    llm = _llm(models["alt"].path)
    assert llm.detokenize(llm.tokenize("zebra hello".encode(), add_bos=False)) == b"zebra hello"
    with pytest.raises(ValueError, match="unknown tiny vocabulary"):
        tiny_vocab("nope")


def test_gateway_llama_cpp_client_serves_it(models):
    """Loaded from a plain path through the model store, greedy chat follows argmax."""
    m = models["a"]
    assert resolve(str(m.path), progress=False) == m.path
    cfg = parse_config(yaml.safe_load(
        f"models:\n  tiny: {{backend: llama_cpp, model: '{m.path}', n_ctx: 256, n_threads: 1,"
        " parallel: 1}\nrouting: {default: tiny}\n"
    )).models["tiny"]
    messages = [{"role": "user", "content": "hello"}]

    async def go() -> tuple[dict, list[dict]]:
        client = LlamaCppClient("tiny", cfg)
        await client.start()
        try:
            body = {"messages": messages, "max_tokens": 6, "temperature": 0}
            reply = await client.chat(body)
            chunks = [c async for c in client.chat_stream({**body, "stream": True})]
            return reply, chunks
        finally:
            await client.close()

    reply, chunks = asyncio.run(go())
    assert reply["usage"]["completion_tokens"] == 6
    streamed = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
    assert streamed == reply["choices"][0]["message"]["content"]
    # Independent greedy decode with the plain llama_cpp API.
    llm = _llm(m.path)
    prompt = llm.tokenize(b"<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
                          add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(6):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    assert llm.detokenize(out).decode(errors="replace") == reply["choices"][0]["message"]["content"]
