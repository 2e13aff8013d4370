"""Malformed request bodies: a 400 invalid_request whose `param` names the field at fault (or none,
when the body as a whole is wrong) and whose message says what is wrong, in the API's words."""

from __future__ import annotations

import json
from typing import Any

import pytest

BILL = {"vendor_id": "ven_x", "number": "N-1", "issue_date": "2026-03-02", "due_date": "2026-04-01",
        "lines": [{"description": "Paper", "amount": "10.00"}]}  # fmt: skip
INVOICE = {"customer_id": "cus_x", "lines": [{"description": "Retainer", "amount": "10.00"}]}


def _post(world: dict[str, Any], path: str, **kwargs: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}", **kwargs.pop("headers", {})}
    response = world["client"].post(path, headers=headers, **kwargs)
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "invalid_request" and error["request_id"]
    assert "CreateBill" not in error["message"] and "instance of" not in error["message"]
    return error


def _json(world: dict[str, Any], path: str, content: bytes | str) -> dict[str, Any]:
    return _post(world, path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(
    "path", ["/create_payment", "/create_bill", "/create_invoice", "/approvals/bill_x/reject"]
)
def test_a_body_that_is_not_json_names_no_field(world: dict[str, Any], path: str) -> None:
    error = _json(world, path, "{bad")
    assert error["param"] is None  # not "1", the offset of the fault
    assert error["message"].startswith("the body is not valid JSON: ")
    assert "(at character 1)" in error["message"]
    for content in ("[1, 2]", '"a string"', "42"):
        error = _json(world, path, content)
        assert error["param"] is None and error["message"] == "the body must be a JSON object", content
    for unreadable in (b"\xff\xfe{", "[" * 50_000 + "]" * 50_000):  # not UTF-8; nested too deeply
        error = _json(world, path, unreadable)
        assert error["param"] is None and error["message"].startswith("the body is not valid JSON: ")


@pytest.mark.parametrize("path", ["/create_payment", "/create_bill", "/create_invoice"])
def test_an_empty_body_is_named_as_such(world: dict[str, Any], path: str) -> None:
    error = _json(world, path, b"")
    assert error["param"] is None and error["message"] == "the body is empty; send a JSON object"


def test_a_body_sent_as_another_type_than_json(world: dict[str, Any]) -> None:
    error = _post(world, "/create_payment", content=json.dumps({"bill_id": "bill_x"}),
                  headers={"Content-Type": "text/plain"})  # fmt: skip
    assert error["param"] is None and "Content-Type: application/json" in error["message"]


def test_a_multipart_bill_part_that_is_not_a_json_object(world: dict[str, Any]) -> None:
    # The tester's repro: -F 'bill=[1,2]' answered param "" and "…instance of CreateBill".
    error = _post(world, "/create_bill", files={"bill": (None, "[1,2]")})
    assert error == {**error, "param": "bill", "message": "the bill part must be a JSON object"}
    broken = _post(world, "/create_bill", files={"bill": (None, "{bad")})
    assert broken["param"] == "bill" and broken["message"].startswith("the bill part is not valid JSON: ")
    empty = _post(world, "/create_bill", files={"bill": (None, " ")})
    assert empty["param"] == "bill" and empty["message"] == "the bill part is empty; send a JSON object"
    field = _post(world, "/create_bill", files={"bill": (None, json.dumps({**BILL, "number": 7}))})
    assert field["param"] == "number" and field["message"].startswith("number: ")


@pytest.mark.parametrize("path,body", [("/create_bill", BILL), ("/create_invoice", INVOICE)])
def test_a_wrong_field_inside_a_list_is_named_by_its_path(
    world: dict[str, Any], path: str, body: dict[str, Any]
) -> None:
    for content, param in (
        ({**body, "lines": [body["lines"][0], {"description": "Toner", "amount": "abc"}]}, "lines.1.amount"),
        ({**body, "lines": [1]}, "lines.0"),
        ({**body, "lines": [{"description": "Toner", "amount": "1.00", "colour": "red"}]}, "lines.0.colour"),
        ({**body, "lines": "Toner"}, "lines"),
    ):
        errors = [_json(world, path, json.dumps(content))]
        if path == "/create_bill":  # the same JSON as the multipart `bill` part
            errors.append(_post(world, path, files={"bill": (None, json.dumps(content))}))
        for error in errors:
            assert error["param"] == param, (content, error)
            assert error["message"].startswith(f"{param}: "), error
    not_an_object = _json(world, path, json.dumps({**body, "lines": [1]}))
    assert not_an_object["message"] == "lines.0: must be a JSON object"


def test_a_parameter_that_takes_one_value_given_twice_is_a_400(world: dict[str, Any]) -> None:
    # Only the last counted: `status=approved&status=paid` listed the paid bills alone, as if filtered.
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    for path, query in (("/bills", "status=approved&status=paid"), ("/bills", "limit=5&limit=100"),
                        ("/events", "limit=5&limit=7")):  # fmt: skip
        response = world["client"].get(f"{path}?{query}", headers=headers)
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request" and "given more than once" in error["message"], error
    # A parameter that takes a list still takes several values.
    assert (
        world["client"].get("/events?type=bill.created&type=payment.sent", headers=headers).status_code == 200
    )
