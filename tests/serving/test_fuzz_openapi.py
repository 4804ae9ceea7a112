"""Property-based requests over the whole OpenAPI surface (issue 14, item 10), with schemathesis,
against the real stack of ``radcloud up`` and the two hospitals of ``test_tenancy.py``.

For every operation the OpenAPI lists, schemathesis generates requests (path, query and body
from the schema, and beyond it); each is sent without credentials, then as one of hospital A's
users (drawn), as generated and with its study, series and instance path parameters replaced
by hospital B's UIDs (UID guessing). What must hold for every request:

- no 5xx, except a 503 that says why in radcloud's error body (a model not deployed);
- without credentials, every operation but the public ones answers 401;
- nothing of B's (study, series and instance UIDs, patient ID and name) in any of A's answers,
  but for what the request itself carried (a 404 names the study UID it was asked for).

Each operation is its own pytest item (id "METHOD path"), a hypothesis test over that
operation's ``as_strategy()`` in both generation modes (valid requests and ones beyond the
schema), as schemathesis' fuzzing phase draws them. Not ``SCHEMA.parametrize()``: its items
share one node id, and pytest-xdist ran only one of them (``make test`` runs on two workers).
"""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, GenerationMode

from core.config import load_settings
from serving.api.app import create_app
from tests.conftest import Stack
from tests.serving.test_tenancy import World
from tests.serving.test_tenancy import world as world  # noqa: PLC0414 - the fixture, shared

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PUBLIC = {("GET", "/healthz"), ("POST", "/api/auth/token")}
"""The operations that answer without credentials: liveness, and sign-in itself."""

A_USERS = ("rad-a", "ml-a", "admin-a", "pacs-a")
B_PATH_VALUES = {"study": "study", "study_uid": "study", "series": "series", "instance": "instance"}


def _openapi() -> dict[str, Any]:
    return create_app(load_settings(home=tempfile.gettempdir())).openapi()


SCHEMA = schemathesis.openapi.from_dict(_openapi())
OPERATIONS = [operation for path in SCHEMA for operation in SCHEMA[path].values()]


def _requests(operation: APIOperation) -> st.SearchStrategy[Case]:
    """Requests for ``operation``: valid ones and ones beyond its schema."""
    return st.one_of([operation.as_strategy(generation_mode=mode) for mode in GenerationMode])


def _call(case: Any, stack: Stack, headers: dict[str, str] | None = None) -> requests.Response:
    return case.call(base_url=stack.settings.api_url, headers=headers or {}, timeout=60)


def _no_server_error(answer: requests.Response, who: str, case: Any) -> None:
    where = f"{case.method} {case.formatted_path} as {who}"
    if answer.status_code == 503:  # an honest "not now": radcloud's error body says why
        body = answer.json()
        assert body.get("error") and body.get("detail"), (where, answer.text[:300])
        return
    assert answer.status_code < 500, (where, answer.status_code, answer.text[:300])


def _credentials(world: World, name: str) -> dict[str, str]:
    headers = world.clients[name].headers
    return {key: headers[key] for key in ("Authorization", "X-API-Key") if key in headers}


def test_the_live_openapi_is_the_one_fuzzed(world: World) -> None:
    live = world.clients["rad-a"].get("/api/openapi.json")
    assert live.status_code == 200
    assert set(live.json()["paths"]) == set(SCHEMA.raw_schema["paths"])
    assert len(live.json()["paths"]) >= 35
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    listed = {
        f"{method.upper()} {path}"
        for path, item in live.json()["paths"].items()
        for method in item
        if method in methods
    }
    assert {operation.label for operation in OPERATIONS} == listed


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
@given(data=st.data(), user=st.sampled_from(A_USERS), guess=st.booleans())
@settings(
    max_examples=3,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests(
    operation: APIOperation,
    *,
    data: st.DataObject,
    user: str,
    guess: bool,
    world: World,
    stack: Stack,
) -> None:
    case = data.draw(_requests(operation), label="request")
    route = (case.method.upper(), case.operation.path)
    anonymous = _call(case, stack)
    _no_server_error(anonymous, "anonymous", case)
    if route not in PUBLIC:
        assert anonymous.status_code == 401, (route, anonymous.status_code)
    if route in PUBLIC:
        return  # the same answer to everyone; sign-in is rate limited per address
    if guess and case.path_parameters:
        case.path_parameters = {
            name: getattr(world.b, B_PATH_VALUES[name], value) if name in B_PATH_VALUES else value
            for name, value in case.path_parameters.items()
        }
    answer = _call(case, stack, _credentials(world, user))
    _no_server_error(answer, user, case)
    # a value the request carried may come back (a 404 names the study asked for)
    sent = f"{answer.request.url} {answer.request.body!r}"
    leaked = [v for v in world.b.identifiers if v in answer.text and v not in sent]
    assert not leaked, (case.method, case.formatted_path, user, answer.status_code, leaked)
