"""What the batch engine does per step under concurrent streams: a gateway whose engine
logs every step (wall time, time inside ``llama_decode``, sequences active and still
prefilling, tokens in the batch) replays bench/local_concurrency.py's order (warm-up,
each prompt alone, then 1, 2, 4, 8 streams, ``--reps`` rounds each), and per round the
table shows how many prompt tokens were evaluated (the prefix cache's work) and the
median decode step. The trace is written by the gateway process itself (``--serve``
mode of this script), so the numbers are the engine thread's own.

    .venv/bin/python bench/engine_trace.py [--reps 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

import yaml

TRACE_ENV = "TANDEM_ENGINE_TRACE"


def serve_traced(argv: list[str]) -> None:
    """The gateway, with ``BatchEngine._step`` and its decode timed into $TANDEM_ENGINE_TRACE."""
    from clients.llama_cpp import batch_engine
    from server.cli import main as cli

    rows: list[list] = []
    step = batch_engine.BatchEngine._step

    def traced(self) -> None:
        if not hasattr(self, "_decode_s"):
            decode, self._decode_s = self.ctx.decode, 0.0

            def timed(batch) -> None:
                t = time.perf_counter()
                decode(batch)
                self._decode_s = time.perf_counter() - t
            self.ctx.decode = timed
        t = time.perf_counter()
        active, prefilling = len(self._active), sum(s.prefilling for s in self._active)
        step(self)
        rows.append([t, time.perf_counter(), active, prefilling, self.batch.batch.n_tokens,
                     self._decode_s])

    batch_engine.BatchEngine._step = traced

    def flush() -> None:
        while True:
            time.sleep(1.0)
            Path(os.environ[TRACE_ENV]).write_text("\n".join(json.dumps(r) for r in rows))

    threading.Thread(target=flush, daemon=True).start()
    sys.argv = ["tandem", *argv]
    cli()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    from clients.model_store import resolve
    from local_concurrency import LEVELS, level, level_one
    from tests.support.servers import ServerProcess, free_port

    path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-trace-"))
    port = free_port()
    (tmp / "gateway.yaml").write_text(yaml.safe_dump({
        "models": {"local": {"backend": "llama_cpp", "model": str(path), "n_ctx": 4096,
                             "parallel": 8}},
        "routing": {"default": "local"}, "server": {"port": port}}))
    trace = tmp / "trace.jsonl"
    gw = ServerProcess([sys.executable, __file__, "--serve", "serve", "--config",
                        str(tmp / "gateway.yaml"), "--log-level", "warning"],
                       port, "/ready", tmp / "gateway.log", env={TRACE_ENV: str(trace)})

    def steps() -> list[list]:
        text = trace.read_text() if trace.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line]

    rows, summary = [], {}
    try:
        asyncio.run(level(gw.url, "local", 1, 4))
        for i in range(max(LEVELS)):
            level_one(gw.url, i, args.max_tokens)
        for c in LEVELS:
            for rep in range(args.reps):
                time.sleep(1.2)
                seen = len(steps())
                results = asyncio.run(level(gw.url, "local", c, args.max_tokens))
                time.sleep(1.2)  # the trace is flushed every second
                mine = steps()[seen:]
                prefill = sum(r[4] for r in mine if r[3]) - sum(r[2] - r[3] for r in mine if r[3])
                decode = [r[5] * 1000 for r in mine if r[2] == c]
                ttft = max(r["ttft"] for r in results if r["ttft"] is not None)
                rows.append([c, rep, prefill, statistics.median(decode) if decode else float("nan"),
                             ttft])
                summary[f"prefill_tokens_{c}_rep{rep}"] = prefill
    finally:
        gw.stop()
    print(f"engine_trace: {machine()}; Qwen2.5-Coder-0.5B Q4_K_M, parallel 8, "
          f"{args.max_tokens} tokens per stream")
    print_table(["streams", "round", "prompt tokens evaluated", "decode step p50 ms",
                 "worst TTFT s"], rows)
    emit_json({"bench": "engine_trace", **summary})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve_traced(sys.argv[2:])
    else:
        main()
