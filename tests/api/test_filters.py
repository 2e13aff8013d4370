"""Every filter of every list, checked against an independent evaluation of the stored rows."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select

from plooto_api.money import from_minor
from plooto_api.services.objects import RESOURCES
from plooto_api.store.database import create_db_engine, session_factory


def _param(value: Any, money: bool) -> str:
    if money:
        return str(from_minor(value, "CAD"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _matches(value: Any, op: str, pick: Any) -> bool:
    if value is None:
        return False
    return {"eq": value == pick, "gte": value >= pick, "lte": value <= pick}[op]


def _all_ids(world: dict[str, Any], path: str, params: dict[str, str]) -> set[str]:
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    ids: set[str] = set()
    cursor = None
    while True:
        query = {**params, "limit": "100", **({"cursor": cursor} if cursor else {})}
        response = world["client"].get(f"/{path}", params=query, headers=headers)
        assert response.status_code == 200, (path, params, response.text)
        body = response.json()
        ids |= {item["id"] for item in body["data"]}
        if not body["has_more"]:
            return ids
        cursor = body["next_cursor"]


def test_every_filter_matches_the_rows_it_should(world: dict[str, Any], database_url: str) -> None:
    engine = create_db_engine(database_url)
    sessions = session_factory(engine)
    checked = 0
    try:
        for resource in RESOURCES:
            model = resource.model
            with sessions() as session:
                rows = list(session.scalars(select(model).where(model.deleted_at.is_(None))))
            for spec in resource.filters:
                values = sorted(
                    {getattr(r, spec.column) for r in rows} - {None}, key=lambda v: (str(type(v)), v)
                )
                if not values:
                    continue
                pick = values[len(values) // 2]
                expected = {r.id for r in rows if _matches(getattr(r, spec.column), spec.op, pick)}
                got = _all_ids(world, resource.path, {spec.param: _param(pick, spec.money)})
                assert got == expected, (resource.path, spec.param, pick)
                checked += 1
    finally:
        engine.dispose()
    assert checked >= 50  # every resource's filters, not a handful


def test_an_amount_the_store_cannot_compare_is_a_400_naming_its_filter(world: dict[str, Any]) -> None:
    # It named no parameter, and spoke of CAD though no currency was given.
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    for value, needle in (("1000.005", "cents unless currency="), ("1e400", "out of range")):
        response = world["client"].get("/bills", params={"amount_min": value}, headers=headers)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (
            error["param"] == "amount_min"
            and error["message"].startswith("amount_min: ")
            and needle in error["message"]
        )


def test_a_currency_in_lower_case_and_a_contact_status_out_of_its_set(world: dict[str, Any]) -> None:
    # `currency=cad` matched nothing (200, empty), as did `/vendors?status=bogus`.
    upper = _all_ids(world, "bills", {"currency": "CAD"})
    assert upper and _all_ids(world, "bills", {"currency": "cad"}) == upper
    headers = {"Authorization": f"Bearer {world['tokens']['admin']}"}
    for path in ("vendors", "customers"):
        refused = world["client"].get(f"/{path}", params={"status": "bogus"}, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "status", refused.text
