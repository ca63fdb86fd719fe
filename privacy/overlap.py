"""Which parts of a text also appear in the caller's private context (word n-grams).

One rule, used twice: by the ``overlap`` detector (spans of ordinary messages that
repeat the private context become private) and by the egress guard (outbound text may
share no such run with the private context). Words are compared in normal form (NFKC,
case-folded). A run is private when it is

- one *distinctive* word of the context (a name, a number, a code: capitalised or with
  digits or 12+ letters, and not a stopword), or
- two adjacent context words that are both not stopwords (``peanut allergy``), or
- three adjacent context words with at least one that is not a stopword
  (``allergic to peanuts``).

Shorter runs of common words ("of the") are not private: they say nothing about anyone.
"""

from __future__ import annotations

from privacy.spans import STOPWORDS, Token, tokens


def _common(word: str) -> bool:
    """Stopwords and single characters (the ``e`` of ``e-mail``) say nothing alone."""
    return word in STOPWORDS or len(word) < 2


class ContextIndex:
    """The n-grams of the private texts, built once per request."""

    def __init__(self, texts: list[str]) -> None:
        self.words: set[str] = set()
        self.bigrams: set[tuple[str, str]] = set()
        self.trigrams: set[tuple[str, str, str]] = set()
        for text in texts:
            toks = tokens(text)
            norms = [t.norm for t in toks]
            self.words |= {t.norm for t in toks if t.distinctive}
            for a, b in zip(norms, norms[1:]):
                if not _common(a) and not _common(b):
                    self.bigrams.add((a, b))
            for tri in zip(norms, norms[1:], norms[2:]):
                if not all(_common(w) for w in tri):
                    self.trigrams.add(tri)

    def __bool__(self) -> bool:
        return bool(self.words or self.bigrams or self.trigrams)

    def shared(self, text: str) -> list[tuple[int, int]]:
        """Character ranges of ``text`` that repeat the private texts (merged runs)."""
        toks = tokens(text)
        hit = [False] * len(toks)
        norms = [t.norm for t in toks]
        for i, norm in enumerate(norms):
            if norm in self.words:
                hit[i] = True
            if i + 1 < len(norms) and (norm, norms[i + 1]) in self.bigrams:
                hit[i] = hit[i + 1] = True
            if i + 2 < len(norms) and (norm, norms[i + 1], norms[i + 2]) in self.trigrams:
                hit[i] = hit[i + 1] = hit[i + 2] = True
        return _merge(toks, hit, text)


def _merge(toks: list[Token], hit: list[bool], text: str) -> list[tuple[int, int]]:
    """Adjacent hit words (only spaces or punctuation between them) become one range."""
    ranges: list[tuple[int, int]] = []
    for tok, is_hit in zip(toks, hit):
        if not is_hit:
            continue
        if ranges and not text[ranges[-1][1]:tok.start].strip(" \t-.,'’/"):
            ranges[-1] = (ranges[-1][0], tok.end)
        else:
            ranges.append((tok.start, tok.end))
    return ranges
