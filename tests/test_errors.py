"""Bad input gets a clear OpenAI error with the right status; the server keeps serving."""

from __future__ import annotations

import httpx
import openai
import pytest

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def _post(gateway, payload=None, content=None, headers=None) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/chat/completions", json=payload, content=content,
                      headers=headers, timeout=60)


def _assert_error(r: httpx.Response, status: int, param=None, code=None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    assert r.headers.get("x-request-id")
    return err


BAD_BODIES = [
    ({"model": "local", "messages": OK_MESSAGES, "temperature": 2.5}, "temperature"),
    ({"model": "local", "messages": OK_MESSAGES, "top_p": 1.5}, "top_p"),
    ({"model": "local", "messages": OK_MESSAGES, "max_tokens": -1}, "max_tokens"),
    ({"model": "local", "messages": OK_MESSAGES, "max_completion_tokens": 0},
     "max_completion_tokens"),
    ({"model": "local", "messages": []}, "messages"),
    ({"model": "local"}, "messages"),
    ({"messages": OK_MESSAGES}, "model"),
    ({"model": "local", "messages": [{"role": "user", "content": 42}]}, None),
    ({"model": "local", "messages": [{"role": "wizard", "content": "hi"}]}, None),
    ({"model": "local", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"model": "local", "messages": OK_MESSAGES, "stop": ["a", "b", "c", "d", "e"]}, None),
    ({"model": "local", "messages": OK_MESSAGES, "n": 0}, "n"),
    ({"model": "local", "messages": OK_MESSAGES, "top_logprobs": 3}, None),
    ({"model": "local", "messages": OK_MESSAGES, "top_logprobs": 21, "logprobs": True},
     "top_logprobs"),
    ({"model": "local", "messages": OK_MESSAGES, "presence_penalty": 3}, "presence_penalty"),
    ({"model": "local", "messages": OK_MESSAGES, "response_format": {"type": "yaml"}}, None),
    ({"model": "local", "messages": OK_MESSAGES, "response_format": {"type": "json_schema"}},
     None),
    ({"model": "local", "messages": OK_MESSAGES, "tool_choice": "required"}, None),
    ({"model": "local", "messages": OK_MESSAGES, "stream": "yes"}, "stream"),
    ({"model": "local", "messages": "hello"}, "messages"),
    ([1, 2, 3], None),
]


@pytest.mark.parametrize("payload,param", BAD_BODIES)
def test_invalid_bodies_are_400(gateway, payload, param):
    err = _assert_error(_post(gateway, payload), 400, param=param)
    assert err["type"] == "invalid_request_error"


def test_malformed_json_is_400(gateway):
    _assert_error(_post(gateway, content=b'{"model": "local", "messages": [',
                        headers={"content-type": "application/json"}), 400)


def test_empty_body_is_400(gateway):
    _assert_error(_post(gateway, content=b""), 400)


def test_unknown_model_is_404_model_not_found(gateway):
    err = _assert_error(_post(gateway, {"model": "gpt-7", "messages": OK_MESSAGES}), 404,
                        param="model", code="model_not_found")
    assert "gpt-7" in err["message"]


def test_sdk_raises_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=OK_MESSAGES)
    assert info.value.code == "model_not_found"


def test_prompt_longer_than_context_is_400_context_length_exceeded(gateway):
    long = "word " * 3000  # > 2048 tokens of the test model's context
    err = _assert_error(_post(gateway, {"model": "local", "messages": [
        {"role": "user", "content": long}]}), 400, code="context_length_exceeded")
    assert "2048" in err["message"]


def test_prompt_plus_max_tokens_over_context_is_400_not_truncated(gateway):
    _assert_error(_post(gateway, {"model": "local", "messages": OK_MESSAGES,
                                  "max_tokens": 5000}), 400, code="context_length_exceeded")


def test_streaming_context_error_is_a_status_not_a_stream(gateway):
    long = "word " * 3000
    _assert_error(_post(gateway, {"model": "local", "stream": True,
                                  "messages": [{"role": "user", "content": long}]}), 400,
                  code="context_length_exceeded")


def test_body_over_limit_is_413(gateway):
    huge = "x" * (300 * 1024)
    err = _assert_error(_post(gateway, {"model": "local", "messages": [
        {"role": "user", "content": huge}]}), 413)
    assert "limit" in err["message"]


def test_chunked_body_over_limit_is_413(gateway):
    def gen():
        for _ in range(40):
            yield b"x" * 10_000

    r = httpx.post(gateway.url + "/v1/chat/completions", content=gen(), timeout=30)
    _assert_error(r, 413)


def test_unknown_path_and_method_are_openai_errors(gateway):
    _assert_error(httpx.get(gateway.url + "/v1/nothing"), 404)
    _assert_error(httpx.get(gateway.url + "/v1/chat/completions"), 405)


def test_server_still_serves_after_bad_inputs(client, gateway):
    for payload, _ in BAD_BODIES:
        _post(gateway, payload)
    resp = client.chat.completions.create(model="local", messages=OK_MESSAGES, max_tokens=2)
    assert resp.choices[0].message.content


def test_request_id_is_echoed_when_safe(gateway):
    r = httpx.get(gateway.url + "/health", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = httpx.get(gateway.url + "/health", headers={"x-request-id": "bad id\twith tab"})
    assert r.headers["x-request-id"] != "bad id\twith tab"


def test_image_content_to_local_model_is_clear_400(gateway):
    err = _assert_error(_post(gateway, {"model": "local", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}), 400)
    assert "image_url" in err["message"]
