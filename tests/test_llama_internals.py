"""The one llama-cpp-python internal we read (last position's logits) matches the public path."""

from __future__ import annotations

import numpy as np
from llama_cpp import Llama

from clients.llama_cpp.internals import last_logits


def test_last_logits_equal_logits_all_scores(local_model_path):
    full = Llama(str(local_model_path), n_ctx=256, logits_all=True, verbose=False)
    lean = Llama(str(local_model_path), n_ctx=256, logits_all=False, verbose=False)
    tokens = full.tokenize(b"def add(a, b):\n    return")
    for step in range(3):
        full.eval(tokens if step == 0 else [nxt])
        lean.eval(tokens if step == 0 else [nxt])
        expected = full.scores[full.n_tokens - 1]
        got = last_logits(lean)
        assert got.shape == (lean.n_vocab(),)
        np.testing.assert_array_equal(got, expected)
        nxt = int(np.argmax(got))
