"""A placebo retrain for bench/router_online.py --placebo-reps: on the path (PYTHONPATH)
of a gateway started with TANDEM_BENCH_PLACEBO_S, the retrain worker's training and
gate (routers.learning.retrain) become that many seconds of nothing that changes
nothing. Labels still flow, the worker still starts, the windows still come and go: only
the retrain's own work is gone. With TANDEM_BENCH_PLACEBO_KIND=sleep the worker sleeps;
with burn it spins on the CPU in a loop that fits in a core's L1 cache, so it takes the
core (under the same SCHED_IDLE and pinning) without touching memory. Bench-only:
nothing in the gateway reads these variables."""

import os

_SECONDS = os.environ.get("TANDEM_BENCH_PLACEBO_S")
if _SECONDS:
    import time

    from routers import learning

    def _placebo(*_args, **_kwargs) -> dict:
        kind = os.environ.get("TANDEM_BENCH_PLACEBO_KIND", "sleep")
        end = time.perf_counter() + float(_SECONDS)
        if kind == "burn":
            x = 0
            while time.perf_counter() < end:
                for i in range(1000):
                    x += i * i
        else:
            time.sleep(float(_SECONDS))
        return {"outcome": "skipped", "reason": f"placebo ({kind}, {_SECONDS} s)"}

    learning.retrain = _placebo
