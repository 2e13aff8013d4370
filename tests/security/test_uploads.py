"""Uploads are checked by their bytes (PDF, PNG, JPEG, TIFF) and their size (10 MiB)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from plooto_api.services.uploads import MAX_UPLOAD_BYTES, UploadRefused, check_upload
from security.conftest import bearer


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"%PDF-1.7\n...", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"II*\x00\x08\x00", "image/tiff"),
        (b"MM\x00*\x00\x08", "image/tiff"),
    ],
)
def test_allowed_types_are_recognised_by_their_bytes(content: bytes, expected: str) -> None:
    assert check_upload(content) == expected


@pytest.mark.parametrize(
    "content", [b"MZ\x90\x00 an exe", b"<html><script>", b"PK\x03\x04 a zip", b"GIF89a", b" %PDF-late"]
)
def test_other_types_are_refused_whatever_they_claim(content: bytes) -> None:
    with pytest.raises(UploadRefused) as refused:
        check_upload(content)
    assert refused.value.status == 415 and refused.value.code == "unsupported_media_type"


def test_size_and_emptiness_are_checked() -> None:
    with pytest.raises(UploadRefused) as too_big:
        check_upload(b"%PDF-" + b"0" * MAX_UPLOAD_BYTES)
    assert too_big.value.status == 413
    with pytest.raises(UploadRefused) as empty:
        check_upload(b"")
    assert empty.value.status == 400
    assert check_upload(b"%PDF-" + b"0" * 100, max_bytes=200) == "application/pdf"


def test_create_bill_refuses_a_disguised_attachment(
    client: TestClient, make_token: Callable[..., str]
) -> None:
    headers = bearer(make_token(["bills:write"]))
    response = client.post("/create_bill", headers=headers, data={"bill": "{}"},
                           files={"file": ("invoice.pdf", b"MZ\x90\x00not a pdf", "application/pdf")})  # fmt: skip
    assert response.status_code == 415, response.text
    assert response.json()["error"] == {**response.json()["error"], "code": "unsupported_media_type",
                                        "param": "file"}  # fmt: skip


def test_create_bill_refuses_an_attachment_over_10_mib(
    client: TestClient, make_token: Callable[..., str]
) -> None:
    headers = bearer(make_token(["bills:write"]))
    big = b"%PDF-1.4" + b"0" * (MAX_UPLOAD_BYTES + 10)
    response = client.post("/create_bill", headers=headers, data={"bill": "{}"},
                           files={"file": ("big.pdf", big, "application/pdf")})  # fmt: skip
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
