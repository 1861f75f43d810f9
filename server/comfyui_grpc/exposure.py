"""Whether a ``serve`` configuration would expose the API to anyone.

Binding a non-loopback address with neither bearer tokens nor TLS lets
anyone who can reach the port run jobs, read every output and cancel other
callers' work. ``serve`` refuses that unless told ``--insecure``; ``dev``
binds loopback by default and is not checked.
"""

from __future__ import annotations

import ipaddress

from .config import Settings


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses; wildcards and names are not."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_problem(settings: Settings) -> str:
    """Why ``settings`` would serve the API openly; "" when they would not."""
    if settings.insecure or is_loopback(settings.host):
        return ""
    if settings.auth_tokens or settings.auth_token_file or settings.tls_cert:
        return ""
    return (
        f"refusing to serve on {settings.host or 'every address'} with no authentication "
        "and no TLS: set --auth-token-file (or COMFYUI_GRPC_AUTH_TOKENS), --tls-cert and "
        "--tls-key, or --host 127.0.0.1; or pass --insecure to serve openly anyway"
    )
