"""The served OpenAPI document, fuzzed with schemathesis against a real ``serve`` process:
whatever a client sends, the shim never answers with a server error (5xx)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the REST shim needs the server extra (fastapi)")
pytest.importorskip("uvicorn", reason="the REST shim needs the server extra (uvicorn)")
pytest.importorskip("httpx", reason="the shim's tests talk to it with httpx")
schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs the dev extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from serving import ServerProcess  # noqa: E402

KEY = "key-fuzz"
# Examples per operation: the six operations take about 20 s in all on 2 cores.
EXAMPLES = 40


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    made = ServerProcess(home, {"LIPSYNC_API_KEYS": KEY}, ("--workers", "1")).start()
    yield made
    made.stop()


def test_no_server_errors(shim):
    schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{shim.port}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6, "every endpoint of the API is in the document"

    for operation in operations:
        _fuzz(operation, f"http://127.0.0.1:{shim.port}")


def _fuzz(operation, base_url: str) -> None:
    """Valid and invalid requests of one operation: no answer may be a server error."""
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same examples on every run: a failure can be replayed
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case):
        # With the valid key, requests get past auth into the parsing and the store.
        case.call_and_validate(
            base_url=base_url,
            headers={"x-api-key": KEY},
            checks=[not_a_server_error],
            timeout=30,
        )

    run()
