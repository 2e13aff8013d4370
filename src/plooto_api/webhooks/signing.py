"""Standard Webhooks signing (https://www.standardwebhooks.com/) with the `standardwebhooks` library.

A secret is `whsec_` + base64 of 32 random bytes. While a rotated-out secret is still honoured,
each message carries one signature per secret (space-separated), so receivers can switch over.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"


def generate_secret() -> str:
    """A new signing secret in the Standard Webhooks form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signed_headers(
    signing_secrets: Iterable[str], message_id: str, body: str, timestamp: datetime
) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` and `webhook-signature` for `body` sent at `timestamp`."""
    at = timestamp.astimezone(UTC).replace(microsecond=0)
    signatures = [Webhook(secret).sign(message_id, at, body) for secret in signing_secrets]
    if not signatures:
        raise ValueError("at least one signing secret is needed")
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": " ".join(signatures),
    }
