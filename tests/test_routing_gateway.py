"""Learned routing through the running gateway: router-<kind>-<threshold>, `tandem` with a
configured router, the context rule, and a bad checkpoint refused at start-up."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest
import yaml

from routers import checkpoint
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import LogisticScorer, MFScorer
from tests.support.prompts import EASY as _EASY, HARD as _HARD
from tests.support.servers import start_gateway

EASY, HARD = _EASY[:4], _HARD[:4]


def _train(path, mf_path=None) -> None:
    emb = HashingEmbedder(4096)
    texts = [conversation_text([{"role": "user", "content": t}]) for t in EASY + HARD]
    X = emb.embed(texts)
    y = np.array([0.0] * len(EASY) + [1.0] * len(HARD))
    checkpoint.save(path, LogisticScorer.train(X, y, epochs=500, lr=0.05), emb.name, emb.dim)
    if mf_path is not None:
        checkpoint.save(mf_path, MFScorer.train(X, y, k=8, epochs=300, lr=0.05), emb.name,
                        emb.dim)


def _config(local_model_path, fault_url, ckpt, mf=None) -> dict:
    return {"models": {
        "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 512},
        "cloud": {"backend": "openai", "base_url": fault_url, "model": "fault",
                  "max_retries": 0}},
        "routing": {"default": "local", "strong": "cloud", "weak": "local",
                    "routers": {"classifier": str(ckpt), **({"mf": str(mf)} if mf else {})},
                    "router": {"kind": "classifier", "threshold": 0.5}}}


@pytest.fixture(scope="module")
def routed(local_model_path, fault, workdir):
    ckpt, mf = workdir / "classifier.npz", workdir / "mf.npz"
    _train(ckpt, mf)
    fault.script()
    gw = start_gateway(_config(local_model_path, fault.url, ckpt, mf), workdir, name="routed")
    gw.mf_checkpoint = mf
    yield gw
    gw.stop()


def _ask(gw, model: str, text: str) -> httpx.Response:
    r = httpx.post(gw.url + "/v1/chat/completions", timeout=60, json={
        "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    return r


def test_tandem_uses_the_configured_router(routed, fault):
    fault.script()
    for text in HARD[:2]:
        r = _ask(routed, "tandem", text)
        assert r.headers["x-tandem-route"] == "cloud"
        assert "router classifier p_strong=" in r.headers["x-tandem-reason"]
        assert "0.5 (configured threshold) -> 'cloud'" in r.headers["x-tandem-reason"]
    for text in EASY[:2]:
        assert _ask(routed, "tandem", text).headers["x-tandem-route"] == "local"


def test_router_names_with_thresholds(routed, fault):
    fault.script()
    assert _ask(routed, "router-random-0.0", "x").headers["x-tandem-route"] == "cloud"
    assert _ask(routed, "router-random-1.0", "x").headers["x-tandem-route"] == "local"
    hard = _ask(routed, "router-classifier-0.99", HARD[0])
    p = float(hard.headers["x-tandem-reason"].split("p_strong=")[1].split()[0])
    assert hard.headers["x-tandem-route"] == ("cloud" if p >= 0.99 else "local")
    r = httpx.post(routed.url + "/v1/chat/completions", json={
        "model": "router-knn-0.5", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_router_mf_sends_requests_where_its_score_says(routed, fault):
    """router-mf-0.5 through the gateway: the route follows the MF score, and the score
    is the one the same checkpoint gives offline."""
    from routers.base import load_router, make_embedder

    fault.script()
    offline = load_router("mf", str(routed.mf_checkpoint), make_embedder("hashing-4096"))
    routes = set()
    for text in EASY + HARD:
        r = _ask(routed, "router-mf-0.5", text)
        reason = r.headers["x-tandem-reason"]
        p = float(reason.split("p_strong=")[1].split()[0])
        expected = offline.p_strong([{"role": "user", "content": text}])
        assert p == pytest.approx(expected, abs=1e-3)
        assert "(model name)" in reason
        assert r.headers["x-tandem-route"] == ("cloud" if p >= 0.5 else "local")
        routes.add(r.headers["x-tandem-route"])
    assert routes == {"cloud", "local"}  # the training prompts are separated
    ids = [m["id"] for m in httpx.get(routed.url + "/v1/models").json()["data"]]
    assert "router-classifier-0.5" in ids


def test_prompt_longer_than_local_context_goes_to_the_strong_model(routed, fault):
    fault.script()
    r = _ask(routed, "tandem", "say hello " * 400)  # ~1300 tokens > local n_ctx 512
    assert r.headers["x-tandem-route"] == "cloud"
    assert "exceeds 'local' context 512" in r.headers["x-tandem-reason"]


def test_mismatched_checkpoint_fails_at_start_with_a_clear_message(local_model_path, fault,
                                                                  tmp_path):
    ckpt = tmp_path / "small.npz"
    emb = HashingEmbedder(64)  # the gateway embeds with hashing-4096
    checkpoint.save(ckpt, LogisticScorer(np.zeros(64), 0.0), emb.name, emb.dim)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_config(local_model_path, fault.url, ckpt)))
    r = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--config", str(path),
                        "--port", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "hashing-64" in r.stderr and "Traceback" not in r.stderr
