"""Detection results kept per text (privacy/memo.py): the same spans on every turn of a
conversation, only the new turn scanned, memory bounded."""

from __future__ import annotations

import threading

from privacy.analysis import Analyzer
from privacy.detectors import PatternDetector, Texts, build_detector
from privacy.memo import TextMemo
from privacy.names import NameDetector


def test_memo_computes_a_text_once_and_evicts_oldest_first_within_its_bounds():
    calls: list[str] = []

    def compute(text: str) -> int:
        calls.append(text)
        return len(text)

    memo: TextMemo[int] = TextMemo(max_chars=10, max_entries=3)
    assert [memo.get(t, compute) for t in ("aa", "bb", "aa", "cc")] == [2, 2, 2, 2]
    assert calls == ["aa", "bb", "cc"]
    memo.get("dd", compute)  # a fourth entry: "aa", the oldest, goes
    assert len(memo) == 3
    memo.get("aa", compute)
    assert calls[-1] == "aa"
    memo.get("x" * 9, compute)  # 9 chars: everything else must go to stay within 10
    assert len(memo) == 1
    memo.get("y" * 11, compute)  # longer than the whole memo: answered, not kept
    memo.get("y" * 11, compute)
    assert calls[-2:] == ["y" * 11, "y" * 11] and len(memo) == 1


def test_memo_is_safe_across_threads():
    memo: TextMemo[str] = TextMemo(max_chars=200, max_entries=16)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(2000):
                text = f"t{(seed * 7 + i) % 40}"
                assert memo.get(text, str.upper) == text.upper()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(memo) <= 16


def _conversation(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are the support bot of Fennwick & Sons."}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Turn {i}: Dr. Amara Okafor's card is "
                                        f"4111-1111-1111-1111, mail amara{i}@example.org."},
            {"role": "assistant", "content": f"Noted for turn {i}, Ms. Okafor."}]
    return {"messages": messages}


def test_each_turn_scans_only_new_text_and_finds_the_same_spans(monkeypatch):
    pii, names = PatternDetector(), NameDetector()
    scanned: list[str] = []
    for det in (pii, names):
        find = det.find
        monkeypatch.setattr(det, "find", lambda text, find=find: scanned.append(text) or find(text))
    analyzer = Analyzer([pii, names])
    fresh = Analyzer([build_detector("pii"), build_detector("names")])  # no memo history
    for turns in range(1, 5):
        scanned.clear()
        body = _conversation(turns)
        spans = sorted((s.kind, s.text) for s in analyzer.analyse(body).spans)
        assert spans == sorted((s.kind, s.text) for s in fresh.analyse(body).spans)
        assert ("CARD", "4111-1111-1111-1111") in spans and ("EMAIL", f"amara{turns - 1}@example.org") in spans
        assert any(k == "PERSON" and "Okafor" in t for k, t in spans)
        # the first turn scans everything; later turns only the two new messages
        # (user and assistant), once per detector
        new_texts = 3 if turns == 1 else 2
        assert len(scanned) == 2 * new_texts, scanned


def test_memoised_spans_are_fresh_objects_per_request():
    det = PatternDetector()
    first = det.detect(Texts([], ["mail a@example.org"]))
    second = det.detect(Texts([], ["mail a@example.org"]))
    assert first == second and first[0] is not second[0]


def test_remembered_runs_are_keyed_by_the_salt_that_made_them():
    from privacy.memory import Recalled, RememberedDetector, fingerprints
    from privacy.spans import Span

    det = RememberedDetector()
    text = "Please write to Zoran Qulic about the invoice."
    earlier = [Span("Zoran Qulic", "PERSON", "names")]
    mine = Recalled(b"salt-of-key-A-16", fingerprints(b"salt-of-key-A-16", earlier, []))
    # another key remembers the same name under its own salt, and the first key's
    # fingerprints under the second salt must match nothing
    other = Recalled(b"salt-of-key-B-16", mine.by_length)
    for _ in range(2):  # the second pass is answered from the memo
        assert [s.text for s in det.detect(Texts([], [text], mine))] == ["Zoran Qulic"]
        assert det.detect(Texts([], [text], other)) == []
