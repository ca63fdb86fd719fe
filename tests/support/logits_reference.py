"""llama-cpp-python's own ``logits_all`` run of the local model: the reference that
completions' logprobs (tests/test_completions.py) and the engine's prompt scoring
(tests/test_engine_scoring.py) are checked against."""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import Llama

# llama.cpp's numbers depend on the kernels, which depend on the batch shape and the
# attention path: measured here, a reference evaluating prompt + completion as one batch
# is off by up to 0.07 nats, one without flash attention (which the engine's context
# gets from llama.cpp's AUTO on CPU) by up to 0.26. The reference below replays the
# engine's shapes (the prompt as one batch, then one token per decode) with flash
# attention, and then agrees to 1e-8; the tolerance is for other machines' kernels.
TOL = 1e-3
SHAPE_TOL = 0.1  # comparing runs whose batch shapes differ (measured up to 0.07)


@pytest.fixture(scope="module")
def ref(local_model_path) -> Llama:
    return Llama(str(local_model_path), logits_all=True, n_ctx=128, n_batch=128,
                 flash_attn=True, verbose=False)


def ref_logprobs(ref: Llama, prompt: list[int], generated: list[int] = (),
                 chunk: int = 512) -> np.ndarray:
    """Row i: log-softmax of the logits after (prompt + generated)[: i + 1] (float64)."""
    ref.reset()
    for start in range(0, len(prompt), chunk):
        ref.eval(prompt[start : start + chunk])
    for token in generated:
        ref.eval([token])
    x = np.asarray(ref.scores[: len(prompt) + len(generated)], dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


def ids(ref: Llama, text: str) -> list[int]:
    return ref.tokenize(text.encode(), add_bos=True, special=True)
