"""The thread that owns the GPU engine: admits requests into free slots, steps every
active sequence together (plain or speculative, the draft length chosen from the
measured acceptance), turns token ids into text and stops each sequence on EOS, a stop
string, ``max_tokens`` or cancellation. The event loop only ever awaits its events.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass, field
from typing import Callable

from clients.gpu.speculation import DraftLength

log = logging.getLogger("tandem.gpu")


class Detokenizer:
    """Token ids in, text out, one token at a time: decodes a short window so that
    pieces that depend on their left neighbour (SentencePiece's leading space, UTF-8
    split across byte tokens) come out right, and holds back a partial character."""

    def __init__(self, tokenizer, prompt: list[int]) -> None:
        self.tok = tokenizer
        self.ids = list(prompt[-6:])
        self.prefix, self.read = 0, len(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return now[len(before):]
        return ""

    def flush(self) -> str:
        """What was held back (an incomplete character stays a replacement character)."""
        before = self.tok.decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        now = self.tok.decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return now[len(before):]


@dataclass
class Sequence:
    """One generation: its prompt, its limits and where its events go."""

    prompt: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: list[str]
    emit: Callable[[tuple], None]  # ("delta", text) / ("finish", reason, n) / ("error", msg)
    cancel: threading.Event
    generated: int = 0
    pos: int = 0
    done: bool = False
    _text: object = field(default=None, repr=False)
    _stops: object = field(default=None, repr=False)

    def start(self, tokenizer) -> None:
        from clients.llama_cpp.decoding import StopBuffer

        self._text = Detokenizer(tokenizer, self.prompt)
        self._stops = StopBuffer(self.stop)

    def push(self, tokens: list[int], eos: set[int]) -> None:
        """Take the tokens of one step (stops at the first that ends the sequence)."""
        for t in tokens:
            if t in eos:
                return self._finish("stop", flush=True)
            self.generated += 1
            text, stopped = self._stops.push(self._text.push(t))
            if text:
                self.emit(("delta", text))
            if stopped:
                return self._finish("stop", flush=False)
            if self.generated >= self.max_tokens:
                return self._finish("length", flush=True)

    def _finish(self, reason: str, flush: bool) -> None:
        """End the sequence; ``flush`` (not after a stop string) sends held-back text."""
        if flush:
            text, stopped = self._stops.push(self._text.flush())
            tail = text if stopped else text + self._stops.flush()
            if tail:
                self.emit(("delta", tail))
        self.done = True
        self.emit(("finish", reason, self.generated))


class Scheduler:
    def __init__(self, engine, tokenizer, eos: set[int], speculative: bool, max_draft: int,
                 name: str) -> None:
        self.engine, self.tokenizer, self.eos = engine, tokenizer, eos
        self.drafts = (DraftLength(engine.base.weight_bytes, engine.pair.weight_bytes,
                                   max_k=max_draft) if speculative else None)
        self.active: list[Sequence] = []
        self._queue: collections.deque[Sequence] = collections.deque()
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"gpu-{name}", daemon=True)
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._wake:
            self._queue.append(seq)
            self._wake.notify()

    def waiting(self) -> int:
        return len(self._queue)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._queue and not self.active:
                    self._wake.wait()
                if self._closed:
                    break
            try:
                self._admit()
                self._retire()
                if self.active:
                    self._step()
                    self._retire()
            except Exception as err:  # a failed step fails its sequences, not the thread
                log.exception("gpu engine step failed")
                for seq in self.active:
                    seq.emit(("error", str(err)))
                for i in range(len(self.active)):
                    self.engine.release(i)
                self.active.clear()
        for seq in [*self.active, *self._queue]:
            seq.emit(("error", "the model is shutting down"))

    def _admit(self) -> None:
        while self._queue and len(self.active) < self.engine.slots:
            seq = self._queue.popleft()
            if seq.cancel.is_set():
                continue
            seq.start(self.tokenizer)
            slot = len(self.active)
            first = self.engine.prefill(slot, seq.prompt, seq.temperature, seq.top_p, seq.seed)
            seq.pos = len(seq.prompt)
            self.active.append(seq)
            seq.push([first], self.eos)

    def _retire(self) -> None:
        """Drop finished or cancelled sequences, keeping the active slots dense."""
        i = 0
        while i < len(self.active):
            seq = self.active[i]
            if not (seq.done or seq.cancel.is_set()):
                i += 1
                continue
            last = len(self.active) - 1
            if i != last:
                self.engine.move(last, i, self.active[last].pos)
                self.active[i] = self.active[last]
            else:
                self.engine.release(i)
            self.active.pop()

    def _step(self) -> None:
        seqs = self.active
        n = len(seqs)
        greedy = all(s.temperature <= 0 for s in seqs)
        max_pos = max(s.pos for s in seqs)
        room = min(min(s.max_tokens - s.generated for s in seqs),
                   self.engine.capacity - 1 - max_pos)
        k = self.drafts.choose(room) if self.drafts else 0
        if k > 0:
            rows = self.engine.spec_step(n, max_pos, greedy, k)
            self.drafts.observe(k, [len(r) for r in rows])
        else:
            rows = [[t] for t in self.engine.step(n, max_pos, greedy)]
        for seq, row in zip(seqs, rows):
            seq.pos += len(row)
            seq.push(row, self.eos)
