"""How many tokens to draft, chosen from the measured acceptance rate (no torch here).

With per-token acceptance probability ``a``, a round that drafts k tokens emits
(1 - a^(k+1)) / (1 - a) tokens on average and costs k+1 steps of the expert/anti pair
plus one base pass over k+1 positions (at decode-sized batches that pass costs about
what one position does: the weights are read once). Both costs are proportional to the
bytes of weights read, so the choice needs no timing: k maximises tokens per byte, and
k = 0 (a plain step) wins when drafts are rarely accepted. Acceptance is re-measured
with a short draft every ``probe_every`` plain steps so that a run that starts badly can
recover.
"""

from __future__ import annotations


class DraftLength:
    def __init__(self, base_bytes: float, pair_bytes: float, max_k: int = 8,
                 prior: float = 0.7, decay: float = 0.9, probe_every: int = 16) -> None:
        self.base, self.pair = float(base_bytes), float(pair_bytes)
        self.max_k, self.decay, self.probe_every = max_k, decay, probe_every
        # Pseudo-counts of kept and rejected drafts (a prior worth 5 drafts).
        self.kept, self.rejected = 5 * prior, 5 * (1 - prior)
        self._plain_steps = 0

    @property
    def acceptance(self) -> float:
        return self.kept / (self.kept + self.rejected)

    def tokens_per_byte(self, k: int) -> float:
        a = min(self.acceptance, 0.999)
        emitted = (1 - a ** (k + 1)) / (1 - a)
        return emitted / (self.base + (k + 1) * self.pair)

    def choose(self, room: int | None = None) -> int:
        """The draft length for the next round; ``room`` caps it (tokens left to the
        shortest max_tokens or to the cache's end)."""
        cap = self.max_k if room is None else max(0, min(self.max_k, room - 1))
        best = max(range(cap + 1), key=self.tokens_per_byte)
        if best == 0 and cap > 0:
            self._plain_steps += 1
            if self._plain_steps >= self.probe_every:
                self._plain_steps = 0
                return min(2, cap)
        return best

    def observe(self, k: int, emitted: list[int]) -> None:
        """Update from one round: ``emitted`` is the token count of each row (kept + 1)."""
        if k == 0:
            return
        kept = sum(e - 1 for e in emitted)
        rejected = sum(1 for e in emitted if e - 1 < k)
        self.kept = self.decay * self.kept + kept
        self.rejected = self.decay * self.rejected + rejected
