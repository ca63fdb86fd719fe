"""A JSON grammar applied to the *fused* distribution of a proxy-tuned model.

llama.cpp's grammar sampler is used on its own, outside any context: it is handed a
candidate array and marks the tokens the grammar forbids (logit -inf); ``accept``
advances it by the chosen token. The decoder masks ``base + alpha * (expert - anti)``
with it, so the constraint shapes the one distribution that is sampled, never a single
model's. Asking about one token first (``allows``) keeps a greedy step cheap: when the
unconstrained choice is allowed it is the constrained choice too, and the whole
vocabulary (151,936 candidates for Qwen) is only checked when it is not.
"""

from __future__ import annotations

import ctypes

import numpy as np


class GrammarConstraint:
    def __init__(self, llm, grammar) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        self._lib = llama_cpp
        self._sampler = llama_cpp.llama_sampler_init_grammar(
            llm._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
        if not self._sampler:
            raise ValueError("llama.cpp could not build the grammar")
        self._n_vocab = llm.n_vocab()
        self._all = LlamaTokenDataArray(n_vocab=self._n_vocab)
        self._one = LlamaTokenDataArray(n_vocab=1)

    def allows(self, token: int) -> bool:
        one = self._one
        one.candidates_data.id[0] = token
        one.candidates_data.logit[0] = 0.0
        one.candidates_data.p[0] = 0.0
        one.candidates.size = 1
        one.candidates.sorted = False
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(one.candidates))
        return bool(np.isfinite(one.candidates_data.logit[0]))

    def mask(self, n: int) -> np.ndarray:
        """Which of the first ``n`` tokens the grammar allows next."""
        arr = self._all
        arr.copy_logits(np.zeros(self._n_vocab, dtype=np.single))
        self._lib.llama_sampler_apply(self._sampler, ctypes.byref(arr.candidates))
        size = int(arr.candidates.size)
        ids = np.asarray(arr.candidates_data.id[:size])
        ok = np.isfinite(np.asarray(arr.candidates_data.logit[:size])) & (ids < n)
        allowed = np.zeros(n, dtype=bool)
        allowed[ids[ok]] = True
        return allowed

    def accept(self, token: int) -> None:
        self._lib.llama_sampler_accept(self._sampler, token)

    def close(self) -> None:
        if self._sampler:
            self._lib.llama_sampler_free(self._sampler)
            self._sampler = None
