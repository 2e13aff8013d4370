"""Webhook target URLs: http(s) only, no credentials, and no private or loopback addresses (unless
the gateway is told to allow them), checked on every address the host name resolves to."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx

MAX_URL_LENGTH = 2000

Resolver = Callable[[str, int], list[str]]


class InvalidWebhookUrl(ValueError):
    """A webhook target the gateway will not send to."""


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA)."""
    infos: list[Any] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def address_allowed(address: str) -> bool:
    """Whether an IP address is a public unicast address (not private, loopback, link-local, …)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def parse_target(url: str) -> tuple[str, int]:
    """The host and port of a well-formed target URL; InvalidWebhookUrl otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"url is longer than {MAX_URL_LENGTH} characters")
    # urlsplit drops tabs and newlines silently, and the HTTP client refuses what it let through.
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidWebhookUrl("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidWebhookUrl(f"url is not valid: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidWebhookUrl("url must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("url must not contain credentials")
    if not parts.hostname:
        raise InvalidWebhookUrl("url has no host")
    if parts.fragment:
        raise InvalidWebhookUrl("url must not contain a fragment")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def check_target_url(url: str, *, allow_private: bool, resolve: Resolver = resolve_host) -> str:
    """Validate a target URL and return it; InvalidWebhookUrl says why it is refused."""
    host, port = parse_target(url)
    if allow_private:
        return url
    try:
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = resolve(host, port)
        except OSError as exc:
            raise InvalidWebhookUrl(f"url host {host!r} does not resolve") from exc
    if not addresses:
        raise InvalidWebhookUrl(f"url host {host!r} does not resolve")
    refused = [a for a in addresses if not address_allowed(a)]
    if refused:
        raise InvalidWebhookUrl(
            f"url host {host!r} is a private, loopback or reserved address ({refused[0]}); "
            "set PLOOTO_API_WEBHOOK_ALLOW_PRIVATE=1 to allow it"
        )
    return url
