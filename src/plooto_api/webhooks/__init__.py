"""Webhooks: fan-out of events to endpoints, Standard Webhooks signatures, target validation and the
delivery worker that retries on a schedule and keeps each object's events in order per endpoint."""

from plooto_api.webhooks.delivery import RETRY_DELAYS, DeliveryWorker
from plooto_api.webhooks.fanout import delivery_rows
from plooto_api.webhooks.signing import generate_secret, signed_headers
from plooto_api.webhooks.targets import InvalidWebhookUrl, check_target_url

__all__ = [
    "RETRY_DELAYS",
    "DeliveryWorker",
    "InvalidWebhookUrl",
    "check_target_url",
    "delivery_rows",
    "generate_secret",
    "signed_headers",
]
