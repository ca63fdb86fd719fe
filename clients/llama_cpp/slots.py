"""Which slot a new sequence takes, and which cached prefix it starts from.

The batch engine's context holds one KV stream per slot. A finished sequence leaves its
tokens in its slot (the prefix cache). Taking "the free slot with the longest common
prefix" alone thrashes: conversations that share only a system prompt overwrite each
other's slots while empty ones stay unused, so a returning conversation re-evaluates
its whole history. The plan here keeps caches apart and still reuses shared prefixes:

- a free slot costs the prompt tokens still to evaluate plus the cached tokens it would
  destroy (those that are not a prefix of the prompt), counted alike; the cheapest is
  taken, then the one with the longest own prefix, then the least recently used;
- when another slot (free or running) holds a longer prefix of the prompt, by at least
  ``MIN_COPY`` tokens, that slot's KV stream is copied into the chosen one (llama.cpp
  copies a whole stream, a memcpy of a few tens of MB, far cheaper than evaluating the
  tokens again; it is costed as ``MIN_COPY`` tokens) and cut back to the shared prefix;
- running slots should form one run of consecutive ids: with one KV stream per slot,
  llama.cpp splits a batch into one ubatch (one pass over the weights) per run of
  consecutive sequence ids, so running slots {0, 2, 5, 7} cost four passes a step where
  {0, 1, 2, 3} cost one (bench/batch_layout.py). Among equally cheap slots the one
  that leaves fewer runs is taken; a returning conversation keeps its own slot even
  apart from the run (copying it next to the run at once cost every burst of arrivals
  several stream copies, when the burst fills the gaps anyway): the engine moves a
  sequence into a gap that outlasts a few steps (``BatchEngine._compact``).

Pure functions over token lists, so the policy is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

# A copy moves a whole KV stream (24 layers x 4,096 cells x K and V at f16: ~50 MB for
# a 0.5B model): worth it once it saves this many prompt tokens of evaluation (each
# ~5 ms on two cores when batched).
MIN_COPY = 16


@dataclass(frozen=True)
class SlotPlan:
    slot: int  # the free slot the sequence takes
    reuse: int  # prompt tokens whose KV it starts with (kept in the slot or copied in)
    copy_from: int | None = None  # slot whose KV stream is copied into ``slot`` first


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the shared start of two token lists: compared 256 at a time (a slice
    comparison runs in C), then token by token within the first block that differs;
    every slot is checked at each admission, so histories of thousands of tokens must
    stay cheap on the engine thread."""
    a = a if isinstance(a, list) else list(a)  # (a tuple slice never equals a list's)
    b = b if isinstance(b, list) else list(b)
    n, end = 0, min(len(a), len(b))
    while n + 256 <= end and a[n:n + 256] == b[n:n + 256]:
        n += 256
    while n < end and a[n] == b[n]:
        n += 1
    return n


def plan_slot(prompt: Sequence[int], limit: int, free: Mapping[int, Sequence[int]],
              running: Mapping[int, Sequence[int]], last_used: Mapping[int, int],
              min_copy: int = MIN_COPY) -> SlotPlan:
    """The slot for ``prompt`` among ``free`` (slot -> cached tokens, at least one), its
    KV reused for at most ``limit`` tokens (and never the last prompt token, which must
    run for logits); ``running`` slots (slot -> tokens whose KV is in place) can only be
    copied from. ``last_used`` orders slots by release (absent: never used)."""
    cap = max(0, min(limit, len(prompt) - 1))

    def shared(tokens: Sequence[int]) -> int:
        return min(common_prefix(tokens, prompt), cap) if cap else 0

    held = {sid: shared(tokens) for sid, tokens in (*free.items(), *running.items())}

    def plan_for(slot: int) -> tuple[tuple, SlotPlan]:
        own = held[slot]
        source = max((sid for sid in held if sid != slot), key=lambda sid: held[sid],
                     default=None)
        lost = len(free[slot]) - own  # cached tokens this choice destroys
        if source is not None and held[source] - own >= min_copy:
            plan, cost = SlotPlan(slot, held[source], source), lost + min_copy
        else:
            plan, cost = SlotPlan(slot, own), lost
        cost += len(prompt) - plan.reuse  # tokens evaluated now
        return (cost, runs({*running, slot}), -own, last_used.get(slot, -1), slot), plan

    return min((plan_for(slot) for slot in free), key=lambda kp: kp[0])[1]


def runs(slots: Iterable[int]) -> int:
    """How many runs of consecutive ids ``slots`` form ({0, 1, 2} one, {0, 2, 3} two):
    the ubatches llama.cpp splits a batch of these sequences into."""
    ids = sorted(set(slots))
    return sum(1 for i, sid in enumerate(ids) if i == 0 or sid != ids[i - 1] + 1)
