"""A gateway for routing tests: a classifier that knows EASY from HARD (with the label
set it stands for), the local model, llama_cpp.server as the cloud, three API keys;
and the calls the tests make to it with the openai SDK and httpx."""

from __future__ import annotations

import json

import httpx
import numpy as np
import openai

from routers import checkpoint
from routers.embed import HashingEmbedder, conversation_text
from routers.learned import LogisticScorer
from server.auth import hash_key
from tests.support.prompts import EASY, HARD


def write_checkpoint(path) -> None:
    """A classifier that knows EASY from HARD, and beside it (``.jsonl``) the label set it
    stands for: the shipped labels a retrain starts from and is gated on."""
    emb = HashingEmbedder(4096)
    X = emb.embed([conversation_text([{"role": "user", "content": t}]) for t in EASY + HARD])
    y = np.array([0.0] * len(EASY) + [1.0] * len(HARD))
    scorer = LogisticScorer.train(X, y, epochs=500, lr=0.05)
    checkpoint.save(path, scorer, emb.name, emb.dim, calibration=np.asarray(scorer.score(X)))
    rows = [{"id": f"{kind}-{j}-{i}", "prompt": f"{t} ({j})", "weak_score": float(kind == "easy"),
             "strong_score": 1.0}
            for kind, texts in (("easy", EASY), ("hard", HARD))
            for i, t in enumerate(texts) for j in range(5)]
    path.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def learning_config(local_model_path, cloud_url: str, ckpt, tmp, learning: dict | None = None,
            state: dict | None = None, rules: list | None = None) -> dict:
    return {
        "models": {
            "local": {"backend": "llama_cpp", "model": str(local_model_path), "n_ctx": 1024},
            "cloud": {"backend": "openai", "base_url": cloud_url, "model": "qwen-cloud",
                      "max_retries": 0, "price_input_per_mtok": 1000.0,
                      "price_output_per_mtok": 1000.0}},
        "routing": {
            "default": "local", "strong": "cloud", "weak": "local",
            "routers": {"classifier": str(ckpt)},
            "router": {"kind": "classifier", "cloud_fraction": 0.5},
            "rules": rules or [],
            "learning": {"enabled": True, "explore": 0.0, "retrain_every": 1000,
                         "base_labels": str(ckpt.with_suffix(".jsonl")),
                         "checkpoint_dir": str(tmp / "routers"), **(learning or {})}},
        "auth": {"keys": [
            {"name": "alice", "key_sha256": hash_key("sk-alice")},
            {"name": "bob", "key_sha256": hash_key("sk-bob"), "cloud_fraction": 0.0},
            {"name": "carol", "key_sha256": hash_key("sk-carol"), "budget_usd": 0.01,
             "budget_downgrade_at": 0.5}]},
        "state": state or {"sqlite_path": str(tmp / "learning.sqlite")},
    }


RULES = [
    {"name": "tools-to-cloud", "when": {"tools": True}, "use": "cloud"},
    {"name": "confidential", "when": {"user_regex": "(?i)confidential"}, "use": "local"},
    {"name": "free-tier", "when": {"metadata": {"tier": "free"}}, "use": "local"},
    {"name": "json-local", "when": {"response_format": "json_object"}, "use": "local"},
    {"name": "long", "when": {"prompt_tokens_over": 200}, "use": "cloud"},
    {"name": "alice-local", "when": {"key": "alice", "private": True}, "use": "local"},
]


def start_learning_gateway(name: str, local_model_path, cloud_url: str, workdir,
                           learning: dict | None = None, rules: list | None = None):
    """A gateway routing `tandem` with a fresh classifier checkpoint in workdir/name
    (the server carries ``checkpoint``, the file it started from)."""
    from tests.support.servers import start_gateway

    tmp = workdir / name
    tmp.mkdir()
    ckpt = tmp / "classifier.npz"
    write_checkpoint(ckpt)
    gw = start_gateway(learning_config(local_model_path, cloud_url, ckpt, tmp, learning,
                                       rules=rules), tmp, name=name)
    gw.checkpoint = ckpt
    return gw


def sdk(gw, key: str = "sk-alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=120)


def ask(gw, text: str, key: str = "sk-alice", model: str = "tandem", **extra):
    raw = sdk(gw, key).chat.completions.with_raw_response.create(
        model=model, max_tokens=1, messages=[{"role": "user", "content": text}], **extra)
    return raw.headers, raw.parse()


def post(gw, path: str, body, key: str = "sk-alice") -> httpx.Response:
    kwargs = {"content": body} if isinstance(body, (str, bytes)) else {"json": body}
    return httpx.post(gw.url + path, headers={"authorization": f"Bearer {key}"},
                      timeout=60, **kwargs)


def router_status(gw, key: str = "sk-alice") -> dict:
    r = httpx.get(gw.url + "/v1/tandem/router", headers={"authorization": f"Bearer {key}"},
                  timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def route(gw, body: dict, key: str = "sk-alice") -> dict:
    r = post(gw, "/v1/tandem/route", body, key)
    assert r.status_code == 200, r.text
    return r.json()


def chat_body(text: str, **extra) -> dict:
    return {"model": "tandem", "messages": [{"role": "user", "content": text}], **extra}


TOOL = {"type": "function", "function": {"name": "get_weather",
                                          "parameters": {"type": "object", "properties": {}}}}
