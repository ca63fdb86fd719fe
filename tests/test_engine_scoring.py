"""The batch engine's prompt scoring (what /v1/completions' echo and prompt_logprobs
read) against llama-cpp-python's own ``logits_all`` run: which positions are scored,
in bounded chunks, and what the prefix cache keeps or serves."""

from __future__ import annotations

import queue
import threading

import numpy as np

from clients.llama_cpp.batch_engine import SCORED_CHUNK, BatchEngine, Sequence
from clients.llama_cpp.decoding import SamplingParams
from tests.support.logits_reference import TOL, ids, ref, ref_logprobs  # noqa: F401


def _run_engine(engine: BatchEngine, seq: Sequence) -> tuple:
    events: queue.Queue = queue.Queue()
    seq.emit, seq.cancel = events.put, threading.Event()
    engine.submit(seq)
    while True:
        event = events.get(timeout=60)
        assert event[0] != "error", event
        if event[0] == "finish":
            return event


def test_engine_prompt_logits_skip_the_cache_and_keep_it_for_chat(ref):
    engine = BatchEngine(ref, n_ctx=128, parallel=2, n_batch=8, n_threads=2, name="t")
    try:
        tokens = ids(ref, "one two three four five six seven eight nine ten")
        greedy = SamplingParams(max_tokens=1, temperature=0)
        _run_engine(engine, Sequence(tokens, greedy, None, None))
        reused = engine.reused_tokens
        rows: dict[int, np.ndarray] = {}
        seq = Sequence(tokens, SamplingParams(max_tokens=0, temperature=0), None, None,
                       prompt_logits=lambda pos, row: rows.__setitem__(pos, row.copy()))
        assert _run_engine(engine, seq)[2:] == ("length", 0)
        assert engine.reused_tokens == reused  # nothing taken from the cache
        assert sorted(rows) == list(range(len(tokens) - 1))  # chunked over n_batch 8
        expected = ref_logprobs(ref, tokens, chunk=8)
        for pos, row in rows.items():
            x = row.astype(np.float64)
            lp = x - np.logaddexp.reduce(x)
            assert np.abs(lp - expected[pos]).max() < TOL
        # The chat cache survived in the other slot: a repeat reuses it.
        _run_engine(engine, Sequence(tokens, greedy, None, None))
        assert engine.reused_tokens == reused + len(tokens) - 1
    finally:
        engine.close()


def test_engine_scores_long_prompts_in_bounded_chunks(ref):
    """Past SCORED_CHUNK positions per decode the prompt goes on in the next step (the
    output buffer stays small) and every position is still scored, in order."""
    engine = BatchEngine(ref, n_ctx=128, parallel=1, n_batch=128, n_threads=2, name="t")
    try:
        tokens = ids(ref, " ".join(str(i) for i in range(60)))[:100]
        assert len(tokens) > SCORED_CHUNK
        rows: dict[int, np.ndarray] = {}
        seq = Sequence(tokens, SamplingParams(max_tokens=0, temperature=0), None, None,
                       prompt_logits=lambda pos, row: rows.__setitem__(pos, row.copy()))
        _run_engine(engine, seq)
        assert list(rows) == list(range(len(tokens) - 1))
        expected = ref_logprobs(ref, tokens, chunk=SCORED_CHUNK)
        got = np.stack([rows[p] for p in range(len(tokens) - 1)]).astype(np.float64)
        got -= np.logaddexp.reduce(got, axis=1, keepdims=True)
        assert np.abs(got - expected[:-1]).max() < TOL
    finally:
        engine.close()


def test_engine_scoring_from_a_position_reuses_the_cache_before_it(ref):
    engine = BatchEngine(ref, n_ctx=128, parallel=1, n_batch=64, n_threads=2, name="t")
    try:
        tokens = ids(ref, "alpha beta gamma delta epsilon zeta eta theta iota kappa")
        _run_engine(engine, Sequence(tokens, SamplingParams(max_tokens=1, temperature=0),
                                     None, None))
        reused = engine.reused_tokens
        start = len(tokens) - 4
        rows: dict[int, np.ndarray] = {}
        seq = Sequence(tokens, SamplingParams(max_tokens=0, temperature=0), None, None,
                       prompt_logits=lambda pos, row: rows.__setitem__(pos, row.copy()),
                       score_from=start)
        _run_engine(engine, seq)
        assert engine.reused_tokens == reused + start  # the cache served all before it
        assert list(rows) == list(range(start, len(tokens) - 1))
        # Reference: the same shapes (whole prompt once, then the tail again from its KV).
        ref_logprobs(ref, tokens)
        ref.n_tokens = start
        ref.eval(tokens[start:])
        x = np.asarray(ref.scores[start : len(tokens) - 1], dtype=np.float64)
        expected = x - np.logaddexp.reduce(x, axis=1, keepdims=True)
        got = np.stack([rows[p] for p in sorted(rows)]).astype(np.float64)
        got -= np.logaddexp.reduce(got, axis=1, keepdims=True)
        assert np.abs(got - expected).max() < TOL
    finally:
        engine.close()
