"""New terms of service: after `publishTerms` every user must accept them at /terms (a CSRF-protected
form) before using the portal; the session exists meanwhile but the API answers 403
`TermsNotAccepted`. `acceptTerms` accepts them as the person would; the state file keeps them."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from plooto_sandbox import SandboxConfig, create_app
from plooto_sandbox.persistence import MAGIC
from plooto_sandbox.store import PortalState
from sandbox.sandbox_helpers import (
    CLERK,
    CONTROLLER,
    form_token,
    login,
    make_client,
    mfa_code,
    start_login,
)


def _publish(client: TestClient) -> int:
    response = client.post("/__sandbox/mutate", json={"action": "publishTerms"})
    assert response.status_code == 200, response.text
    version: int = response.json()["termsVersion"]
    return version


def _api_refused(client: TestClient, headers: dict[str, str] | None = None) -> None:
    for path in ("/api/session", "/api/companies", "/api/antiforgery/token"):
        response = client.get(path, headers=headers or {"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]})
        assert response.status_code == 403, path
        body = response.json()
        assert body["errorCode"] == "TermsNotAccepted" and "/terms" in body["message"], path


def test_seeded_users_have_accepted_the_terms_in_force(client: TestClient) -> None:
    headers = login(client, CONTROLLER)  # lands on /select-company, as before
    assert client.get("/api/companies", headers=headers).status_code == 200
    assert client.get("/terms", follow_redirects=False).headers["location"] == "/select-company"


def test_a_login_after_new_terms_lands_on_the_terms_page_until_the_person_agrees(client: TestClient) -> None:
    assert _publish(client) == 2
    first = start_login(client, CONTROLLER)
    assert first.status_code == 303 and first.headers["location"] == "/mfa"  # MFA first, as before
    page = client.get("/mfa")
    done = client.post(
        "/mfa",
        data={"code": mfa_code(client, CONTROLLER), "__RequestVerificationToken": form_token(page.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/terms"
    assert ".Plooto.Session" in client.cookies  # the session exists...
    _api_refused(client)  # ...but the API is closed to it
    for path in ("/", "/select-company", "/dashboard", "/mfa"):
        assert client.get(path, follow_redirects=False).headers["location"] == "/terms", path

    terms = client.get("/terms")
    assert terms.status_code == 200 and terms.headers["content-type"].startswith("text/html")
    assert 'id="terms-form"' in terms.text and 'name="acceptTerms"' in terms.text
    assert "I agree" in terms.text and 'data-terms-version="2"' in terms.text
    assert "Terms of Service" in terms.text and "| Plooto" in terms.text

    # CSRF-protected like the other forms; and the box must be checked: nothing accepted either way.
    forged = client.post("/terms", data={"acceptTerms": "true"}, follow_redirects=False)
    assert forged.status_code == 400 and 'data-error-code="AntiforgeryTokenInvalid"' in forged.text
    unchecked = client.post(
        "/terms", data={"__RequestVerificationToken": form_token(terms.text)}, follow_redirects=False
    )
    assert unchecked.status_code == 400 and 'data-error-code="TermsAcceptanceRequired"' in unchecked.text
    _api_refused(client)

    agreed = client.post(
        "/terms",
        data={"acceptTerms": "true", "__RequestVerificationToken": form_token(terms.text)},
        follow_redirects=False,
    )
    assert agreed.status_code == 303 and agreed.headers["location"] == "/select-company"
    headers = {"X-XSRF-TOKEN": client.cookies["XSRF-TOKEN"]}
    assert client.get("/api/companies", headers=headers).status_code == 200
    assert "Select your company" in client.get("/select-company").text


def test_a_user_without_mfa_goes_straight_from_the_password_to_the_terms(client: TestClient) -> None:
    companies = client.get("/__sandbox/users").json()
    viewer = next(u["email"] for u in companies if u["email"].startswith("viewer@"))
    _publish(client)
    response = start_login(client, viewer)
    assert response.status_code == 303 and response.headers["location"] == "/terms"
    _api_refused(client)


def test_a_user_signed_in_when_terms_are_published_is_refused_on_the_next_call(client: TestClient) -> None:
    headers = login(client, CONTROLLER)
    assert client.get("/api/companies", headers=headers).status_code == 200
    _publish(client)
    _api_refused(client, headers)
    # Accepted elsewhere (the person's own browser): the same session works again.
    accepted = client.post("/__sandbox/mutate", json={"action": "acceptTerms", "userEmail": CONTROLLER})
    assert accepted.status_code == 200 and accepted.json()["changed"]
    assert client.get("/api/companies", headers=headers).status_code == 200


def test_accepting_is_per_user_and_each_publication_asks_again(client: TestClient) -> None:
    _publish(client)
    client.post("/__sandbox/mutate", json={"action": "acceptTerms", "userEmail": CONTROLLER})
    assert start_login(client, CLERK).headers["location"] == "/mfa"
    page = client.get("/mfa")
    done = client.post(
        "/mfa",
        data={"code": mfa_code(client, CLERK), "__RequestVerificationToken": form_token(page.text)},
        follow_redirects=False,
    )
    assert done.headers["location"] == "/terms"  # the clerk has not accepted them

    with make_client() as other:
        headers = login(other, CONTROLLER)  # the controller has: straight to the app
        assert other.get("/api/companies", headers=headers).status_code == 200
        assert _publish(other) == 2
        _api_refused(other, headers)


@pytest.mark.parametrize("body", [{}, {"userEmail": "nobody@example.test"}])
def test_accept_terms_needs_a_known_user(client: TestClient, body: dict[str, str]) -> None:
    response = client.post("/__sandbox/mutate", json={"action": "acceptTerms", **body})
    assert response.status_code in (400, 404)


def test_a_lockout_and_a_wrong_password_are_unchanged_by_pending_terms() -> None:
    with make_client(lockout_threshold=2) as client:
        _publish(client)
        assert start_login(client, CONTROLLER, "wrong").status_code == 401
        locked = start_login(client, CONTROLLER, "wrong")
        assert locked.status_code == 423 and 'data-error-code="AccountLocked"' in locked.text


def test_terms_survive_a_restart_with_a_state_file(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.state"
    config = SandboxConfig(seed=4, companies=1, bills_per_company=10, state_file=path)
    with TestClient(create_app(config)) as first:
        _publish(first)
        first.post("/__sandbox/mutate", json={"action": "acceptTerms", "userEmail": CLERK})
    with TestClient(create_app(config)) as second:
        assert start_login(second, "viewer@" + _first_company_slug(second)).headers["location"] == "/terms"
        assert _publish(second) == 3  # the version in force was kept


def test_a_state_file_written_before_terms_loads_with_the_terms_accepted(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.state"
    config = SandboxConfig(seed=4, companies=1, bills_per_company=10, state_file=path)
    with TestClient(create_app(config)):
        pass
    with path.open("rb") as stream:
        assert stream.read(len(MAGIC)) == MAGIC
        version, state = pickle.load(stream)
    assert isinstance(state, PortalState)
    del state.__dict__["terms_version"], state.__dict__["terms_accepted"]  # as written before terms
    with path.open("wb") as stream:
        stream.write(MAGIC)
        pickle.dump((version, state), stream)
    with TestClient(create_app(config)) as client:
        headers = login(client, CONTROLLER)
        assert client.get("/api/companies", headers=headers).status_code == 200
        assert _publish(client) == 2
        _api_refused(client, headers)


def _first_company_slug(client: TestClient) -> str:
    users = client.get("/__sandbox/users").json()
    return str(next(u["email"] for u in users if u["email"].startswith("viewer@")).split("@", 1)[1])
