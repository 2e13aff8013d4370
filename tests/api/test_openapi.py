"""The OpenAPI document says what the gateway answers: the error envelope on every error, the
errors every route gives, the writes' bodies, answers and Idempotency-Key."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.fixture
def document(world: dict[str, Any]) -> dict[str, Any]:
    response = world["client"].get("/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in document["paths"].items() for method, op in ops.items()]


def test_every_error_answer_is_the_error_envelope(document: dict[str, Any]) -> None:
    # FastAPI's own 422 (`{"detail": [...]}`) was documented on every route and never served.
    assert "HTTPValidationError" not in json.dumps(document)
    error = document["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        assert "400" in responses, (method, path)
        for status, response in responses.items():
            if status[0] in "45":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, status)
        if path not in ("/health", "/metrics", "/authenticate", "/authenticate/mfa"):
            assert {"401", "403"} <= set(responses), (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)


def test_writes_document_their_body_answers_and_idempotency_key(document: dict[str, Any]) -> None:
    writes = {
        "/create_payment": "Payment", "/create_invoice": "Invoice", "/create_bill": "Bill",
        "/payments/{payment_id}/cancel": "Payment", "/invoices/{invoice_id}/remind": "Invoice",
    }  # fmt: skip
    for path, model in writes.items():
        operation = document["paths"][path]["post"]
        answered = next(r for s, r in operation["responses"].items() if s in ("200", "201"))
        assert answered["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        accepted = operation["responses"]["202"]["content"]["application/json"]["schema"]
        assert accepted == {"$ref": "#/components/schemas/Operation"}
        assert "Idempotency-Key" in [p["name"] for p in operation["parameters"] if p["in"] == "header"], path
    bill = document["paths"]["/create_bill"]["post"]["requestBody"]["content"]
    assert bill["application/json"]["schema"] == {"$ref": "#/components/schemas/CreateBill"}
    assert "CreateBill" in document["components"]["schemas"]
    assert set(bill["multipart/form-data"]["schema"]["properties"]) == {"bill", "file"}
    approvals = document["paths"]["/approvals"]["get"]["responses"]["200"]["content"]["application/json"]
    assert approvals["schema"] == {"$ref": "#/components/schemas/ApprovalList"}
