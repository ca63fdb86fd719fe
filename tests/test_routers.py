"""Learned routers: MF math by hand, training that learns, checkpoints that refuse junk."""

from __future__ import annotations

import numpy as np
import pytest

from routers import checkpoint
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import KNNScorer, LogisticScorer, MFScorer, sigmoid


def test_mf_score_matches_a_hand_computation():
    W = np.array([[1.0, 0.0, 2.0], [0.0, -1.0, 1.0]])  # k=2, d=3
    v_s, v_w = np.array([0.5, 2.0]), np.array([0.25, 1.0])
    w = np.array([2.0, -1.0])
    e = np.array([1.0, 2.0, 0.5])
    # W e = [1 + 1, -2 + 0.5] = [2, -1.5]; (v_s - v_w) = [0.25, 1]
    # product = [0.5, -1.5]; w . product = 1 + 1.5 = 2.5
    assert MFScorer(W, v_s, v_w, w).score(e) == pytest.approx(1 / (1 + np.exp(-2.5)))


def test_mf_training_gradient_matches_finite_differences():
    """One noiseless Adam-free step: the analytic BCE gradient equals a numeric one."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(8, 5)), rng.integers(0, 2, 8).astype(float)
    m = MFScorer(rng.normal(size=(3, 5)), rng.normal(size=3), rng.normal(size=3),
                 rng.normal(size=3), 0.1)

    def loss(model: MFScorer) -> float:
        p = np.clip(model.score(X), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))

    h = X @ m.W.T
    dv = m.v_s - m.v_w
    g = (sigmoid((h * dv) @ m.w + m.b) - y) / len(y)
    analytic_W = np.outer(g, m.w * dv).T @ X
    eps = 1e-6
    numeric = np.zeros_like(m.W)
    for idx in np.ndindex(*m.W.shape):
        plus, minus = m.W.copy(), m.W.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (loss(MFScorer(plus, m.v_s, m.v_w, m.w, m.b))
                        - loss(MFScorer(minus, m.v_s, m.v_w, m.w, m.b))) / (2 * eps)
    np.testing.assert_allclose(analytic_W, numeric, rtol=1e-4, atol=1e-8)


def _synthetic(n: int, seed: int):
    """Prompts whose need for the strong model is knowable: proofs and hard code need it."""
    from tests.support.prompts import EASY as easy, HARD as hard

    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        strong = rng.random() < 0.5
        base = rng.choice(hard if strong else easy)
        texts.append(f"{base} {rng.choice(['please', 'thanks', 'now', ''])}".strip())
        labels.append(1.0 if strong else 0.0)
    emb = HashingEmbedder(512)
    return emb.embed(texts), np.array(labels), emb


def _auc(scores: np.ndarray, y: np.ndarray) -> float:
    pos, neg = scores[y == 1], scores[y == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


@pytest.mark.parametrize("train", [MFScorer.train, KNNScorer.train, LogisticScorer.train])
def test_learned_routers_beat_random_on_a_knowable_set(train):
    X, y, _ = _synthetic(300, 0)
    Xt, yt, _ = _synthetic(200, 1)
    scorer = train(X, y)
    assert _auc(np.asarray(scorer.score(Xt)), yt) > 0.9
    random_auc = _auc(np.random.default_rng(2).random(len(yt)), yt)
    assert random_auc < 0.6


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    X, y, emb = _synthetic(100, 3)
    scorer = LogisticScorer.train(X, y)
    path = tmp_path / "r.npz"
    checkpoint.save(path, scorer, emb.name, emb.dim)
    loaded, meta = checkpoint.load(path, emb.name, emb.dim)
    assert meta["kind"] == "classifier"
    np.testing.assert_allclose(loaded.score(X), scorer.score(X))
    with pytest.raises(checkpoint.CheckpointError, match="embedder"):
        checkpoint.load(path, "other-embedder", emb.dim)
    with pytest.raises(checkpoint.CheckpointError, match="dimension"):
        checkpoint.load(path, emb.name, 99)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(checkpoint.CheckpointError, match="not a Tandem router checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(checkpoint.CheckpointError, match="no such"):
        checkpoint.load(tmp_path / "missing.npz")
    # Arrays that do not fit the kind: a classifier whose weights have the wrong length.
    checkpoint.save(tmp_path / "short.npz", LogisticScorer(np.zeros(3), 0.0), emb.name, emb.dim)
    with pytest.raises(checkpoint.CheckpointError, match="do not fit"):
        checkpoint.load(tmp_path / "short.npz")


def test_conversation_text_puts_latest_user_turn_first_and_is_bounded():
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": [{"type": "text", "text": "follow-up"}]}]
    text = conversation_text(messages)
    assert text.startswith("user: follow-up")
    assert "first question" in text and "be brief" in text
    long = [{"role": "user", "content": "x" * 10_000}] * 5
    assert len(conversation_text(long, budget_chars=4000)) <= 4000 + 10


def test_pgr_apgr_cpt_on_a_hand_example():
    from routers.evaluate import pgr_curve, summary, threshold_for_fraction

    weak = np.array([0.0, 0.0, 1.0, 1.0])
    strong = np.array([1.0, 1.0, 1.0, 1.0])  # the gap is the first two prompts
    perfect = np.array([0.9, 0.8, 0.1, 0.2])
    f, g = pgr_curve(perfect, weak, strong)
    np.testing.assert_allclose(g, [0, 0.5, 1, 1, 1])
    s = summary(perfect, weak, strong)
    # area: trapezoids over [0,.25,.5,.75,1] of [0,.5,1,1,1] = .0625+.1875+.25+.25
    assert s["apgr"] == pytest.approx(0.75)
    assert s["cpt50"] == 0.25 and s["cpt80"] == 0.5
    worst = summary(-perfect, weak, strong)
    assert worst["apgr"] < s["apgr"] and worst["cpt50"] == 0.75
    scores = np.linspace(0, 1, 1001)
    t = threshold_for_fraction(scores, 0.3)
    assert abs((scores >= t).mean() - 0.3) < 0.01


def test_router_cli_train_eval_calibrate(tmp_path):
    import json
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    easy = ["say hello", "name a colour", "what is 2 plus 2", "print hello world"]
    hard = ["prove the four colour theorem", "implement a b-tree with deletion in rust",
            "derive the kalman filter update", "write a garbage collector in C"]
    rows = []
    for i in range(200):
        strong_needed = i % 2 == 0
        text = f"{rng.choice(hard if strong_needed else easy)} #{i}"
        rows.append({"prompt": text, "weak_score": 0.0 if strong_needed else 1.0,
                     "strong_score": 1.0})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in rows))
    ckpt = tmp_path / "knn.npz"

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "server.cli", "router", *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    trained = run("train", "--kind", "knn", "--labels", str(labels), "--out", str(ckpt),
                  "--embedder", "hashing-1024")
    assert trained["train"] + trained["holdout"] == 200 and 25 <= trained["holdout"] <= 55
    assert trained["apgr"] > trained["random_apgr"] + 0.2
    png = tmp_path / "eval.png"
    evaluated = run("eval", "--ckpt", str(ckpt), "--labels", str(labels), "--plot", str(png))
    assert evaluated["cpt50"] <= 0.3 and {"apgr", "cpt80", "random_apgr"} <= set(evaluated)
    assert evaluated["n"] == 200 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    held_out = run("eval", "--ckpt", str(ckpt), "--plot", "")  # the split it never saw
    assert held_out["n"] == trained["holdout"] and "plot" not in held_out
    assert held_out["apgr"] == pytest.approx(trained["apgr"])
    calibrated = run("calibrate", "--ckpt", str(ckpt), "--prompts", str(labels),
                     "--cloud-fraction", "0.5")
    assert 0.0 <= calibrated["threshold"] <= 1.0
    stored = checkpoint.load(ckpt)[1]
    assert len(stored["calibration_scores"]) == trained["train"]  # out-of-fold, from train
    saved = run("calibrate", "--ckpt", str(ckpt), "--prompts", str(labels),
                "--cloud-fraction", "0.5", "--save")
    _, meta = checkpoint.load(ckpt)
    assert len(meta["calibration_scores"]) == 200 and str(labels) in meta["calibration"]
    assert meta["kind"] == "knn" and meta["holdout_fraction"] == 0.2  # metadata kept
    from routers.base import load_router, make_embedder

    router = load_router("knn", str(ckpt), make_embedder("hashing-1024"))
    assert router.threshold_for(0.5) == pytest.approx(saved["threshold"], abs=1e-6)


def test_router_eval_without_a_checkpoint_evaluates_the_shipped_default(tmp_path):
    """Its last line is one JSON object; the table has router, random and oracle columns."""
    import json
    import subprocess
    import sys

    png = tmp_path / "default.png"
    r = subprocess.run([sys.executable, "-m", "server.cli", "router", "eval", "--plot",
                        str(png)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert {"apgr", "cpt50", "cpt80", "random_apgr"} <= set(figures)
    assert figures["checkpoint"].endswith("broad-classifier.npz")
    assert "held-out" in figures["labels"] and figures["n"] >= 30
    assert figures["apgr"] > figures["random_apgr"]  # the shipped router beats random
    assert figures["oracle_apgr"] >= figures["apgr"]
    assert lines[0].split() == ["%", "cloud", "router", "random", "oracle"]
    assert png.stat().st_size > 1000


def test_split_is_stable_when_the_label_file_grows_or_is_reordered():
    from routers.tools import split

    rows = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(300)]
    _, held = split(rows, 0.3)
    grown = rows[::-1] + [{"id": f"new{i}", "prompt": "x"} for i in range(100)]
    _, held_grown = split(grown, 0.3)
    old_ids = {r["id"] for r in held}
    assert old_ids == {r["id"] for r in held_grown if r["id"].startswith("p")}
    assert 60 <= len(held) <= 120


def _graded_rows(n: int, seed: int) -> list[dict]:
    """Prompts whose words each carry a hidden difficulty; their sum decides how likely
    the strong model is needed, so router scores spread over [0, 1] as on real traffic."""
    rng = np.random.default_rng(seed)
    difficulty = np.random.default_rng(99).normal(0, 1, 300)
    rows = []
    for i in range(n):
        idx = rng.choice(300, size=int(rng.integers(4, 16)), replace=False)
        hard = rng.random() < 1 / (1 + np.exp(-(difficulty[idx].sum() / 2 - 1)))
        rows.append({"id": f"{seed}-{i}", "prompt": " ".join(f"w{j}" for j in idx),
                     "weak_score": 0.0 if hard else 1.0, "strong_score": 1.0})
    return rows


@pytest.mark.parametrize("kind", ["classifier", "mf", "knn"])
def test_calibration_hits_the_requested_fraction_on_held_out_prompts(kind, tmp_path):
    """Train stores out-of-fold calibration scores; the threshold a cloud_fraction turns
    into sends that share of *unseen* prompts to the strong model, within ±3 points."""
    import json

    from routers.base import load_router, make_embedder
    from routers.tools import embed_rows, train

    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join(json.dumps(r) for r in _graded_rows(3000, 0)))
    ckpt = tmp_path / f"{kind}.npz"
    train(kind, str(labels), str(ckpt), "hashing-256", holdout=0.0)
    router = load_router(kind, str(ckpt), make_embedder("hashing-256"))
    # 3000 calibration and 3000 unseen prompts: sampling error ~1.3 points at 50%
    unseen = _graded_rows(3000, 1)
    scores = np.asarray(router.scorer.score(embed_rows(unseen, "hashing-256")))
    for fraction in (0.1, 0.3, 0.5):
        sent = float((scores >= router.threshold_for(fraction)).mean())
        assert abs(sent - fraction) <= 0.03, (fraction, sent)


def test_graders():
    from routers.graders import extract_code, grade_exact, grade_numeric, grade_unit_tests

    assert grade_exact({"reference": "Paris"}, "  paris. ") == 1.0
    assert grade_numeric({"reference": 1234}, "so the total is 1,234") == 1.0
    assert grade_numeric({"reference": 12}, "about 13") == 0.0
    problem = {"prompt": "def add(a, b):\n    \"\"\"Add.\"\"\"\n", "entry_point": "add",
               "test": "def check(f):\n    assert f(2, 3) == 5\n"}
    good = "```python\ndef add(a, b):\n    return a + b\n```"
    assert grade_unit_tests(problem, good) == 1.0
    assert grade_unit_tests(problem, "    return a + b\n") == 1.0  # a bare completion
    assert grade_unit_tests(problem, "```python\ndef add(a, b):\n    return a - b\n```") == 0.0
    hang = "```python\ndef add(a, b):\n    while True: pass\n```"
    assert grade_unit_tests(problem, hang, timeout_s=1) == 0.0
    assert extract_code("def f():\n", "    return 1") == "def f():\n    return 1"


def test_label_run_against_the_gateway_resumes(gateway, tmp_path):
    import asyncio
    import json

    from routers.label import label

    rows = [{"id": "a", "prompt": "What is 2+2? Reply with the number.", "reference": 4},
            {"id": "b", "prompt": "What is 3+4? Reply with the number.", "reference": 7}]
    out = tmp_path / "labels.jsonl"
    n = asyncio.run(label(rows[:1], out, gateway.url + "/v1", "local", "cloud", "numeric",
                          None, 8, 2))
    assert n == 1
    n = asyncio.run(label(rows, out, gateway.url + "/v1", "local", "cloud", "numeric",
                          None, 8, 2))
    assert n == 1  # "a" was already labelled
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in got) == ["a", "b"]
    assert all(r["weak_score"] in (0.0, 1.0) and r["strong_score"] in (0.0, 1.0) for r in got)


def _policy_config(ckpt, router: dict) -> dict:
    upstream = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    return {"models": {"local": upstream, "cloud": upstream},
            "routing": {"default": "local", "strong": "cloud", "weak": "local",
                        "routers": {"classifier": str(ckpt)}, "router": router}}


def test_cloud_fraction_config_turns_into_a_threshold_named_in_the_reason(tmp_path):
    import asyncio

    from routers.policy import Policy
    from server.config import ConfigError, parse_config

    rows = _graded_rows(400, 0)
    emb = HashingEmbedder(4096)
    X = emb.embed([r["prompt"] for r in rows])
    y = np.array([float(r["strong_score"] > r["weak_score"]) for r in rows])
    ckpt, bare = tmp_path / "c.npz", tmp_path / "bare.npz"
    scorer = LogisticScorer.train(X, y)
    calibration = np.linspace(0.0, 1.0, 101)  # 30% of these are >= 0.70
    checkpoint.save(ckpt, scorer, emb.name, emb.dim, calibration=calibration)
    checkpoint.save(bare, scorer, emb.name, emb.dim)

    for bad in ({"kind": "classifier"},
                {"kind": "classifier", "threshold": 0.5, "cloud_fraction": 0.3},
                {"kind": "classifier", "cloud_fraction": 1.5}):
        with pytest.raises(ConfigError, match="routing.router"):
            parse_config(_policy_config(ckpt, bad))

    policy = Policy.from_config(parse_config(
        _policy_config(ckpt, {"kind": "classifier", "cloud_fraction": 0.3})))
    kind, threshold, source = policy.policy_router
    assert kind == "classifier" and threshold == pytest.approx(0.70)
    body = {"messages": [{"role": "user", "content": rows[0]["prompt"]}]}
    decision = asyncio.run(policy.route("tandem", body))
    assert "(threshold for cloud_fraction 0.3)" in decision.reason
    assert decision.model == ("cloud" if decision.score >= threshold else "local")

    fixed = Policy.from_config(parse_config(
        _policy_config(bare, {"kind": "classifier", "threshold": 0.25})))
    assert "0.25 (configured threshold)" in asyncio.run(fixed.route("tandem", body)).reason
    named = asyncio.run(fixed.route("router-classifier-0.6", body)).reason
    assert "0.6 (model name)" in named
    random_policy = Policy.from_config(parse_config(
        _policy_config(bare, {"kind": "random", "cloud_fraction": 0.2})))
    assert random_policy.policy_router[1] == pytest.approx(0.8)  # uniform scores: 1 - f
    with pytest.raises(ValueError, match="no calibration scores"):
        Policy.from_config(parse_config(
            _policy_config(bare, {"kind": "classifier", "cloud_fraction": 0.3})))


def test_corrupt_calibration_scores_are_refused(tmp_path):
    emb = HashingEmbedder(64)
    path = tmp_path / "c.npz"
    checkpoint.save(path, LogisticScorer(np.zeros(64), 0.0), emb.name, emb.dim,
                    calibration=np.array([0.2, 1.7]))
    with pytest.raises(checkpoint.CheckpointError, match="calibration scores"):
        checkpoint.load(path)


def test_cloud_share_pays_back_an_unseen_mix_overshoot():
    """Traffic unlike the checkpoint's data (prompts it scores far above its
    calibration) first goes to the cloud far too often; the live router's threshold
    then follows recent scores and aims below target until the window's share is back
    on target, instead of keeping the early overshoot."""
    import asyncio

    from routers.policy import Policy
    from routers.tools import read_jsonl
    from server.config import GatewayConfig

    config = GatewayConfig.model_validate({
        "models": {"local": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "model": "w"},
                   "cloud": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1",
                             "model": "s"}},
        "routing": {"default": "local", "strong": "cloud", "weak": "local",
                    "routers": {"classifier": "routers/checkpoints/broad-classifier.npz"},
                    "router": {"kind": "classifier", "cloud_fraction": 0.3}}})
    policy = Policy.from_config(config)
    rows = read_jsonl("routers/data/broad-qwen0.5b-vs-1.5b.jsonl")
    # an unseen mix: the 400 prompts it scores highest (its calibration would send
    # nearly all of them to the cloud), in random order
    order = np.argsort([-policy.live.p_strong(r["messages"]) for r in rows], kind="stable")
    rows = [rows[i] for i in np.random.default_rng(0).permutation(order[:400])]

    async def run() -> list[bool]:
        went = []
        for r in rows:
            d = await policy.route("tandem", {"model": "tandem", "messages": r["messages"]})
            went.append(d.model == "cloud")
        return went

    went = np.array(asyncio.run(run()))
    assert went[:20].mean() > 0.9  # the checkpoint's calibration overshoots at first
    assert abs(policy.live.actual_fraction() - 0.3) <= 0.03  # the window is back on target
    assert abs(went.mean() - 0.3) <= 0.05  # and so is the whole run
