"""Schemathesis fuzzes every operation of Tandem's OpenAPI document: no 5xx from Tandem
itself, no hangs, and every 4xx is an OpenAI error object.

The gateway under test fronts the programmable upstream in its healthy mode (fast), so
generated requests that are valid go all the way through a real upstream call.
"""

from __future__ import annotations

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.servers import start_gateway


@pytest.fixture(scope="module")
def fuzz_gateway(fault, workdir):
    fault.script()
    server = start_gateway({"models": {
        "cloud": {"backend": "openai", "base_url": fault.url, "model": "fault",
                  "max_retries": 0}},
        "routing": {"default": "cloud"}}, workdir, name="fuzz")
    yield server
    server.stop()


def _check(case, statuses: dict[int, int]) -> None:
    response = case.call(timeout=10)
    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
    if response.status_code >= 400:
        error = orjson.loads(response.content)["error"]
        assert {"message", "type", "param", "code"} <= set(error), response.text[:300]


def test_no_server_errors_and_openai_errors_only(fuzz_gateway, fault):
    """Every operation, generated cases driven through hypothesis (schemathesis's own
    pytest plugin does not load under this pytest, so the strategies are used directly)."""
    schema = schemathesis.openapi.from_url(fuzz_gateway.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models"}
    statuses: dict[int, int] = {}
    fault.requests.clear()
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            fault.behaviours.clear()
            _check(case, statuses)

        run()
    # The fuzz reached both sides of validation: refused bodies and upstream calls.
    assert statuses.get(400, 0) > 0 and statuses.get(200, 0) > 0, statuses
    assert fault.requests, "no generated request reached the upstream"
