"""Prompt embeddings computed in-process with no network, and the conversation text fed
to them (the whole conversation, weighted towards its latest user turn)."""

from __future__ import annotations

import abc
import functools
import hashlib
import re

import numpy as np

_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|[^\sA-Za-z0-9_]")


def content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def latest_user_text(messages: list[dict]) -> str:
    """The text of the latest user turn ("" when there is none)."""
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def conversation_text(messages: list[dict], budget_chars: int = 4000) -> str:
    """The latest user turn first (it matters most), then earlier turns newest-first, cut
    at ``budget_chars`` so long histories cost the same as short ones."""
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    last = users[-1] if users else len(messages) - 1
    order = [last] + [i for i in range(len(messages) - 1, -1, -1) if i != last]
    parts, used = [], 0
    for i in order:
        m = messages[i]
        text = f"{m.get('role', 'user')}: {content_text(m.get('content'))}"
        parts.append(text[: max(0, budget_chars - used)])
        used += len(text)
        if used >= budget_chars:
            break
    return "\n".join(parts)


@functools.lru_cache(maxsize=1 << 17)
def _hashed(feature: str, dim: int) -> tuple[int, float]:
    """(index, sign) of a feature; cached, since words repeat across requests."""
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return h % dim, 1.0 if (h >> 63) & 1 else -1.0


class Embedder(abc.ABC):
    name: str
    dim: int

    @abc.abstractmethod
    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-norm float32 rows, one per text."""


class HashingEmbedder(Embedder):
    """Feature hashing of word unigrams and bigrams (signed, sublinear tf, L2-normalised).

    Microseconds per prompt and no model file; the baseline a neural embedder must beat
    on routing quality to earn its milliseconds.
    """

    def __init__(self, dim: int = 4096) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def _index(self, feature: str) -> tuple[int, float]:
        return _hashed(feature, self.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = [w.lower() for w in _TOKEN.findall(text)]
            counts: dict[str, int] = {}
            for feature in words + [a + " " + b for a, b in zip(words, words[1:])]:
                counts[feature] = counts.get(feature, 0) + 1
            for feature, n in counts.items():
                i, sign = self._index(feature)
                out[row, i] += sign * (1.0 + np.log(n))
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out
