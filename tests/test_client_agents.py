"""The OpenAI Agents SDK (openai-agents) as people run it against an OpenAI-compatible
server: one agent with one function tool, over the Responses API, on each route."""

from __future__ import annotations

import asyncio
import json

import agents
import httpx
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool

CALLS: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    CALLS.append(city)
    return f"the weather in {city} is sunny and 21 degrees."  # no capitals: see below


@pytest.mark.parametrize("model, question, settings", [
    ("local", "What's the weather in Rome?", ModelSettings(temperature=0)),
    # lower case: a capitalised place name is a private span (the names detector), which
    # keeps a request on the local model whatever it asked for; the cloud stand-in (the same 0.5B behind llama.cpp's server) calls tools reliably only
    # when told which (the SDK resets tool_choice after the call, so the second turn
    # answers)
    ("cloud", "what's the weather in nairobi?",
     ModelSettings(tool_choice="get_weather", temperature=0)),
])
def test_one_agent_one_tool_over_responses(gateway, model, question, settings):
    agents.set_tracing_disabled(True)  # the SDK would export its traces to OpenAI
    routes: list[tuple[str, str, str]] = []

    sent: list[dict] = []

    async def seen(response: httpx.Response) -> None:
        routes.append((response.request.url.path, response.headers.get("x-tandem-route"),
                       response.headers.get("x-tandem-reason", "")))
        sent.append(json.loads(response.request.content))

    async def run():
        http = httpx.AsyncClient(event_hooks={"response": [seen]}, timeout=120)
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused",
                                    max_retries=0, http_client=http)
        agent = Agent(name="weather", instructions="Answer weather questions with the tool.",
                      tools=[get_weather], model_settings=settings,
                      model=OpenAIResponsesModel(model=model, openai_client=client))
        return await Runner.run(agent, question, max_turns=4)

    CALLS.clear()
    result = asyncio.run(run())
    assert len(CALLS) == 1 and CALLS[0].lower() in ("rome", "roma", "nairobi")  # one call
    kinds = [item.type for item in result.new_items]
    assert kinds[:2] == ["tool_call_item", "tool_call_output_item"]
    assert kinds[-1] == "message_output_item"
    # the second turn carried the tool's result back (what the 0.5B then writes with it
    # is its own business: it often echoes the call)
    outputs = [i for i in sent[-1]["input"] if i.get("type") == "function_call_output"]
    assert len(outputs) == 1 and "sunny and 21 degrees" in outputs[0]["output"]
    assert isinstance(result.final_output, str) and result.final_output
    assert len(routes) >= 2 and {path for path, _, _ in routes} == {"/v1/responses"}
    assert routes[0][1] == model  # the turn that chose the tool
    # later turns carry the call's arguments: a capitalised city is a private span, which
    # the privacy stage keeps on the local model (and says so)
    assert all(route == model or (route == "local" and "privacy" in reason)
               for _, route, reason in routes), routes
