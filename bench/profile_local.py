"""Where a gateway's time goes under 8 concurrent local streams: py-spy samples the
gateway process (``--native --threads --idle``, 200 Hz) while 8-stream rounds of 64
tokens run back to back, then the samples are summed per thread and per innermost
Python frame. py-spy comes from PyPI (``pip install py-spy``).

    .venv/bin/python bench/profile_local.py [--seconds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import emit_json, machine, print_table  # noqa: I001

from clients.model_store import resolve
from local_concurrency import level
from tests.support.servers import start_gateway


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=12)
    args = ap.parse_args()
    path = resolve("qwen2.5-coder-0.5b-instruct", progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="tandem-spy-"))
    raw = tmp / "spy.raw"
    gw = start_gateway({"models": {"local": {"backend": "llama_cpp", "model": str(path),
                                             "n_ctx": 4096, "parallel": 8}},
                        "routing": {"default": "local"}}, tmp)
    try:
        asyncio.run(level(gw.url, "local", 1, 4))
        spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                "--native", "-r", "200", "-d", str(args.seconds), "-f", "raw",
                                "-o", str(raw), "-p", str(gw.proc.pid), "--threads", "--idle"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        t0 = time.time()
        while time.time() - t0 < args.seconds - 2:
            asyncio.run(level(gw.url, "local", 8, 64))
        spy.wait()
    finally:
        gw.stop()
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        thread = frames[0].split(": ", 1)[-1]
        py = [f for f in frames if ".py:" in f]
        per_thread[thread][py[-1].split(" (")[0] if py else frames[-1][:60]] += int(n)
    rows, out = [], {}
    for thread in ("llama-batch-local", "MainThread"):
        counts = per_thread.get(thread, collections.Counter())
        total = sum(counts.values()) or 1
        for frame, n in counts.most_common(6):
            rows.append([thread, frame, n, n / total])
        out[thread] = {frame: round(n / total, 4) for frame, n in counts.most_common(6)}
    print(f"profile_local: {machine()}; py-spy, {args.seconds} s of 8 x 64-token streams")
    print_table(["thread", "innermost Python frame", "samples", "share"], rows)
    emit_json({"bench": "profile_local", **out})


if __name__ == "__main__":
    main()
