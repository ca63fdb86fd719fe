"""Proxy-tuned decoding of up to ``slots`` sequences at once, each step one CUDA graph.

The base (M=1) and the expert/anti-expert pair (M=2, stacked) keep static KV caches
with one slot per sequence; active sequences occupy slots 0..n-1 (``move`` compacts
when one leaves), and a step runs the graph captured for the smallest batch bucket
>= n and the smallest span bucket that holds every active sequence. All per-token
state (the pending token, the positions, the sampling parameters) lives on the device
and is advanced inside the graph, so a step's only host traffic is reading back the
new token ids.

A plain step feeds each sequence's pending token to the base and, on a second stream
captured into the same graph, to the pair; fuses; samples. A speculative step lets
the pair draft k tokens from ``anti + alpha * (expert - anti)`` (the anti-expert stands
in for the untuned base, so this is the expert steered toward the fused distribution;
alpha = 1 drafts from the expert alone), then the base scores all k + 1 positions in
one pass; the pair's scores at those positions were computed while drafting and are
reused, bit for bit the ones a plain step would compute.
"""

from __future__ import annotations

from typing import Callable

import torch

from clients.gpu import sampling
from clients.gpu.llama import Kernels, LlamaStack

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


class ProxyEngine:
    def __init__(self, base: LlamaStack, pair: LlamaStack, alpha: float, slots: int = 8,
                 capacity: int = 2048, graphs: bool = True, kernels: Kernels | None = None,
                 streams: bool = True, min_span: int = 256) -> None:
        if base.shape.vocab < pair.shape.vocab:
            raise ValueError("the base's vocabulary is smaller than the expert's")
        if pair.m != 2:
            raise ValueError("pair must stack the expert and the anti-expert (M=2)")
        self.base, self.pair, self.alpha = base, pair, float(alpha)
        self.vocab = pair.shape.vocab  # the shared range; extra base rows are cut
        self.slots, self.capacity, self.kernels = slots, capacity, kernels
        self.device = base.device
        self.use_graphs = graphs and str(self.device).startswith("cuda")
        self.side = torch.cuda.Stream() if self.use_graphs and streams else None
        self.base_cache = base.new_cache(slots, capacity)
        self.pair_cache = pair.new_cache(slots, capacity)
        d = self.device
        self.pending = torch.zeros(slots, dtype=torch.long, device=d)
        self.pos = torch.zeros(slots, dtype=torch.long, device=d)
        self.temp = torch.zeros(slots, dtype=torch.float32, device=d)
        self.top_p = torch.ones(slots, dtype=torch.float32, device=d)
        self.seed = torch.zeros(slots, dtype=torch.long, device=d)
        self.last_fused = torch.zeros(slots, self.vocab, dtype=torch.float32, device=d)
        self.spans = []
        s = min_span
        while s < capacity:
            self.spans.append(s)
            s *= 2
        self.spans.append(capacity)
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    # -- buckets ---------------------------------------------------------------------
    def span_for(self, length: int) -> int:
        for s in self.spans:
            if length <= s:
                return s
        raise ValueError(f"{length} positions exceed the cache capacity {self.capacity}")

    def batch_for(self, n: int) -> int:
        b = next((b for b in BATCH_BUCKETS if b >= n), n)
        return min(b, self.slots)

    @staticmethod
    def _view(cache: list, b: int, start: int = 0) -> list:
        return [(k[:, start:start + b], v[:, start:start + b]) for k, v in cache]

    # -- admission -------------------------------------------------------------------------
    def prefill(self, slot: int, prompt: list[int], temp: float = 0.0, top_p: float = 1.0,
                seed: int = 0) -> int:
        """Run the prompt through the three models into ``slot``; return the first token."""
        n = len(prompt)
        if not 0 < n < self.capacity:
            raise ValueError(f"prompt of {n} tokens for a cache of {self.capacity}")
        d = self.device
        toks = torch.tensor([prompt], dtype=torch.long, device=d)
        zero = torch.zeros(1, dtype=torch.long, device=d)
        span = self.span_for(n)
        with torch.inference_mode():
            bl = self.base.forward(toks, zero, self._view(self.base_cache, 1, slot), span,
                                   self.kernels)
            pl = self.pair.forward(toks, zero, self._view(self.pair_cache, 1, slot), span,
                                   self.kernels)
            v = self.vocab
            fused = sampling.fuse(bl[0, :, -1, :v], pl[0, :, -1], pl[1, :, -1], self.alpha)
            self.temp[slot], self.top_p[slot], self.seed[slot] = temp, top_p, seed
            sl = slice(slot, slot + 1)
            tok = sampling.next_tokens(fused, self.temp[sl], self.top_p[sl], self.seed[sl],
                                       torch.full((1,), n, device=d), temp <= 0)
            self.last_fused[slot] = fused[0]
            self.pending[slot] = tok[0]
            self.pos[slot] = n
        return int(tok[0])

    def release(self, slot: int) -> None:
        """A finished slot: park it at position 0 so padded rows stay inside the cache."""
        self.pos[slot] = 0
        self.pending[slot] = 0

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Make slot ``dst`` a copy of ``src`` (its first ``length`` cached positions)."""
        with torch.inference_mode():
            for cache in (self.base_cache, self.pair_cache):
                for k, v in cache:
                    k[:, dst, :, :length] = k[:, src, :, :length]
                    v[:, dst, :, :length] = v[:, src, :, :length]
            for t in (self.pending, self.pos, self.temp, self.top_p, self.seed,
                      self.last_fused):
                t[dst] = t[src]

    def move(self, src: int, dst: int, length: int) -> None:
        """Move sequence ``src`` into the free slot ``dst`` (keeps active slots dense)."""
        self.copy_slot(src, dst, length)
        self.release(src)

    # -- the captured steps ------------------------------------------------------------------
    def _beside(self, side_fn: Callable, main_fn: Callable) -> tuple:
        """Run ``side_fn`` on the side stream while ``main_fn`` runs on this one (both
        captured into one graph as parallel branches); eager without a side stream."""
        if self.side is None:
            return side_fn(), main_fn()
        cur = torch.cuda.current_stream()
        self.side.wait_stream(cur)
        with torch.cuda.stream(self.side):
            a = side_fn()
        b = main_fn()
        cur.wait_stream(self.side)
        return a, b

    def _plain(self, b: int, span: int, greedy: bool) -> torch.Tensor:
        """Feed the pending tokens, fuse, sample; advance pending/pos. Returns tokens [b]."""
        tok, pos = self.pending[:b, None], self.pos[:b]
        pl, bl = self._beside(
            lambda: self.pair.forward(tok, pos, self._view(self.pair_cache, b), span,
                                      self.kernels),
            lambda: self.base.forward(tok, pos, self._view(self.base_cache, b), span,
                                      self.kernels))
        fused = sampling.fuse(bl[0, :, 0, :self.vocab], pl[0, :, 0], pl[1, :, 0], self.alpha)
        self.last_fused[:b] = fused
        new = sampling.next_tokens(fused, self.temp[:b], self.top_p[:b], self.seed[:b],
                                   pos + 1, greedy)
        self.pending[:b] = new
        self.pos[:b] += 1
        return new.clone()

    def _speculative(self, b: int, span: int, greedy: bool, k: int) -> torch.Tensor:
        """Draft k tokens with the pair, verify with one base pass over k + 1 positions
        (the pair's scores after the last draft run beside it, on the side stream).
        Returns [b, k+2]: up to k + 1 tokens, then how many of them are valid."""
        temp, top_p, seed = self.temp[:b], self.top_p[:b], self.seed[:b]
        pos, a = self.pos[:b], self.alpha
        pair_view = self._view(self.pair_cache, b)
        cur = self.pending[:b]
        fed, drafts, qs, experts, antis = [cur], [], [], [], []
        for i in range(k):
            pl = self.pair.forward(cur[:, None], pos + i, pair_view, span, self.kernels)
            experts.append(pl[0, :, 0])
            antis.append(pl[1, :, 0])
            steer = pl[1, :, 0] + a * (pl[0, :, 0] - pl[1, :, 0])
            if greedy:
                cur = steer.argmax(-1)
            else:
                q = sampling.probs(steer, temp, top_p)
                cur = sampling.draw(q, sampling.uniform(seed, pos + i + 1, sampling.DRAFT))
                qs.append(q)
            drafts.append(cur)
            fed.append(cur)
        last = cur
        pl, bl = self._beside(
            lambda: self.pair.forward(last[:, None], pos + k, pair_view, span, self.kernels),
            lambda: self.base.forward(torch.stack(fed, 1), pos,
                                      self._view(self.base_cache, b), span, self.kernels))
        experts.append(pl[0, :, 0])
        antis.append(pl[1, :, 0])
        fused = sampling.fuse(bl[0, :, :, :self.vocab], torch.stack(experts, 1),
                              torch.stack(antis, 1), a)  # [b, k+1, V]
        d = torch.stack(drafts, 1)
        if greedy:
            tokens, valid = sampling.accept_greedy(d, fused)
        else:
            tokens, valid = sampling.accept_sampled(d, torch.stack(qs, 1), fused, temp, top_p,
                                                    seed, pos)
        self.pending[:b] = tokens.gather(1, (valid - 1)[:, None])[:, 0]
        self.pos[:b] += valid
        return torch.cat([tokens, valid[:, None]], 1)

    def _run(self, key: tuple, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Replay the graph for ``key`` (captured on first use), or run eagerly."""
        with torch.inference_mode():
            if not self.use_graphs:
                return fn()
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(fn)
                self._graphs[key] = entry
            entry[0].replay()
            return entry[1]

    def _capture(self, fn: Callable[[], torch.Tensor]):
        # The warm-up runs advance pending/pos; put them back before the real step.
        saved = (self.pending.clone(), self.pos.clone())
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # compiles kernels and settles cuBLAS workspaces
                fn()
                self.pending.copy_(saved[0])
                self.pos.copy_(saved[1])
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(g, pool=self._pool):
            out = fn()
        self.pending.copy_(saved[0])
        self.pos.copy_(saved[1])
        return g, out

    def step(self, n: int, max_pos: int, greedy: bool) -> list[int]:
        """One token for each of the first ``n`` slots; ``max_pos`` is the largest
        position of their pending tokens (their lengths so far)."""
        b = self.batch_for(n)
        span = self.span_for(max_pos + 1)
        out = self._run(("plain", b, span, greedy), lambda: self._plain(b, span, greedy))
        return out[:n].tolist()

    def spec_step(self, n: int, max_pos: int, greedy: bool, k: int) -> list[list[int]]:
        """Up to k + 1 tokens for each of the first ``n`` slots."""
        b = self.batch_for(n)
        span = self.span_for(max_pos + k + 1)
        out = self._run(("spec", b, span, greedy, k),
                        lambda: self._speculative(b, span, greedy, k))
        rows = out[:n].tolist()
        return [r[:r[-1]] for r in rows]
