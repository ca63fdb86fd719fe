"""Continuous batching for one in-process llama.cpp model.

One thread owns the context. Each step builds one batch: the next token of every
decoding sequence, then prompt chunks of newly admitted sequences up to ``n_batch``
(so a long prompt never stalls the streams already running), runs one decode, and
samples every sequence that has logits with its own sampler chain. Requests beyond
``parallel`` active sequences wait in a FIFO queue; none is dropped. A sequence whose
caller left (cancel flag) is dropped at the next step.

Prefix cache: a finished sequence leaves its KV cells in its slot; a new request reuses
the longest token prefix of its prompt held in any slot and only evaluates the rest (a
multi-turn chat re-sends its history, a system prompt repeats on every call), taking
the free slot whose cache it destroys least and copying a longer shared prefix in from
another slot (clients/llama_cpp/slots.py), so conversations do not evict each other.
Each batch is laid out in slot order and running slots are kept one run of consecutive
ids (llama.cpp runs one ubatch per such run): new sequences prefer slots next to the
run, and a gap that outlasts a few steps is closed by moving a running sequence into it
(through a spare stream, so the cache held in the gap survives).

Prompt logprobs (``/v1/completions``): a sequence with a ``prompt_logits`` callback gets
logits at every prompt position from ``score_from`` on, handed to the callback right
after the decode (in this thread, while the row is valid). Cached KV is reused only for
the positions before ``score_from`` (with 0, none: the free slot with the least cached is
taken, so the chat caches survive). Sequences without the callback run as before.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from clients.llama_cpp.decoding import (
    SamplingParams,
    TextAssembler,
    build_sampler,
    plain_greedy,
)
from clients.llama_cpp.internals import (
    batch_add,
    batch_clear,
    copy_sequence,
    logits_row,
    new_parallel_context,
    truncate_sequence,
)
from clients.llama_cpp.slots import plan_slot, runs

log = logging.getLogger("tandem.llama_cpp")

Emit = Callable[[tuple], None]
# (position p, logits row after prompt token p): the distribution of prompt token p + 1.
PromptLogits = Callable[[int, Any], None]
# Prompt positions scored per decode, all sequences together: llama.cpp sizes its output
# buffer by the rows one decode returns (151,936 floats each for Qwen: 39 MB at 64,
# 311 MB at n_batch 512).
SCORED_CHUNK = 64
# Steps a split of the running slots may last before a sequence is moved to close it: a
# burst of arrivals fills its own gaps within a step or two, for free.
COMPACT_AFTER = 3


@dataclass(eq=False)
class Sequence:
    """One generation: a prompt, how to sample, where to send events."""

    prompt: list[int]
    params: SamplingParams
    emit: Emit  # receives ("delta", index, Delta) and ("finish", index, reason, n_tokens)
    cancel: threading.Event
    index: int = 0
    prompt_logits: PromptLogits | None = None
    score_from: int = 0  # first prompt position whose logits row goes to prompt_logits
    # engine state
    reused: int = 0  # prompt tokens whose KV came from the prefix cache (set at admission)
    admitted_at: float = 0.0  # perf_counter when it got a slot: its queue wait ends here
    seq_id: int = -1
    n_past: int = 0
    fed: list[int] = field(default_factory=list, repr=False)  # tokens whose KV is in the slot
    next_token: int | None = None
    batch_index: int = -1
    sampler: Any = None
    text: TextAssembler | None = field(default=None, repr=False)

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)


class BatchEngine:
    def __init__(self, llm, n_ctx: int, parallel: int, n_batch: int, n_threads: int,
                 name: str, lora=None) -> None:
        self.llm = llm
        self.n_vocab = llm.n_vocab()
        self.n_batch = n_batch
        self.parallel = parallel
        # One stream per slot and a spare one, never decoded in: the scratch space for a
        # running sequence and a free slot's cache to trade places (``_compact``).
        self.spare = parallel
        self.ctx, self.batch = new_parallel_context(llm, n_ctx, parallel + 1, n_batch,
                                                    n_threads, lora=lora)
        self._queue: collections.deque[Sequence] = collections.deque()
        self._active: list[Sequence] = []
        self._free_ids = list(range(parallel))
        self._slot_tokens: dict[int, list[int]] = {}  # cached KV content of free slots
        self._last_used: dict[int, int] = {}  # slot -> release count when last freed
        self._released = 0
        self.reused_tokens = 0  # prompt tokens served from the prefix cache (for stats)
        self.copied_prefixes = 0  # admissions that copied a shared prefix from another slot
        self.compactions = 0  # running sequences moved into a gap between running slots
        self._split_steps = 0  # consecutive steps whose running slots formed 2+ runs
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"llama-batch-{name}",
                                        daemon=True)
        self._thread.start()

    # -- called from the event loop ---------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        self.submit_many([seq])

    def submit_many(self, seqs: list[Sequence]) -> None:
        """Queue ``seqs`` at once: the engine admits them in one step, so the batches they
        share (and hence llama.cpp's exact numbers) do not depend on thread timing."""
        with self._wake:
            self._queue.extend(seqs)
            self._wake.notify()

    def waiting(self) -> int:
        return len(self._queue)

    def active(self) -> int:
        return len(self._active)

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=10)
        self.batch.close()
        self.ctx.close()

    # -- the engine thread ----------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._queue and not self._active:
                    self._wake.wait()
                if self._stopping:
                    return
                self._admit()
            try:
                self._step()
            except Exception as err:  # a failed decode fails every running sequence
                log.exception("batched decode failed")
                for seq in list(self._active):
                    seq.emit(("error", err))
                    self._release(seq)

    def _admit(self) -> None:
        while self._queue and self._free_ids:
            seq = self._queue.popleft()
            if seq.cancel.is_set():
                continue
            limit = len(seq.prompt) if seq.prompt_logits is None else seq.score_from
            seq.seq_id, seq.n_past = self._pick_slot(seq.prompt, limit)
            seq.reused = seq.n_past
            seq.admitted_at = time.perf_counter()
            seq.fed = list(seq.prompt[: seq.n_past])
            # Plain greedy needs no sampler chain: an argmax over the logits row is
            # ~6x cheaper than llama.cpp's candidate-array copy for a 151k vocabulary.
            seq.sampler = None if plain_greedy(seq.params) else build_sampler(self.llm, seq.params)
            seq.text = TextAssembler(self.llm, seq.params)
            self._active.append(seq)

    def _pick_slot(self, prompt: list[int], limit: int) -> tuple[int, int]:
        """The slot for ``prompt`` and how many of its tokens start cached (at most
        ``limit``), by ``slots.plan_slot``: a longer shared prefix held in another slot
        is copied in (llama.cpp performs the copy at the start of the next decode,
        before this sequence's tokens run)."""
        free = {sid: self._slot_tokens.get(sid, []) for sid in self._free_ids}
        running = {s.seq_id: s.fed for s in self._active}
        plan = plan_slot(prompt, limit, free, running, self._last_used)
        self._free_ids.remove(plan.slot)
        self._slot_tokens.pop(plan.slot, None)
        if plan.copy_from is not None:
            copy_sequence(self.ctx, plan.copy_from, plan.slot)
            self.copied_prefixes += 1
        truncate_sequence(self.ctx, plan.slot, plan.reuse)
        self.reused_tokens += plan.reuse
        return plan.slot, plan.reuse

    def _release(self, seq: Sequence) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None
        self._active.remove(seq)
        self._slot_tokens[seq.seq_id] = seq.fed
        self._free_ids.append(seq.seq_id)
        self._released += 1
        self._last_used[seq.seq_id] = self._released

    def _compact(self) -> None:
        """Running slots in two or more runs for ``COMPACT_AFTER`` steps (each run is one
        more pass over the weights a step): the highest running sequence moves into the
        lowest gap, and the cache held there moves to the slot it left (three stream
        copies through the spare, run by llama.cpp in this order at the next decode;
        cell metadata moves at once), so no cache is lost. One move per step."""
        ids = sorted(s.seq_id for s in self._active)
        if runs(ids) <= 1:
            self._split_steps = 0
            return
        self._split_steps += 1
        if self._split_steps < COMPACT_AFTER:
            return
        gap = next(i for i in range(ids[0], ids[-1]) if i not in ids)
        seq = max(self._active, key=lambda s: s.seq_id)
        top = seq.seq_id
        copy_sequence(self.ctx, gap, self.spare)
        copy_sequence(self.ctx, top, gap)
        copy_sequence(self.ctx, self.spare, top)
        self._free_ids.remove(gap)
        self._free_ids.append(top)
        self._slot_tokens[top] = self._slot_tokens.pop(gap, [])
        self._last_used[top] = self._last_used.pop(gap, -1)
        seq.seq_id = gap
        self.compactions += 1

    def _plan_chunks(self) -> dict[Sequence, tuple[int, int]]:
        """The prompt chunk each prefilling sequence evaluates this step, as (end, first
        position flagged for scoring): oldest first, in what ``n_batch`` leaves after
        one token for every decoding stream (so a long prompt never stalls them)."""
        budget = self.n_batch - sum(1 for s in self._active
                                    if not s.prefilling and s.next_token is not None)
        scored_left = SCORED_CHUNK
        chunks: dict[Sequence, tuple[int, int]] = {}
        for seq in self._active:
            if budget <= 0:
                break
            if not seq.prefilling:
                continue
            end = min(len(seq.prompt), seq.n_past + budget)
            first = len(seq.prompt)  # first position flagged for scoring
            if seq.prompt_logits is not None:
                first = max(seq.n_past, seq.score_from)
                end = min(end, first + scored_left)
                if end <= seq.n_past:
                    continue
                scored_left -= max(0, end - first)
            budget -= end - seq.n_past
            chunks[seq] = (end, first)
        return chunks

    def _step(self) -> None:
        for seq in [s for s in self._active if s.cancel.is_set()]:
            self._release(seq)
        if not self._active:
            return
        self._compact()
        chunks = self._plan_chunks()
        scored: list[tuple[Sequence, int, int]] = []  # (seq, position, batch index)
        batch_clear(self.batch)
        # In slot order: llama.cpp takes a ubatch only from consecutive sequence ids in
        # batch order, so [3, 0, 1, 2] would run as two passes over the weights.
        for seq in sorted(self._active, key=lambda s: s.seq_id):
            seq.batch_index = -1
            if not seq.prefilling and seq.next_token is not None:
                seq.batch_index = batch_add(self.batch, seq.next_token, seq.n_past,
                                            seq.seq_id, True)
                seq.fed.append(seq.next_token)
                seq.n_past += 1
            elif seq in chunks:
                end, first = chunks[seq]
                last = len(seq.prompt) - 1
                for pos in range(seq.n_past, end):
                    idx = batch_add(self.batch, seq.prompt[pos], pos, seq.seq_id,
                                    pos >= first or pos == last)
                    if pos >= first and pos < last:
                        scored.append((seq, pos, idx))
                seq.fed.extend(seq.prompt[seq.n_past:end])
                seq.n_past = end
                if not seq.prefilling:
                    seq.batch_index = idx
        self.ctx.decode(self.batch)
        for seq, pos, idx in scored:
            seq.prompt_logits(pos, logits_row(self.ctx, idx, self.n_vocab))
        for seq in list(self._active):
            if seq.batch_index < 0:
                continue
            if seq.params.max_tokens <= 0:  # prompt scoring only (echo, max_tokens 0)
                self._release(seq)
                seq.emit(("finish", seq.index, "length", 0))
                continue
            logits = None
            if seq.sampler is None:
                logits = logits_row(self.ctx, seq.batch_index, self.n_vocab)
                token = int(logits.argmax())
            else:
                token = seq.sampler.sample(self.ctx, seq.batch_index)
                if seq.params.logprobs:
                    logits = logits_row(self.ctx, seq.batch_index, self.n_vocab)
            if not seq.params.logprobs:
                logits = None
            delta, finish = seq.text.push(token, logits)
            if delta is not None:
                seq.emit(("delta", seq.index, delta))
            if finish is not None:
                self._release(seq)  # first, so a caller told "finished" finds the slot free
                seq.emit(("finish", seq.index, finish, seq.text.completion_tokens))
            else:
                seq.next_token = token

