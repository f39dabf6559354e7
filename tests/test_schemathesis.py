"""Schemathesis against the OpenAPI document: whatever it generates, no 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from service.api.main import create_app
from tests.service_support import (
    ADMIN_KEY,
    make_settings,
    service_world,
    small_dataset,
)


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    dataset = small_dataset(users=20, items=30, per_user=10)
    with service_world(tmp_path_factory.mktemp("schemathesis"), dataset) as world:
        app = create_app(make_settings(world.url, world.root))
        with TestClient(app):  # runs the lifespan: the model and catalogue are loaded
            yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_no_input_makes_a_server_error(api_schema):
    """Every operation, up to 40 generated cases each, with the admin key (every route reachable)
    and without a key (every route must still answer 4xx, never 5xx)."""
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:
            for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, {}):
                response = case.call(headers=headers)
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.formatted_path} {case.query} -> "
                        f"{response.status_code}: {response.text[:200]}"
                    )

        check()
    assert not failures, "\n".join(failures[:10])
