"""Dashboard load time with N requests in the counters (default 10,000).

A gateway app in this process (uvicorn in a thread, lifespan off: no model is loaded,
the stats never touch one) whose counters are driven directly: N finished
RequestRecords over the routes `local`, `cloud` and `tandem` (router scores, the live
router's window), with statuses, streams, fallbacks and privacy blocks mixed in. Then:

- ``compute_stats`` in-process, and ``GET /v1/tandem/stats`` over loopback;
- the page in headless Chromium (Debian's, driven by Playwright): navigation start to
  the first poll's charts drawn (``body[data-state=live]``), a fresh page each time.

    .venv/bin/python bench/dashboard_load.py [--n 10000] [--screenshot docs/dashboard.png]

``--screenshot`` also writes a 1280x900 screenshot with ``chromium --headless``.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from common import emit_json, machine, percentile, print_table  # noqa: I001

import httpx
import uvicorn

from server.app import create_app
from server.config import GatewayConfig
from server.dashboard import compute_stats
from server.observe import RequestRecord

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def config(port: int) -> GatewayConfig:
    return GatewayConfig.model_validate({
        "server": {"port": port, "access_log": False},
        "models": {
            "local": {"backend": "llama_cpp", "model": "qwen2.5-coder-0.5b-instruct"},
            "cloud": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                      "model": "qwen-7b", "price_input_per_mtok": 0.5,
                      "price_output_per_mtok": 1.5},
        },
        "routing": {"default": "local", "fallback": ["cloud", "local"], "strong": "cloud",
                    "weak": "local", "routers": {"classifier": "broad-classifier"},
                    "embedder": "hashing-4096",
                    "router": {"kind": "classifier", "cloud_fraction": 0.3}},
    })


def drive(app, n: int, seed: int = 0) -> None:
    """n requests into the metrics, as ChatService would record them."""
    rng = random.Random(seed)
    runtime = app.state.runtime.current
    metrics, live = runtime.service.metrics, runtime.policy.live
    for i in range(n):
        now = time.perf_counter()  # finish() measures from `started` to its own now
        model = rng.choices(["tandem", "local", "cloud"], [0.7, 0.2, 0.1])[0]
        rec = RequestRecord(f"bench-{i}", model, stream=rng.random() < 0.5)
        if model == "tandem":  # the live router decides, as Policy.route does
            rec.score = rng.betavariate(2, 4)
            rec.rule = "router-classifier"
            strong = live.decide(rec.score, live.threshold()[0], None)
            live.observe(rec.score, None)
            live.went(strong)
            rec.route = "cloud" if strong else "local"
        else:
            rec.route, rec.rule = model, "explicit"
        local = rec.route == "local"
        duration = rng.lognormvariate(-0.2 if local else 0.4, 0.6)
        rec.started = now - duration
        if rec.stream:
            rec.first_token = rec.started + duration * rng.uniform(0.05, 0.3)
        roll = rng.random()
        if roll < 0.01:
            rec.status = 502 if not local else 500
        elif roll < 0.02:  # refused before routing: no model, no first token
            rec.status, rec.route, rec.first_token = 400, "", None
            rec.started = now - rng.uniform(0.0002, 0.002)
        elif roll < 0.025:
            rec.status = 429
        else:
            rec.prompt_tokens = rng.randint(20, 600)
            rec.completion_tokens = rng.randint(5, 300)
        if rec.route == "local" and rng.random() < 0.02:
            metrics.fallbacks.labels("cloud", "local", "before_first_byte").inc()
        if rng.random() < 0.004:
            metrics.egress_blocks.labels("span").inc()
        rec.finish(metrics)


def serve(app, port: int) -> uvicorn.Server:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server


def page_loads(url: str, runs: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for _ in range(runs):
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/ui")
            page.wait_for_selector("body[data-state=live]")
            # navigation start to the first redraw, in the page's own clock
            times.append(page.evaluate("performance.now()") / 1000)
            page.close()
        browser.close()
    return times


def screenshot(url: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--screenshot={out}",
                        "--window-size=1280,900", "--virtual-time-budget=5000",
                        url + "/ui"], check=True, capture_output=True, timeout=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5, help="page loads")
    ap.add_argument("--screenshot", type=Path)
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(config(port))
    started = time.perf_counter()
    drive(app, args.n)
    drive_s = time.perf_counter() - started
    runtime = app.state.runtime.current
    metrics = runtime.service.metrics

    compute = []
    for _ in range(50):
        t = time.perf_counter()
        stats = compute_stats(runtime, metrics, 0.0)
        compute.append(time.perf_counter() - t)
    assert stats["requests"]["total"] == args.n, stats["requests"]["total"]

    server = serve(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        http, size = [], 0
        with httpx.Client() as client:
            for _ in range(50):
                t = time.perf_counter()
                r = client.get(url + "/v1/tandem/stats")
                http.append(time.perf_counter() - t)
                size = len(r.content)
        loads = page_loads(url, args.runs)
        if args.screenshot:
            screenshot(url, args.screenshot)
    finally:
        server.should_exit = True

    ms = lambda xs, q: round(percentile(xs, q) * 1000, 2)  # noqa: E731
    print(f"# dashboard load, {args.n} requests in the counters ({machine()})")
    print(f"# counters driven in {drive_s:.2f} s; stats JSON {size} bytes")
    print_table(["what", "runs", "p50 ms", "p95 ms", "max ms"], [
        ["compute_stats (in-process)", len(compute), ms(compute, 50), ms(compute, 95),
         ms(compute, 100)],
        ["GET /v1/tandem/stats (loopback)", len(http), ms(http, 50), ms(http, 95),
         ms(http, 100)],
        ["page: navigation to charts drawn", len(loads), ms(loads, 50), ms(loads, 95),
         ms(loads, 100)],
    ])
    emit_json({"bench": "dashboard_load", "requests": args.n, "stats_bytes": size,
               "compute_stats_p50_ms": ms(compute, 50), "stats_http_p50_ms": ms(http, 50),
               "stats_http_p95_ms": ms(http, 95), "page_load_p50_ms": ms(loads, 50),
               "page_load_max_ms": ms(loads, 100), "under_1s": max(loads) < 1.0})


if __name__ == "__main__":
    main()
