"""The one place that touches llama-cpp-python internals (they may move on upgrade).

Tested in tests/test_llama_internals.py against the public ``logits_all=True`` path.
"""

from __future__ import annotations

import llama_cpp
import numpy as np


def last_logits(llm: llama_cpp.Llama) -> np.ndarray:
    """The last evaluated position's logits, as a view (no copy) of llama.cpp's buffer.

    Valid until the next decode. ``logits_all=True`` would keep n_ctx × n_vocab floats
    (2.5 GB for Qwen at 4k context); this reads the one row llama.cpp already has.
    """
    ptr = llm._ctx.get_logits()
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def is_end_of_generation(llm: llama_cpp.Llama, token: int) -> bool:
    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


def token_text(llm: llama_cpp.Llama, token: int) -> str:
    return llm._model.token_get_text(token)
