"""simonw's ``llm`` command line against the gateway, as people set it up: the models
declared in ``extra-openai-models.yaml`` under ``LLM_USER_PATH``, run as a subprocess.
Streamed and not, a continued conversation (its log records the cached tokens), and a
tool the model calls through the gateway before answering."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="module")
def llm_home(gateway, tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("llm-home")
    api_base = gateway.url + "/v1"
    models = [{"model_id": f"tandem-{name}", "model_name": name, "api_base": api_base,
               "supports_tools": True} for name in ("local", "cloud", "tandem")]
    (home / "extra-openai-models.yaml").write_text(yaml.safe_dump(models))
    return home


def run_llm(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLM_USER_PATH": str(home)}
    env.pop("OPENAI_API_KEY", None)  # the gateway's models need no key
    done = subprocess.run([sys.executable, "-m", "llm", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def llm(home: Path, *args: str) -> str:
    return run_llm(home, *args).stdout


def _last_log(home: Path) -> dict:
    return json.loads(llm(home, "logs", "-n", "1", "--json"))[0]


@pytest.mark.parametrize("model", ["tandem-local", "tandem-cloud", "tandem-tandem"])
@pytest.mark.parametrize("stream", [True, False])
def test_prompt_answered_by_the_gateway(llm_home, model, stream):
    out = llm(llm_home, "-m", model, "-o", "temperature", "0", "-o", "max_tokens", "12",
              *([] if stream else ["--no-stream"]), "Say hello in one word.")
    assert out.strip()
    log = _last_log(llm_home)
    assert log["model"] == model and log["response"].strip() == out.strip()
    if not (stream and model == "tandem-cloud"):  # llama.cpp's server streams no usage
        assert log["input_tokens"] > 0 and log["output_tokens"] > 0


def test_continued_conversation_is_served_from_the_cache(llm_home):
    llm(llm_home, "-m", "tandem-local", "-o", "temperature", "0", "-o", "max_tokens", "8",
        "--no-stream", "Name a fruit.")
    first = _last_log(llm_home)
    llm(llm_home, "-c", "-o", "temperature", "0", "-o", "max_tokens", "8", "--no-stream",
        "And a vegetable?")
    second = _last_log(llm_home)
    assert second["conversation_id"] == first["conversation_id"]
    details = json.loads(second["token_details"])
    assert details["prompt_tokens_details"]["cached_tokens"] >= first["input_tokens"]


@pytest.mark.parametrize("stream", [True, False])
def test_tool_called_through_the_gateway(llm_home, stream):
    """llm runs the model's call to a Python function and sends the result back: the
    tool call (streamed or not) must arrive parsed, the second turn answers."""
    code = ("def get_weather(city: str) -> str:\n"
            "    'Current weather in a city.'\n"
            "    return f'WEATHER-REPORT: sunny in {city}'\n")
    run_llm(llm_home, "-m", "tandem-local", "-o", "temperature", "0", "-o", "max_tokens", "60",
            "--functions", code, *([] if stream else ["--no-stream"]),
            "What is the weather in paris?")
    call_turn, result_turn = json.loads(llm(llm_home, "logs", "-n", "2", "--json"))
    logged = call_turn["response_json"]  # the last chunk streamed, or the whole completion
    assert (logged.get("finish_reason") or logged["choices"][0]["finish_reason"]) == "tool_calls"
    [call] = call_turn["tool_calls"]
    assert (call["name"], call["arguments"]) == ("get_weather", {"city": "paris"})
    [result] = result_turn["tool_results"]
    assert result["tool_call_id"] == call["tool_call_id"]
    assert result["output"] == "WEATHER-REPORT: sunny in paris"
    # the second turn re-sends the first: the local prefix cache serves it
    cached = json.loads(result_turn["token_details"])["prompt_tokens_details"]["cached_tokens"]
    assert cached >= call_turn["input_tokens"]
