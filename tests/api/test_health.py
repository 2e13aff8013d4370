"""The application answers /health, /openapi.json and /docs, and every error uses the envelope."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from plooto_api.api.app import create_app
from plooto_api.config import Settings
from plooto_api.store.database import head_revision


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    with TestClient(create_app(settings)) as client:
        yield client


def test_health_reports_ok_and_the_schema_revision(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["database"]["revision"] == head_revision()
    assert response.headers["x-request-id"].startswith("req_")


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "plooto-api"
    assert "/health" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_unknown_route_uses_the_error_envelope(client: TestClient) -> None:
    response = client.get("/no/such/thing")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["request_id"] == response.headers["x-request-id"]
    assert client.post("/health").json()["error"]["code"] == "method_not_allowed"


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.get("/health")
    body = client.get("/metrics")
    assert body.status_code == 200
    assert body.headers["content-type"].startswith("text/plain")
    assert 'plooto_api_http_requests_total{method="GET",route="/health",status="200"}' in body.text
    assert 'plooto_api_connections{state="healthy"}' in body.text
