"""URLs as they may be shown: without user-info.

A ComfyUI URL may carry credentials (``http://user:pass@host:8188``). The
gateway sends them, but never shows them: jobs, responses, metrics labels,
manifests and logs all carry the URL through :func:`redact_url`.
"""

from __future__ import annotations


def redact_url(url: str) -> str:
    """``url`` without ``user:password@``; anything else is kept as it is.

    Done on the text rather than with ``urlsplit``, which refuses some
    malformed ports: a URL that cannot be parsed must still not leak.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    authority, tail = rest[:end], rest[end:]
    if "@" not in authority:
        return url
    return f"{scheme}{sep}{authority.rpartition('@')[2]}{tail}"


def redact_database_url(url: str) -> str:
    """A database URL (``postgresql://user:password@host/db?...``) as it may be
    shown: :func:`redact_url`, and without a ``password=`` query parameter,
    where libpq takes one too."""
    shown = redact_url(url)
    base, sep, query = shown.partition("?")
    if not sep:
        return shown
    kept = [part for part in query.split("&") if part.partition("=")[0].lower() != "password"]
    return f"{base}?{'&'.join(kept)}" if kept else base
