"""schemathesis against the service's own OpenAPI schema: generated requests, valid and not, over real
HTTP; no answer may be a server error, and every answer must match what the schema documents."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from mmrag.api.security import new_api_key
from tests.api_server import RunningServer, api_settings, ingest, serve
from tests.realdata import photo_bytes

KEY, KEY_HASH = new_api_key()
EXAMPLES_PER_OPERATION = 25
# positive_data_acceptance is left out: a schema-valid upload of random bytes is still not an image (415)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    data_dir = tmp_path_factory.mktemp("schema") / "data"
    with serve(api_settings(data_dir, key_hashes=[KEY_HASH], allowed_roots=[data_dir.parent])) as running:
        with running.client(KEY) as client:  # something to find, so queries and items have real answers
            ingest(
                client, "default", [("chelsea.jpg", photo_bytes("chelsea")), ("note.md", b"# Note\n\ncats\n")]
            )
        yield running


@pytest.mark.slow  # a few hundred generated requests
def test_no_generated_request_gets_a_server_error(server: RunningServer) -> None:
    schema = schemathesis.openapi.from_dict(server.app.openapi())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 14
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=server.base_url, headers={"X-API-Key": KEY}, checks=CHECKS)

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
