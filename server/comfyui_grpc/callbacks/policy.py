"""Which callback URLs the gateway may call: ``--callback-allow`` entries.

An entry is a host name (``hooks.example.com``), a wildcard for its
subdomains (``*.example.com``), or a network (``10.0.0.0/8``; a bare
address means just that address). A URL is allowed when its host is a
listed name, a subdomain of a wildcard, or an address inside a listed
network; https is required unless ``--callback-allow-http``.

The host's addresses are checked again when a callback is sent (DNS can
change between Generate and the job's end, or be made to): every address a
name resolves to must be public, or inside a listed network. So a listed
name that resolves to loopback, a private range or a cloud metadata
address is not called unless the operator listed that network too.

Pure: resolution is the deliverer's business.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit

from ..errors import FailedPrecondition, FieldViolation, InvalidArgument

MAX_URL_CHARS = 2048
URL_FIELD = "callback.url"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _is_host_name(text: str) -> bool:
    labels = text.split(".")
    return len(text) <= 253 and all(_LABEL.match(label) for label in labels)


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (IPv4-mapped IPv6 as its IPv4), or None."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class AllowList:
    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    """``.example.com`` for ``*.example.com``."""
    networks: tuple[Network, ...] = ()
    allow_http: bool = False
    entries: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, entries: Iterable[str], *, allow_http: bool = False) -> AllowList:
        """Raise ValueError naming the first entry that is none of the three forms."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[Network] = []
        kept: list[str] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            kept.append(entry)
            if entry.startswith("*."):
                if not _is_host_name(entry[2:]):
                    raise ValueError(f"{raw!r}: *. must be followed by a domain name")
                suffixes.append(entry[1:])
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if not _is_host_name(entry):
                raise ValueError(f"{raw!r} is not a host name, *.domain or network (CIDR)")
            names.add(entry)
        return cls(
            names=frozenset(names),
            suffixes=tuple(suffixes),
            networks=tuple(networks),
            allow_http=allow_http,
            entries=tuple(kept),
        )

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def _in_networks(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def host_allowed(self, host: str) -> bool:
        """Whether a URL's host is one the list names (before any resolution)."""
        address = parse_address(host)
        if address is not None:
            return self._in_networks(address)
        host = host.lower().rstrip(".")
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def address_allowed(self, address: Address) -> bool:
        """Whether the gateway may connect to ``address``: public, or listed."""
        if self._in_networks(address):
            return True
        return address.is_global and not address.is_multicast

    def check_url(self, url: str) -> SplitResult:
        """The parsed URL, or InvalidArgument (malformed) / FailedPrecondition (not allowed)."""
        parts = parse_url(url)
        if not self.enabled:
            raise FailedPrecondition(
                "this gateway sends no callbacks: its operator must list the receiver's "
                "host in --callback-allow (and set --callback-secret-file)",
                reason="CALLBACKS_DISABLED",
            )
        if parts.scheme == "http" and not self.allow_http:
            raise FailedPrecondition(
                "callback URLs must be https on this gateway (its operator can set "
                "--callback-allow-http)",
                reason="CALLBACK_NOT_ALLOWED",
            )
        host = parts.hostname or ""
        if not self.host_allowed(host):
            raise FailedPrecondition(
                f"callback host {host!r} is not in this gateway's --callback-allow list; "
                "ask its operator to add it",
                reason="CALLBACK_NOT_ALLOWED",
            )
        return parts


def _malformed(why: str) -> InvalidArgument:
    return InvalidArgument(f"invalid request: {URL_FIELD}: {why}", [FieldViolation(URL_FIELD, why)])


def parse_url(url: str) -> SplitResult:
    """Split a callback URL, raising InvalidArgument on ``callback.url`` if malformed."""
    if not url:
        raise _malformed("required when callback is set")
    if len(url) > MAX_URL_CHARS:
        raise _malformed(f"at most {MAX_URL_CHARS} characters")
    if not url.isprintable() or any(c.isspace() for c in url):
        raise _malformed("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise _malformed(f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise _malformed("must be an https:// (or http://) URL")
    if not parts.hostname:
        raise _malformed("must name a host")
    if parts.username is not None or parts.password is not None:
        raise _malformed("must not carry user:password@; the signature authenticates the sender")
    if parse_address(parts.hostname) is None and not _is_host_name(parts.hostname.rstrip(".")):
        raise _malformed(f"{parts.hostname!r} is not a valid host name")
    return parts
