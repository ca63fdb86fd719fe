"""A placebo retrain for bench/router_online.py --placebo-reps: on the path (PYTHONPATH)
of a gateway started with TANDEM_BENCH_PLACEBO_S, the retrain worker's training and
gate (routers.learning.retrain) become a sleep of that many seconds that changes
nothing. Labels still flow, the worker still starts, the windows still come and go: only
the retrain's own CPU is gone. So the latency of requests in placebo windows shows what
the bench's split into "during" and "outside" does without any retrain cost at all.
Bench-only: nothing in the gateway reads this variable."""

import os

_SECONDS = os.environ.get("TANDEM_BENCH_PLACEBO_S")
if _SECONDS:
    import time

    from routers import learning

    def _placebo(*_args, **_kwargs) -> dict:
        time.sleep(float(_SECONDS))
        return {"outcome": "skipped", "reason": f"placebo ({_SECONDS} s asleep)"}

    learning.retrain = _placebo
