"""Proxy-tuning adds scores token by token, so the models must mean the same thing by
every token id. Compared on the shared range: output layers are often padded with
trailing rows no tokenizer emits (the fusion cuts them)."""

from __future__ import annotations

import asyncio

from clients.scoring import TokenScorer


class VocabularyMismatch(ValueError):
    """Two models of a proxy-tuned triple do not share a tokenizer."""


async def check_vocabularies(model: str, scorers: dict[str, TokenScorer]) -> None:
    """Refuse ``model`` unless every scorer that can list its vocabulary agrees with the
    first one token by token on the shared range."""
    distinct: dict[int, tuple[str, TokenScorer]] = {}
    for name, scorer in scorers.items():
        distinct.setdefault(id(scorer), (name, scorer))
    listed = []
    for name, scorer in distinct.values():
        texts = await scorer.token_texts(list(range(scorer.n_vocab)))
        if texts is not None:
            listed.append((name, scorer.n_vocab, texts))
    if len(listed) < 2:
        return
    ref_name, ref_n, ref = listed[0]
    for name, n, texts in listed[1:]:
        shared = min(ref_n, n)
        bad = await asyncio.to_thread(_first_difference, ref, texts, shared)
        if bad is not None:
            raise VocabularyMismatch(
                f"proxy-tuned model '{model}': '{ref_name}' and '{name}' do not share a "
                f"vocabulary (token {bad} is {ref[bad]!r} in '{ref_name}' and {texts[bad]!r} "
                f"in '{name}'; {ref_n} vs {n} entries). Base, expert and anti-expert must "
                "use the same tokenizer."
            )


def _first_difference(a: list[bytes], b: list[bytes], n: int) -> int | None:
    for i in range(n):
        if a[i] != b[i]:
            return i
    return None
