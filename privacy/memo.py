"""Detection results of texts seen before, kept for the next request that sends them.

A chat client resends the whole conversation every turn, and an application sends the
same system prompt with every request: without a memo, every byte of history is
scanned again on every turn, so detection grows with the conversation's length instead
of the new turn's. A detector whose result depends on its text alone (``pii``,
``names``, ``ner``; ``remembered``, which keys it with the salt and run length too)
keeps one ``TextMemo`` as ``memo``. It lives in process memory only (never the state
store, never a log), bounded by characters and entries, oldest out first.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class TextMemo(Generic[T]):
    """text -> ``compute(text)``, for a pure ``compute``. Thread-safe: long bodies are
    analysed in worker threads while short ones are analysed on the event loop."""

    def __init__(self, max_chars: int = 2_000_000, max_entries: int = 8192) -> None:
        self.max_chars, self.max_entries = max_chars, max_entries
        self._results: dict[str, T] = {}
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._results)

    def clear(self) -> None:
        with self._lock:
            self._results.clear()
            self._chars = 0

    def get(self, text: str, compute: Callable[[str], T]) -> T:
        with self._lock:
            if text in self._results:
                return self._results[text]
        result = compute(text)  # outside the lock: two threads may both compute it
        if len(text) > self.max_chars:
            return result
        with self._lock:
            if text not in self._results:
                self._results[text] = result
                self._chars += len(text)
                while self._chars > self.max_chars or len(self._results) > self.max_entries:
                    oldest = next(iter(self._results))
                    del self._results[oldest]
                    self._chars -= len(oldest)
        return result
