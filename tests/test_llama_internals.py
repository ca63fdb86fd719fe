"""The llama-cpp-python internal we read (a batch position's logits row) matches the
public ``logits_all`` path."""

from __future__ import annotations

import numpy as np
from llama_cpp import Llama

from clients.llama_cpp.internals import logits_row


def test_logits_row_equals_logits_all_scores(local_model_path):
    full = Llama(str(local_model_path), n_ctx=256, logits_all=True, verbose=False)
    lean = Llama(str(local_model_path), n_ctx=256, logits_all=False, verbose=False)
    tokens = full.tokenize(b"def add(a, b):\n    return")
    for step in range(3):
        full.eval(tokens if step == 0 else [nxt])
        lean.eval(tokens if step == 0 else [nxt])
        expected = full.scores[full.n_tokens - 1]
        got = logits_row(lean._ctx, -1, lean.n_vocab())  # -1: last position decoded
        assert got.shape == (lean.n_vocab(),)
        np.testing.assert_array_equal(got, expected)
        nxt = int(np.argmax(got))
