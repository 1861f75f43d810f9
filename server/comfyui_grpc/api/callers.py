"""Who is calling: the name fair share and per-caller limits go by.

A caller is the bearer token's name (token files accept ``name:token``
lines; a bare token is named by a short hash of it), else the mutual-TLS
client certificate's subject, else ``anonymous``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

ANONYMOUS = "anonymous"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def parse_token_line(line: str) -> tuple[str, str]:
    """``name:token`` -> (name, token); a bare token is named ``token-<hash>``."""
    name, sep, token = line.partition(":")
    if sep and _NAME.match(name) and token.strip():
        return name, token.strip()
    token = line.strip()
    return f"token-{hashlib.sha256(token.encode()).hexdigest()[:8]}", token


def token_names(lines: Iterable[str]) -> dict[str, str]:
    """Token -> caller name, for every non-empty line."""
    names: dict[str, str] = {}
    for line in lines:
        if line.strip():
            name, token = parse_token_line(line.strip())
            names[token] = name
    return names


def caller_of(
    metadata: Iterable[tuple[str, Any]] | None,
    auth_context: Mapping[str, Iterable[bytes]] | None,
    names: Mapping[str, str],
) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            name = names.get(token.strip()) if scheme.lower() == "bearer" else None
            if name is not None:
                return name
    for key in ("x509_subject", "x509_common_name"):
        values = list((auth_context or {}).get(key) or ())
        if values:
            return values[0].decode(errors="replace")[:128]
    return ANONYMOUS
