"""The batch engine on the real 0.5B model: many sequences, queueing, stop, cancel."""

from __future__ import annotations

import queue
import threading

import pytest
from llama_cpp import Llama

from clients.llama_cpp.batch_engine import BatchEngine, Sequence
from clients.llama_cpp.decoding import SamplingParams

TEMPLATE = ("<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def llm(local_model_path):
    return Llama(str(local_model_path), n_ctx=64, n_batch=64, verbose=False)


def _prompt(llm, text: str) -> list[int]:
    return llm.tokenize(TEMPLATE.format(text).encode(), add_bos=False, special=True)


def _collect(events: queue.Queue, n: int, timeout: float = 120) -> dict[int, dict]:
    out: dict[int, dict] = {}
    finished = 0
    while finished < n:
        ev = events.get(timeout=timeout)
        assert ev[0] != "error", ev
        slot = out.setdefault(ev[1], {"text": "", "finish": None, "tokens": 0})
        if ev[0] == "delta":
            slot["text"] += ev[2].text
        else:
            slot["finish"], slot["tokens"] = ev[2], ev[3]
            finished += 1
    return out


def test_more_sequences_than_slots_all_finish_in_full(llm):
    engine = BatchEngine(llm, n_ctx=512, parallel=2, n_batch=64, n_threads=2, name="t")
    try:
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        lengths = [5, 9, 3, 7, 11]
        # At once: submitted one by one, the first may prefill alone (thread timing), and
        # that batch shape changes llama.cpp's numbers enough for a greedy early EOS.
        engine.submit_many([Sequence(_prompt(llm, f"Count to {i + 20}."),
                                     SamplingParams(max_tokens=n, temperature=0),
                                     events.put, cancel, index=i)
                            for i, n in enumerate(lengths)])
        out = _collect(events, len(lengths))
        assert [out[i]["tokens"] for i in range(len(lengths))] == lengths
        assert all(out[i]["finish"] == "length" and out[i]["text"] for i in out)
        assert engine.active() == 0 and engine.waiting() == 0
    finally:
        engine.close()


def test_stop_string_and_long_prompt_interleaved(llm):
    """A prompt longer than n_batch is prefilled in chunks while another stream decodes."""
    engine = BatchEngine(llm, n_ctx=1024, parallel=2, n_batch=32, n_threads=2, name="t")
    try:
        events: queue.Queue = queue.Queue()
        cancel = threading.Event()
        engine.submit(Sequence(_prompt(llm, "List the numbers 1 to 30 with commas."),
                               SamplingParams(max_tokens=80, temperature=0, stop=["7"]),
                               events.put, cancel, index=0))
        long_text = "Summarise this: " + "the river flows to the sea. " * 40
        engine.submit(Sequence(_prompt(llm, long_text), SamplingParams(max_tokens=6,
                                                                       temperature=0),
                               events.put, cancel, index=1))
        out = _collect(events, 2)
        assert out[0]["finish"] == "stop" and "7" not in out[0]["text"]
        assert "6" in out[0]["text"]
        assert out[1]["tokens"] == 6
    finally:
        engine.close()


def test_cancelled_sequence_frees_its_slot(llm):
    engine = BatchEngine(llm, n_ctx=512, parallel=1, n_batch=64, n_threads=2, name="t")
    try:
        events: queue.Queue = queue.Queue()
        gone = threading.Event()
        engine.submit(Sequence(_prompt(llm, "Write a long story."),
                               SamplingParams(max_tokens=400, temperature=0),
                               events.put, gone, index=0))
        assert events.get(timeout=60)[0] == "delta"  # it is running
        gone.set()
        kept: queue.Queue = queue.Queue()
        engine.submit(Sequence(_prompt(llm, "Say hi."), SamplingParams(max_tokens=3,
                                                                       temperature=0),
                               kept.put, threading.Event(), index=0))
        out = _collect(kept, 1, timeout=30)
        assert out[0]["tokens"] == 3
    finally:
        engine.close()


def test_prefix_cache_reuses_a_finished_conversation(llm):
    engine = BatchEngine(llm, n_ctx=512, parallel=2, n_batch=64, n_threads=2, name="t")
    try:
        first = _prompt(llm, "List the numbers 1 to 10.")
        events: queue.Queue = queue.Queue()
        engine.submit(Sequence(first, SamplingParams(max_tokens=12, temperature=0),
                               events.put, threading.Event()))
        a = _collect(events, 1)[0]
        assert engine.reused_tokens == 0
        engine.submit(Sequence(first, SamplingParams(max_tokens=12, temperature=0),
                               events.put, threading.Event()))
        b = _collect(events, 1)[0]
        assert engine.reused_tokens == len(first) - 1  # all but the last prompt token
        assert a["text"] == b["text"]
        # The next turn extends the history: the whole previous prompt is reused.
        follow = first + llm.tokenize(b"1, 2, 3<|im_end|>\n<|im_start|>user\nMore<|im_end|>\n",
                                      add_bos=False, special=True)
        engine.submit(Sequence(follow, SamplingParams(max_tokens=4, temperature=0),
                               events.put, threading.Event()))
        assert _collect(events, 1)[0]["tokens"] == 4
        assert engine.reused_tokens >= 2 * len(first) - 1
    finally:
        engine.close()


# The answer to the second question is only in the shared prefix: a prefix that was not
# really copied shows in the output.
SYSTEM = ("<|im_start|>system\nYou are a careful assistant for a team of engineers. The "
          "project's code name is Bluefinch. Answer briefly.<|im_end|>\n")


def _chat(llm, text: str) -> list[int]:
    return llm.tokenize((SYSTEM + TEMPLATE.format(text)).encode(), add_bos=False, special=True)


def _run(engine, prompt, max_tokens=10) -> dict:
    events: queue.Queue = queue.Queue()
    engine.submit(Sequence(prompt, SamplingParams(max_tokens=max_tokens, temperature=0),
                           events.put, threading.Event()))
    return _collect(events, 1)[0]


def test_shared_system_prompt_is_copied_not_evicted(llm):
    """A second conversation with the same system prompt takes the empty slot and gets
    the shared prefix copied from the first one's slot; the first conversation's cache
    survives, and every answer equals the one computed without any cache."""
    a, b = _chat(llm, "Name a prime number."), _chat(llm, "What is the project's code name?")
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared > 16  # the system prompt is worth a copy
    fresh = {}
    for name, prompt in (("a", a), ("b", b)):
        engine = BatchEngine(llm, n_ctx=512, parallel=1, n_batch=64, n_threads=2, name="f")
        try:
            fresh[name] = _run(engine, prompt)["text"]
        finally:
            engine.close()
    assert "Bluefinch" in fresh["b"]
    engine = BatchEngine(llm, n_ctx=512, parallel=2, n_batch=64, n_threads=2, name="t")
    try:
        assert _run(engine, a)["text"] == fresh["a"]
        assert (engine.reused_tokens, engine.copied_prefixes) == (0, 0)
        assert _run(engine, b)["text"] == fresh["b"]
        assert (engine.reused_tokens, engine.copied_prefixes) == (shared, 1)
        # Both conversations are still cached, each in its own slot.
        assert _run(engine, a)["text"] == fresh["a"]
        assert _run(engine, b)["text"] == fresh["b"]
        assert engine.reused_tokens == shared + (len(a) - 1) + (len(b) - 1)
        assert engine.copied_prefixes == 1
    finally:
        engine.close()


def _record_batches(engine) -> list[list[int]]:
    """From now on, the sequence id of every token of every batch the engine decodes."""
    seen: list[list[int]] = []
    decode = engine.ctx.decode

    def recording(batch):
        b = batch.batch
        seen.append([b.seq_id[k][0] for k in range(b.n_tokens)])
        return decode(batch)

    engine.ctx.decode = recording
    return seen


def test_batches_go_in_slot_order(llm):
    """llama.cpp (one KV stream per slot) takes a ubatch only from consecutive sequence
    ids in batch order: the engine lays each batch out by slot, whatever order requests
    came in, and keeps the running slots one run. Here the third request returns to the
    slot it had before (0) while the first two took slots 1 and 2."""
    engine = BatchEngine(llm, n_ctx=256, parallel=3, n_batch=64, n_threads=2, name="t")
    try:
        c = _prompt(llm, "Name three colours.")
        _run(engine, c, max_tokens=3)
        seen = _record_batches(engine)
        events: queue.Queue = queue.Queue()
        prompts = [_prompt(llm, "Name a river."), _prompt(llm, "Name a city."), c]
        engine.submit_many([Sequence(p, SamplingParams(max_tokens=6, temperature=0),
                                     events.put, threading.Event(), index=i)
                            for i, p in enumerate(prompts)])
        out = _collect(events, 3)
        assert all(out[i]["finish"] and out[i]["text"] for i in range(3))
        assert engine.reused_tokens == len(c) - 1  # the third found its old slot
        assert seen and all(ids == sorted(ids) for ids in seen), seen
        assert set(seen[0]) == {0, 1, 2}  # the three shared their batches
    finally:
        engine.close()


def test_gap_between_running_slots_is_closed_and_no_cache_lost(llm):
    """Slots 0-2 hold three finished conversations, a long generation runs in slot 3.
    X returns to its own slot 1: running slots {1, 3} are two runs, two passes over the
    weights a step. After a few steps the engine moves the generation into slot 2 and
    Z's cache from slot 2 into slot 3 (through the spare stream). Every answer equals the
    one computed without any cache, batches stay in slot order, and Z then returns to
    find its whole cache."""
    y, x = (_prompt(llm, f"{q} Answer with one word, no explanation, no punctuation, "
                     "and nothing before or after it.") for q in ("Birds: name one.",
                                                                  "Fish: name one."))
    z = _prompt(llm, "Trees: describe ten kinds, a long sentence on each of them.")
    x2 = x + llm.tokenize(b"Salmon.<|im_end|>\n<|im_start|>user\nAnother one?<|im_end|>\n"
                          b"<|im_start|>assistant\n", add_bos=False, special=True)
    long_one = _prompt(llm, "Count from one to one hundred in words.")
    fresh = {}
    for name, prompt, n in (("x2", x2, 6), ("z", z, 6), ("long", long_one, 30)):
        engine = BatchEngine(llm, n_ctx=256, parallel=1, n_batch=64, n_threads=2, name="f")
        try:
            fresh[name] = _run(engine, prompt, max_tokens=n)["text"]
        finally:
            engine.close()
    engine = BatchEngine(llm, n_ctx=256, parallel=4, n_batch=64, n_threads=2, name="t")
    try:
        for prompt in (y, x, z):
            _run(engine, prompt, max_tokens=24 if prompt is z else 4)
        seen = _record_batches(engine)
        events: queue.Queue = queue.Queue()
        engine.submit_many([
            Sequence(long_one, SamplingParams(max_tokens=30, temperature=0), events.put,
                     threading.Event(), index=0),
            Sequence(x2, SamplingParams(max_tokens=6, temperature=0), events.put,
                     threading.Event(), index=1)])
        out = _collect(events, 2)
        assert out[0]["text"] == fresh["long"] and out[1]["text"] == fresh["x2"]
        assert engine.compactions == 1
        # X in its own slot 1 beside the generation in 3; the generation ends in slot 2
        assert set(seen[0]) == {1, 3} and set(seen[-1]) == {2}, seen
        assert all(ids == sorted(ids) for ids in seen), seen
        before = engine.reused_tokens
        assert _run(engine, z, max_tokens=6)["text"] == fresh["z"]
        assert engine.reused_tokens - before == len(z) - 1  # Z's cache moved, not lost
    finally:
        engine.close()
