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
