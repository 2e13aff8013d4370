"""The portal edge: 429 under a burst, and every injectable fault taking effect."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from plooto_sandbox.faults import RateLimiter, retry_after_seconds
from sandbox.sandbox_helpers import CONTROLLER, Portal, login, make_client
from sandbox.test_api import create_bill


def test_default_rate_limit_answers_429_with_retry_after() -> None:
    with make_client() as client:
        headers = login(client, CONTROLLER)
        # Fire until refused: at 25 req/s refill, the 50-token burst runs out after ~50 fast calls.
        responses = []
        for _ in range(400):
            responses.append(client.get("/api/companies", headers=headers))
            if responses[-1].status_code == 429:
                break
        limited = responses[-1]
        assert limited.status_code == 429, "a burst must eventually exceed the default bucket"
        # The 50-token burst, less the token the sign-in's own page took; refill can only add more
        # (how many depends on this machine's speed, so only the lower bound is certain).
        assert len(responses) - 1 >= 49
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["errorCode"] == "RateLimitExceeded"


def test_token_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    now = 0.0
    limiter = RateLimiter(2, 2, clock=lambda: now)
    assert [limiter.take("s"), limiter.take("s")] == [None, None]  # the burst
    assert limiter.take("s") == pytest.approx(0.5)  # one token comes back every 1/rate s
    assert limiter.take("other") is None  # buckets are per session
    now = 0.5
    assert limiter.take("s") is None
    assert limiter.take("s") == pytest.approx(0.5)
    assert [retry_after_seconds(w) for w in (0.01, 1.0, 1.2)] == [1, 1, 2]  # whole seconds, at least 1


def test_rate_limit_is_per_session_and_configurable(client: TestClient) -> None:
    headers = login(client, CONTROLLER)
    other = TestClient(client.app)
    other_headers = login(other, "cfo@maple-leaf-bakery-ltd.test")
    assert client.put("/__sandbox/rate-limit", json={"ratePerSecond": 1, "burst": 3}).status_code == 200
    codes = [client.get("/api/session", headers=headers).status_code for _ in range(5)]
    assert 429 in codes
    # The other session has its own bucket.
    assert other.get("/api/session", headers=other_headers).status_code == 200
    client.put("/__sandbox/rate-limit", json={"ratePerSecond": 1000, "burst": 1000})
    assert client.get("/api/session", headers=headers).status_code == 200
    assert client.put("/__sandbox/rate-limit", json={"ratePerSecond": 0}).status_code == 400


def test_latency_fault_delays_matching_requests(portal: Portal) -> None:
    portal.client.post(
        "/__sandbox/faults", json={"kind": "latency", "latencyMs": 300, "pathPattern": "/bills$", "count": 1}
    )
    started = time.monotonic()
    assert portal.api("GET", portal.company("/bills")).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert portal.client.get("/__sandbox/faults").json() == []  # a counted fault is used up


def test_error_fault_is_counted_and_not_applied(portal: Portal) -> None:
    fault = portal.client.post(
        "/__sandbox/faults",
        json={"kind": "error", "status": 503, "method": "POST", "pathPattern": "/bills$", "count": 2},
    ).json()
    for _ in range(2):
        with pytest.raises(AssertionError):
            create_bill(portal, billNumber="ERR")
    faults = portal.client.get("/__sandbox/faults").json()
    assert faults == []  # consumed
    assert fault["remaining"] == 2
    bills = portal.api("GET", portal.company("/bills"), params={"pageSize": 500}).json()["items"]
    assert not any(b["billNumber"] == "ERR" for b in bills)
    assert portal.api("GET", portal.company("/bills")).status_code == 200


def test_error_fault_envelope(portal: Portal) -> None:
    portal.client.post("/__sandbox/faults", json={"kind": "error", "status": 500, "count": 1})
    response = portal.api("GET", portal.company("/vendors"))
    assert response.status_code == 500 and response.json()["errorCode"] == "InternalServerError"


def test_drop_response_applies_the_write_then_answers_502(portal: Portal) -> None:
    portal.client.post(
        "/__sandbox/faults",
        json={"kind": "drop_response", "mode": "502", "method": "POST", "pathPattern": "/bills$", "count": 1},
    )
    lost = portal.api(
        "POST",
        portal.company("/bills"),
        json={
            "vendorId": portal.api("GET", portal.company("/vendors")).json()["items"][0]["vendorId"],
            "billNumber": "DROPPED-1", "issueDate": "2026-03-01", "dueDate": "2026-03-31",
            "lineItems": [{"description": "x", "amount": "10.00"}],
        },
    )  # fmt: skip
    assert lost.status_code == 502 and "Bad Gateway" in lost.text
    bills = portal.api("GET", portal.company("/bills"), params={"pageSize": 500}).json()["items"]
    assert [b["billNumber"] for b in bills].count("DROPPED-1") == 1


def test_revoke_session_fault(portal: Portal) -> None:
    portal.client.post(
        "/__sandbox/faults", json={"kind": "revoke_session", "count": 1, "pathPattern": "^/api/"}
    )
    response = portal.api("GET", portal.company("/bills"))
    assert response.status_code == 401 and response.json()["errorCode"] == "NotAuthenticated"
    assert portal.api("GET", portal.company("/bills")).status_code == 401  # the session is really gone


def test_mfa_rechallenge_fault(portal: Portal) -> None:
    portal.client.post("/__sandbox/faults", json={"kind": "mfa_rechallenge", "count": 1})
    response = portal.api("GET", portal.company("/bills"))
    assert response.status_code == 401 and response.json()["errorCode"] == "MfaRequired"
    assert portal.client.get("/select-company", follow_redirects=False).headers["location"] == "/mfa"
    # Answering the challenge again restores the same session.
    from sandbox.sandbox_helpers import form_token, mfa_code

    page = portal.client.get("/mfa")
    code = mfa_code(portal.client, CONTROLLER)
    portal.client.post("/mfa", data={"code": code, "__RequestVerificationToken": form_token(page.text)})
    assert portal.api("GET", portal.company("/bills")).status_code == 200


def test_mfa_rechallenge_leaves_a_user_without_mfa_signed_in(client: TestClient) -> None:
    # It put such a user on an MFA page with method "None", which the gateway took for drift.
    viewer = login(client, "viewer@maple-leaf-bakery-ltd.test")
    client.post("/__sandbox/faults", json={"kind": "mfa_rechallenge", "count": 1})
    assert client.get("/api/companies", headers=viewer).status_code == 200
    assert client.get("/select-company", follow_redirects=False).headers.get("location") != "/mfa"


def test_shape_change_fault_renames_one_field(portal: Portal) -> None:
    portal.client.post(
        "/__sandbox/faults",
        json={
            "kind": "shape_change",
            "objectType": "payment",
            "fromField": "requestedDebitDate",
            "toField": "debitDate",
        },
    )
    payment = portal.api("GET", portal.company("/payments")).json()["items"][0]
    assert "debitDate" in payment and "requestedDebitDate" not in payment
    bill = portal.api("GET", portal.company("/bills")).json()["items"][0]
    assert "billId" in bill  # other object types untouched
    portal.client.delete("/__sandbox/faults")
    assert "requestedDebitDate" in portal.api("GET", portal.company("/payments")).json()["items"][0]


def test_probabilistic_faults_are_seeded() -> None:
    def outcome() -> list[int]:
        with make_client() as client:
            headers = login(client, CONTROLLER)
            client.post(
                "/__sandbox/faults", json={"kind": "error", "probability": 0.5, "pathPattern": "/api/session"}
            )
            return [client.get("/api/session", headers=headers).status_code for _ in range(20)]

    first = outcome()
    assert 503 in first and 200 in first
    assert first == outcome()


def test_bad_fault_specs_rejected(client: TestClient) -> None:
    assert client.post("/__sandbox/faults", json={"kind": "meteor"}).status_code == 400
    assert client.post("/__sandbox/faults", json={"kind": "shape_change"}).status_code == 400
    assert client.post("/__sandbox/faults", json={"kind": "error", "pathPattern": "("}).status_code == 400
    added = client.post("/__sandbox/faults", json={"kind": "latency", "latencyMs": 1}).json()
    assert client.delete(f"/__sandbox/faults/{added['faultId']}").status_code == 200
    assert client.delete(f"/__sandbox/faults/{added['faultId']}").status_code == 404
