"""server/fast_lane.py: the hot POST paths skip FastAPI's layers but answer errors as
FastAPI's handlers do (the real-server tests in test_errors.py and test_keys.py cover
the body limit, malformed JSON and API keys on the same paths)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.testclient import TestClient

from clients.errors import TandemError
from server.errors import install_error_handlers
from server.fast_lane import FastLaneApp, Lane


def _app(handler) -> FastLaneApp:
    app = FastLaneApp()
    install_error_handlers(app)

    async def through_fastapi(request: Request) -> PlainTextResponse:
        return PlainTextResponse("fastapi")

    app.add_route("/hot", through_fastapi, methods=["GET", "POST"])
    app.lanes = {"/hot": Lane(handler)}
    return app


def test_post_takes_the_lane_and_other_methods_fastapi():
    async def lane(request: Request) -> PlainTextResponse:
        return PlainTextResponse("lane " + (await request.body()).decode())

    client = TestClient(_app(lane))
    assert client.post("/hot", content=b"body").text == "lane body"
    assert client.get("/hot").text == "fastapi"
    assert client.post("/other").status_code == 404  # not a lane: FastAPI's 404


def test_unexpected_error_is_a_500_error_object_without_its_text():
    async def broken(request: Request):
        raise RuntimeError("private words that must not reach the caller")

    response = TestClient(_app(broken)).post("/hot", content=b"{}")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "server_error" and "RuntimeError" in error["message"]
    assert "private words" not in response.text


def test_tandem_error_keeps_its_status_body_and_headers():
    async def limited(request: Request):
        raise TandemError("slow down", status=429, type="rate_limit_error",
                          code="rate_limit_exceeded", headers={"retry-after": "3"})

    response = TestClient(_app(limited)).post("/hot", content=b"{}")
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert response.json() == {"error": {"message": "slow down", "type": "rate_limit_error",
                                         "param": None, "code": "rate_limit_exceeded"}}
