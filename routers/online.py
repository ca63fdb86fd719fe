"""The live router behind ``tandem``: a learned scorer that follows its traffic.

- **Threshold tracking.** With a ``cloud_fraction``, the threshold is the (1 − f) quantile
  of the scores of the last ``track_window`` requests (the checkpoint's calibration
  scores until enough traffic is seen), so the actual cloud share stays on target when
  the traffic differs from the data the router was trained on.
- **Learning** (routers/learning.py does the arithmetic): every routed response is
  remembered for ``feedback_ttl_s`` as a sparse embedding (never the text), feedback
  turns it into a label in the shared state store, ``explore`` sends a share of requests
  to the model the router did not pick, and every ``retrain_every`` new labels a worker
  process retrains, gates and recalibrates; the event loop only loads the new file
  (in a thread) and swaps a reference.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import multiprocessing
import random
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from routers import checkpoint, learning
from routers.base import LearnedRouter, Router
from routers.embed import latest_user_text
from routers.evaluate import threshold_for_fraction

log = logging.getLogger("tandem.router")
MIN_TRACKED = 20  # recent scores needed before they replace the calibration scores
STEER_AFTER = 50  # decisions in the window before the share's own error steers the aim


class FeedbackNotFound(LookupError):
    """No response with that request id (unknown, expired, or another key's)."""


@dataclass(frozen=True)
class Checkpoint:
    """One version of the scorer and what is known about it."""

    version: int
    scorer: Any
    path: str
    labels: int = 0
    heldout_apgr: float | None = None
    gate: str = "shipped checkpoint"
    trained_at: float = 0.0
    calibration: Any = None


class LiveRouter(Router):
    """Scores with the current checkpoint; tracks, explores and learns when configured."""

    def __init__(self, base: LearnedRouter, kind: str, routing, store=None,
                 metrics=None) -> None:
        cfg = routing.router
        self.kind, self.embedder, self.base = kind, base.embedder, base
        self.cloud_fraction, self.fixed_threshold = cfg.cloud_fraction, cfg.threshold
        self.learning_cfg = routing.learning
        self.learning = routing.learning.enabled and store is not None
        self.store, self.metrics = store, metrics
        self.current = Checkpoint(1, base.scorer, base.source,
                                  heldout_apgr=_meta_apgr(base.source),
                                  calibration=base.calibration)
        self.recent_scores: collections.deque[float] = collections.deque(
            maxlen=max(cfg.track_window, 1))
        self.tracking = cfg.cloud_fraction is not None and cfg.track_window > 0
        self.recent_embeddings: collections.deque[bytes] = collections.deque(maxlen=1000)
        self.recent_strong: collections.deque[bool] = collections.deque(maxlen=1000)
        self._strong_in_window = 0  # sum(recent_strong), kept as decisions come and go
        self._thresholds: dict[float, tuple[int, float]] = {}
        self._decisions = 0
        self._rng = random.Random()
        self._executor: ProcessPoolExecutor | None = None
        self._retraining: asyncio.Task | None = None
        self._poller: asyncio.Task | None = None
        self.trained_on = 0  # label count the current checkpoint has seen
        self._sent = 0  # labels the retrain worker holds (it is sent only the ones after)
        self.last_retrain: dict[str, Any] | None = None
        self.history: collections.deque[dict] = collections.deque(maxlen=50)

    # -- scoring and thresholds (on the loop: bounded, sub-millisecond) -------------
    def embed(self, messages: list[dict]) -> np.ndarray:
        return self.base.embed(messages)

    def score_embedding(self, e: np.ndarray) -> float:
        return float(self.current.scorer.score(e))

    def p_strong(self, messages: list[dict]) -> float:
        return self.score_embedding(self.embed(messages))

    def embed_and_score(self, messages: list[dict]) -> tuple[np.ndarray, float]:
        """The embedding (kept for feedback) and its score, in one pass per decision."""
        e = self.embed(messages)
        return e, self.score_embedding(e)

    def decide(self, p: float, threshold: float, cloud_fraction: float | None) -> bool:
        """p >= threshold; where many recent scores tie at the threshold (kNN votes are
        often exactly 0 or 1), a tie goes strong with the probability that keeps the
        share on target."""
        fraction = cloud_fraction if cloud_fraction is not None else self.cloud_fraction
        if (p != threshold or fraction is None or not self.tracking
                or len(self.recent_scores) < MIN_TRACKED):
            return p >= threshold
        if cloud_fraction is None:  # a tie is split towards the steered aim, as the threshold
            fraction = self.aim(fraction)
        scores = np.fromiter(self.recent_scores, float)
        above, tied = float((scores > threshold).mean()), float((scores == threshold).mean())
        return tied > 0 and self._rng.random() < (fraction - above) / tied

    def threshold_for(self, cloud_fraction: float) -> float:
        """The threshold for ``cloud_fraction`` of traffic: recent scores once there are
        enough of them, else the checkpoint's calibration scores."""
        if self.tracking and len(self.recent_scores) >= MIN_TRACKED:
            cached = self._thresholds.get(cloud_fraction)
            if cached is None or self._decisions - cached[0] >= 25:
                t = float(np.quantile(np.fromiter(self.recent_scores, float),
                                      1.0 - cloud_fraction))
                self._thresholds[cloud_fraction] = (self._decisions, t)
                return t
            return cached[1]
        if self.current.calibration is None:
            return self.base.threshold_for(cloud_fraction)  # raises with the remedy
        return threshold_for_fraction(self.current.calibration, cloud_fraction)

    def aim(self, fraction: float) -> float:
        """The share to aim the next decisions at: the target plus what the recent window
        missed it by, so that an early miss (the checkpoint's calibration on traffic
        unlike its data) is paid back instead of kept. Quantised, so thresholds cache."""
        actual = self.actual_fraction()
        if not self.tracking or actual is None or len(self.recent_strong) < STEER_AFTER:
            return fraction
        aimed = min(2 * fraction, 1.0, max(fraction / 2, 2 * fraction - actual))
        return round(aimed, 3)

    def threshold(self, cloud_fraction: float | None = None) -> tuple[float, str]:
        """(threshold, where it came from) for the policy or a key's own fraction (a key's
        own is not steered: the window's share is the whole traffic's)."""
        fraction = cloud_fraction if cloud_fraction is not None else self.cloud_fraction
        if fraction is None:
            return self.fixed_threshold, "configured threshold"
        tracked = self.tracking and len(self.recent_scores) >= MIN_TRACKED
        if not tracked:
            return self.threshold_for(fraction), f"threshold for cloud_fraction {fraction:g}"
        aimed = self.aim(fraction) if cloud_fraction is None else fraction
        source = f"cloud_fraction {fraction:g} of the last {len(self.recent_scores)} requests"
        if aimed != fraction:
            source += f", aiming at {aimed:g} to pay back the window's {self.actual_fraction():.3f}"
        return self.threshold_for(aimed), source

    def observe(self, p: float, e: np.ndarray | None) -> None:
        """A scored `tandem` request (before any exploration)."""
        self._decisions += 1
        self.recent_scores.append(p)
        if e is not None and self.learning:
            self.recent_embeddings.append(orjson.dumps(learning.sparse(e)))

    def went(self, strong: bool) -> None:
        if len(self.recent_strong) == self.recent_strong.maxlen:
            self._strong_in_window -= self.recent_strong[0]
        self.recent_strong.append(strong)
        self._strong_in_window += strong
        if self.metrics is not None:
            self.metrics.router_actual_fraction.set(self.actual_fraction() or 0.0)

    def explore(self, to_strong: bool, cloud_fraction: float | None) -> bool:
        """True when this request should go to the other model. Flips are balanced so
        that exploring does not move the cloud share: strong→weak with probability ε,
        weak→strong with ε·f/(1−f)."""
        eps = self.learning_cfg.explore if self.learning else 0.0
        if eps <= 0:
            return False
        f = cloud_fraction if cloud_fraction is not None else (self.cloud_fraction or 0.5)
        rate = eps if to_strong else min(1.0, eps * f / max(1e-9, 1 - f))
        return self._rng.random() < rate

    def actual_fraction(self) -> float | None:
        n = len(self.recent_strong)
        return self._strong_in_window / n if n else None

    # -- learning ---------------------------------------------------------------------
    async def start(self) -> None:
        if self.learning:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def close(self) -> None:
        for task in (self._poller, self._retraining):
            if task is not None:
                task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def remember(self, request_id: str, key: str | None, model: str, role: str,
                       p: float | None, explored: bool, e: np.ndarray) -> None:
        """What this response was, so that feedback on it can become a label."""
        record = {"key": key, "model": model, "role": role, "p": p, "explored": explored,
                  "ts": time.time(), "x": learning.sparse(e)}
        await self.store.put(f"router:resp:{request_id}", orjson.dumps(record),
                             self.learning_cfg.feedback_ttl_s)

    async def feedback(self, request_id: str, key: str | None, score: float,
                       source: str = "feedback") -> dict:
        raw = await self.store.get(f"router:resp:{request_id}")
        record = orjson.loads(raw) if raw else None
        if record is None or record.get("key") != key:
            raise FeedbackNotFound(request_id)
        label = {"id": request_id, "role": record["role"], "model": record["model"],
                 "score": float(score), "x": record["x"], "explored": record["explored"],
                 "source": source, "ts": time.time()}
        total = await self.store.append("router:labels", orjson.dumps(label))
        if self.metrics is not None:
            self.metrics.router_labels.labels(source, record["role"]).inc()
        self.maybe_retrain(total)
        return {"labels": total, "role": record["role"], "model": record["model"]}

    def sample_judge(self) -> bool:
        judge = self.learning_cfg.judge
        return judge is not None and self._rng.random() < judge.sample

    async def judge(self, client, request_id: str, key: str | None, messages: list[dict],
                    answer: str) -> None:
        """The judge model rates one answer 1–10; the rating becomes a label (a caller's
        own feedback on the same request wins over it)."""
        from routers.label import JUDGE_PROMPT, judge_score

        question = latest_user_text(messages)
        try:
            result = await client.chat({"model": client.name, "temperature": 0, "max_tokens": 4,
                                        "messages": [{"role": "user", "content": JUDGE_PROMPT.format(
                                            q=question, ref="", a=answer)}]})
            score = judge_score(result["choices"][0]["message"]["content"] or "")
            if score is not None:
                await self.feedback(request_id, key, score, source="judge")
        except Exception:  # noqa: BLE001 - a judge that fails teaches nothing, breaks nothing
            log.warning("router: judge failed for request %s", request_id, exc_info=True)

    def maybe_retrain(self, total: int) -> None:
        if (total - self.trained_on >= self.learning_cfg.retrain_every
                and (self._retraining is None or self._retraining.done())):
            self._retraining = asyncio.get_running_loop().create_task(self._retrain(total))

    async def _poll(self) -> None:
        """Replicas share labels: look for ones stored by another replica."""
        while True:
            await asyncio.sleep(self.learning_cfg.poll_s)
            try:
                self.maybe_retrain(await self.store.length("router:labels"))
            except Exception:  # noqa: BLE001 - a store hiccup must not end the poller
                log.warning("router: could not read the label count", exc_info=True)

    async def label_count(self) -> int:
        return await self.store.length("router:labels") if self.learning else 0

    async def _retrain(self, total: int) -> None:
        started = time.perf_counter()
        try:
            result = await self._run_job(self._sent)
            self._sent = result.pop("labels_seen")
            if result["outcome"] == "accepted":
                scorer, meta = await asyncio.to_thread(
                    checkpoint.load, result["path"], self.embedder.name, self.embedder.dim)
                result["new"] = Checkpoint(result["version"], scorer, result["path"],
                                           result["traffic_labels"], result["new_apgr"],
                                           result["gate"], result.pop("trained_at"),
                                           meta["calibration_scores"])
        except Exception as err:  # noqa: BLE001 - a failed retrain changes nothing
            log.error("router retrain failed, version %d keeps serving: %s",
                      self.current.version, err)
            result = {"outcome": "failed", "error": f"{type(err).__name__}: {err}"}
        self.trained_on = max(self.trained_on, total)
        result.update(labels=total, seconds=round(time.perf_counter() - started, 3),
                      at=time.time())
        new, recent = result.pop("new", None), result.pop("recent_scores", None)
        if result["outcome"] == "accepted" and new is not None:
            self.current = new  # one reference swap: requests in flight keep the old one
            self._thresholds.clear()
            if recent:
                self.recent_scores.clear()
                self.recent_scores.extend(recent)
        self.last_retrain = result
        self.history.append({k: result.get(k) for k in ("outcome", "version", "labels",
                                                         "seconds", "at", "new_apgr")})
        if self.metrics is not None:
            self.metrics.router_retrains.labels(result["outcome"]).inc()
            self.metrics.router_version.set(self.current.version)
            if self.current.heldout_apgr is not None:
                self.metrics.router_heldout_apgr.set(self.current.heldout_apgr)
        log.warning("router retrain %s: %s", result["outcome"],
                    {k: v for k, v in result.items() if k != "outcome"})
        await self._catch_up()

    async def _catch_up(self) -> None:
        """Labels that came in while this retrain ran (a retrain is skipped while another
        runs) start the next one now, not when some later label happens to arrive."""
        try:
            total = await self.store.length("router:labels")
        except Exception:  # noqa: BLE001 - the next label or poll tries again
            return
        if total - self.trained_on >= self.learning_cfg.retrain_every:
            self._retraining = asyncio.get_running_loop().create_task(self._retrain(total))

    async def _run_job(self, labels_from: int, retry: bool = True) -> dict:
        """``learning.retrain_job`` in the worker process, sent the store's labels from
        index ``labels_from`` on (the worker keeps the others, decoded). The worker starts
        on first use. Every label is sent instead to a new worker, to one that holds a
        different count (it answers ``resend``), and again, once, after one died
        (killed, out of memory)."""
        if self._executor is None:
            labels_from = 0  # a new worker holds nothing
            self._executor = ProcessPoolExecutor(  # SCHED_IDLE: serving keeps the cores first
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=learning.worker_init, initargs=(15,))
        cfg = self.learning_cfg
        base = cfg.base_labels or learning.labels_of(self.base.source)
        job = (self.kind, self.current.version, self.current.path, labels_from,
               await self.store.read("router:labels", labels_from), base,
               cfg.model_dump(exclude={"judge"}), self.embedder.name,
               list(self.recent_embeddings))
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, learning.retrain_job, *job)
        except BrokenProcessPool:
            self._executor = None
            if not retry:
                raise
            log.warning("router: the retrain worker died; starting a new one")
            return await self._run_job(0, retry=False)
        if result["outcome"] == "resend":
            return await self._run_job(0, retry=retry)
        return result

    async def status(self) -> dict:
        threshold, source = self.threshold()
        c = self.current
        return {"object": "tandem.router", "kind": self.kind, "embedder": self.embedder.name,
                "checkpoint": {"version": c.version, "path": c.path,
                               "heldout_apgr": c.heldout_apgr, "gate": c.gate,
                               "labels": c.labels, "trained_at": c.trained_at or None},
                "labels": await self.label_count(),
                "threshold": threshold, "threshold_source": source,
                "cloud_fraction": {"target": self.cloud_fraction,
                                   "actual": self.actual_fraction(),
                                   "window": len(self.recent_strong)},
                "learning": {"enabled": self.learning,
                             "explore": self.learning_cfg.explore if self.learning else 0.0,
                             "retrain_every": self.learning_cfg.retrain_every,
                             "trained_on_labels": self.trained_on,
                             "retraining": bool(self._retraining and not self._retraining.done()),
                             "last_retrain": self.last_retrain,
                             "history": list(self.history)}}


def _meta_apgr(path: str) -> float | None:
    try:
        return checkpoint.load(path)[1].get("apgr")
    except (ValueError, OSError):
        return None
