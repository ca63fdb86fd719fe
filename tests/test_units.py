"""Pure pieces, no servers: config errors, policy, stop handling, tool-call parsing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clients.errors import ModelNotFound
from clients.llama_cpp.decoding import StopBuffer
from clients.llama_cpp.prompt import parse_tool_calls, template_messages
from routers.base import ROUTERS
from routers.policy import Policy
from server.config import ConfigError, load_config, parse_config

BASE = {
    "models": {"local": {"backend": "llama_cpp", "model": "x.gguf"},
               "cloud": {"backend": "openai", "base_url": "http://h/v1", "model": "m"}},
    "routing": {"default": "local", "fallback": ["cloud", "local"]},
}


def test_embedded_default_config_is_valid():
    config = load_config(None)
    assert set(config.models) == {"local", "cloud", "house-style"}
    assert config.routing.default == "local"
    r = config.routing  # `tandem` routes out of the box: the shipped router at 30 % cloud
    assert (r.strong, r.weak, r.router.kind, r.router.cloud_fraction) == ("cloud", "local",
                                                                         "classifier", 0.3)
    policy = Policy.from_config(config)
    assert policy.live is not None and 0.0 < policy.live.threshold()[0] < 1.0
    steered = config.models["house-style"]
    assert (steered.base, steered.expert, steered.anti_expert) == ("cloud", "local", "local")


@pytest.mark.parametrize("mutate,expected", [
    (lambda c: c["models"]["cloud"].pop("base_url"), "models.cloud.openai.base_url"),
    (lambda c: c["models"]["local"].update(n_ctx="big"), "models.local.llama_cpp.n_ctx"),
    (lambda c: c["models"]["local"].update(backend="tpu"), "models.local"),
    (lambda c: c["routing"].update(default="nope"), "routing.default"),
    (lambda c: c["routing"].update(fallback=["cloud", "ghost"]), "routing.fallback[1]"),
    (lambda c: c.update(extra_key=1), "extra_key"),
    (lambda c: c["models"].update(tandem=c["models"]["local"]), "reserved"),
    (lambda c: c["routing"].update(rules=[{"when": {"tools": True}, "use": "ghost"}]),
     "routing.rules[0].use"),
    (lambda c: c["routing"].update(rules=[{"when": {"user_regex": "(unclosed"}, "use": "cloud"}]),
     "routing.rules.0.when.user_regex"),
    (lambda c: c["routing"].update(rules=[{"when": {}, "use": "cloud"}]), "routing.rules.0.when"),
    (lambda c: c["routing"].update(rules=[{"when": {"sql": "x"}, "use": "cloud"}]),
     "routing.rules.0.when.sql"),
    (lambda c: c["routing"].update(rules=[{"when": {"prompt_tokens_over": -1}, "use": "cloud"}]),
     "routing.rules.0.when.prompt_tokens_over"),
    (lambda c: c["routing"].update(learning={"enabled": True}), "routing.learning"),
    (lambda c: c["routing"].update(learning={"explore": 0.9}), "routing.learning.explore"),
    (lambda c: c["routing"].update(budget_downgrade_at=1.5), "routing.budget_downgrade_at"),
    (lambda c: c["routing"].update(budget_downgrade_at=0.5), "routing.budget_downgrade_at"),
    (lambda c: c.update(auth={"keys": [{"name": "a", "key_sha256": "0" * 64,
                                        "cloud_fraction": 0.2}]}), "auth.keys[0].cloud_fraction"),
    (lambda c: c.update(auth={"keys": [{"name": "a", "key_sha256": "0" * 64,
                                        "budget_downgrade_at": 0.8}]}),
     "auth.keys[0].budget_downgrade_at"),
])
def test_bad_config_names_the_key(mutate, expected):
    data = json.loads(json.dumps(BASE))
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "test.yaml")
    assert expected in str(info.value)


def test_config_check_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: {local: {backend: llama_cpp}}\nrouting: {default: local}\n")
    r = subprocess.run([sys.executable, "-m", "server.cli", "config", "check", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "models.local.llama_cpp.model" in r.stderr and "Traceback" not in r.stderr
    good = tmp_path / "good.yaml"
    import yaml
    good.write_text(yaml.safe_dump(BASE))
    r = subprocess.run([sys.executable, "-m", "server.cli", "config", "check", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "OK" in r.stdout
    routed = json.loads(json.dumps(BASE))  # valid YAML, but its checkpoint does not exist
    routed["routing"].update(strong="cloud", weak="local",
                             routers={"knn": str(tmp_path / "missing.npz")},
                             router={"kind": "knn", "cloud_fraction": 0.3})
    good.write_text(yaml.safe_dump(routed))
    r = subprocess.run([sys.executable, "-m", "server.cli", "config", "check", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "missing.npz" in r.stderr and "routing" in r.stderr
    r = subprocess.run([sys.executable, "-m", "server.cli", "config", "check",
                        "server/configs/default.yaml"], capture_output=True, text=True)
    assert r.returncode == 0 and "router classifier at cloud_fraction 0.3" in r.stdout


def test_policy_chain_and_reasons():
    p = Policy(["local", "cloud"], "local", ["cloud", "local"], {"fast": "local"})
    assert p.decide("cloud").chain == ("cloud", "local")
    assert p.decide("local").chain == ("local",)
    assert p.decide("tandem").model == "local"
    assert p.decide("fast").reason == "alias 'fast' -> 'local'"
    with pytest.raises(ModelNotFound):
        p.decide("gpt-4")
    assert p.names() == ["tandem", "local", "cloud", "fast"]
    assert "random" in ROUTERS


def test_stop_buffer_holds_partial_matches():
    s = StopBuffer(["STOP"])
    assert s.push("hello ST") == ("hello ", False)
    assert s.push("O") == ("", False)
    assert s.push("P and more") == ("", True)
    s = StopBuffer(["STOP"])
    assert s.push("ST") == ("", False)
    assert s.push("AR") == ("STAR", False)
    assert s.flush() == ""
    s = StopBuffer(["ab", "b"])
    assert s.push("xab") == ("x", True)
    assert StopBuffer([]).push("abc") == ("abc", False)


def test_parse_tool_calls_hermes_and_bare():
    names = {"get_weather"}
    text = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, names)
    assert content == "Sure." and calls[0]["function"]["name"] == "get_weather"
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Rome"}
    fenced = '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```'
    assert parse_tool_calls(fenced, names)[1][0]["function"]["name"] == "get_weather"
    # Not an offered tool, or not JSON: plain content, unchanged.
    assert parse_tool_calls('{"name": "rm_rf", "arguments": {}}', names)[1] == []
    assert parse_tool_calls("just text", names) == ("just text", [])


def test_template_messages_normalises_openai_shapes():
    msgs = template_messages([
        {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]},
    ])
    assert msgs[0] == {"role": "system", "content": "ab"}
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"x": 1}


def test_openai_continuation_body_and_internal_key_never_sent():
    import orjson

    from clients.base import ASSISTANT_PREFIX
    from clients.openai_client import OpenAIClient
    from server.config import OpenAIModelConfig

    cfg = OpenAIModelConfig(backend="openai", base_url="http://h/v1", model="m")
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    assert OpenAIClient("c", cfg).continuation_body(body, "Hel") is None
    vllm = OpenAIClient("c", cfg.model_copy(update={"continuation": True}))
    cont = vllm.continuation_body(body, "Hel")
    assert cont["messages"][-1] == {"role": "assistant", "content": "Hel"}
    assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
    sent = orjson.loads(vllm._payload({**body, ASSISTANT_PREFIX: "secret prefix"}))
    assert ASSISTANT_PREFIX not in sent and sent["model"] == "m"
