"""Uploaded documents (bill attachments): the type is read from the bytes, never trusted from the
client's declared content type, and the size is capped.

Allowed: PDF, PNG, JPEG and TIFF, as the portal's bill capture accepts; at most 10 MiB.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_UPLOAD_BYTES = 10 * 1024 * 1024

# Magic bytes at the start of each allowed type, and the content type we record for it.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),  # little-endian TIFF
    (b"MM\x00*", "image/tiff"),  # big-endian TIFF
)
ALLOWED_CONTENT_TYPES = frozenset(content_type for _, content_type in _SIGNATURES)


@dataclass(frozen=True)
class UploadRefused(ValueError):
    """An upload that is not accepted: `code` is the API error code, `status` its HTTP status."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def sniff_content_type(content: bytes) -> str | None:
    """The allowed content type the bytes start with, or None."""
    for magic, content_type in _SIGNATURES:
        if content.startswith(magic):
            return content_type
    return None


def check_upload(content: bytes, *, max_bytes: int = MAX_UPLOAD_BYTES) -> str:
    """Validate an uploaded document; returns its real content type, or raises UploadRefused."""
    if len(content) > max_bytes:
        raise UploadRefused(413, "payload_too_large", f"attachments are limited to {max_bytes} bytes")
    if not content:
        raise UploadRefused(400, "invalid_attachment", "the attachment is empty")
    content_type = sniff_content_type(content)
    if content_type is None:
        raise UploadRefused(415, "unsupported_media_type",
                            "attachments must be PDF, PNG, JPEG or TIFF documents")  # fmt: skip
    return content_type
