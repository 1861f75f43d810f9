"""Storage settings, read from the environment (flags override it, see ``options``).

Credentials come from the standard ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` variables or an AWS-style credentials file. They are
kept out of ``repr`` so that logging the settings never leaks them.
"""

from __future__ import annotations

import configparser
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .retry import RetryPolicy

MiB = 1024 * 1024
MIN_PART_BYTES = 5 * MiB
"""S3 rejects multipart parts smaller than this (except the last)."""
MAX_PART_BYTES = 5 * 1024 * MiB
DEFAULT_LOCAL_DIR = Path("var/artifacts")

ENV_ENDPOINT_URL = "COMFYUI_GRPC_S3_ENDPOINT_URL"
ENV_REGION = "COMFYUI_GRPC_S3_REGION"
ENV_BUCKET = "COMFYUI_GRPC_S3_BUCKET"
ENV_PREFIX = "COMFYUI_GRPC_S3_PREFIX"
ENV_CREATE_BUCKET = "COMFYUI_GRPC_S3_CREATE_BUCKET"
ENV_PATH_STYLE = "COMFYUI_GRPC_S3_PATH_STYLE"
ENV_MAX_ATTEMPTS = "COMFYUI_GRPC_S3_MAX_ATTEMPTS"
ENV_ARTIFACT_DIR = "COMFYUI_GRPC_ARTIFACT_DIR"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, kw_only=True)
class S3Settings:
    """Where and how to reach an S3-compatible store (AWS, RustFS, MinIO)."""

    bucket: str
    endpoint_url: str | None = None
    """None means AWS itself; set it for RustFS or MinIO, e.g. ``http://rustfs:9000``."""
    region: str = "us-east-1"
    prefix: str = ""
    create_bucket: bool = False
    path_style: bool = True
    """Path-style addressing (``host/bucket/key``), which S3-compatible servers need."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    multipart_threshold_bytes: int = 16 * MiB
    """Objects larger than this go up in parts; smaller ones in one PUT.

    Each multipart object costs three more requests than a PUT (create, last
    part, complete), which for a 10 MiB image is most of the copy's time.
    """
    part_size_bytes: int = 8 * MiB
    max_attempts: int = 8
    """Tries per request: with the back-off below, 22-45 s in all, enough to
    ride out a storage server restarting (a pod rescheduled) or outages in
    quick succession before a job fails with STORAGE_FAILED."""
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 60.0
    max_pool_connections: int = 64
    """HTTP connections kept to the store: one per concurrent upload or read."""

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ValueError("an S3 bucket name is required")
        if not MIN_PART_BYTES <= self.part_size_bytes <= MAX_PART_BYTES:
            raise ValueError(f"part size must be between {MIN_PART_BYTES} and {MAX_PART_BYTES}")
        if not 0 <= self.multipart_threshold_bytes <= MAX_PART_BYTES:
            raise ValueError(f"multipart threshold must be between 0 and {MAX_PART_BYTES}")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both the S3 access key id and the secret access key, or neither")
        if self.max_pool_connections < 1:
            raise ValueError("max_pool_connections must be at least 1")
        self.retry_policy()  # validates the retry fields

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_seconds=self.backoff_base_seconds,
            max_seconds=self.backoff_max_seconds,
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> S3Settings:
        """Reads ``COMFYUI_GRPC_S3_*`` and the AWS credentials; the bucket is required."""
        bucket = environ.get(ENV_BUCKET, "").strip()
        if not bucket:
            raise ValueError(f"{ENV_BUCKET} is not set")
        endpoint = environ.get(ENV_ENDPOINT_URL, "").strip() or None
        key_id, secret, token = load_credentials(environ)
        return cls(
            bucket=bucket,
            endpoint_url=endpoint,
            region=environ.get(ENV_REGION, "").strip() or "us-east-1",
            prefix=environ.get(ENV_PREFIX, "").strip(),
            create_bucket=env_flag(environ, ENV_CREATE_BUCKET, default=False),
            path_style=env_flag(environ, ENV_PATH_STYLE, default=True),
            max_attempts=_env_int(environ, ENV_MAX_ATTEMPTS, default=8),
            access_key_id=key_id,
            secret_access_key=secret,
            session_token=token,
        )


@dataclass(frozen=True, kw_only=True)
class StorageSettings:
    """Which store to use: S3 when a bucket is configured, else a local directory."""

    s3: S3Settings | None = None
    local_dir: Path = DEFAULT_LOCAL_DIR

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        local_dir = Path(environ.get(ENV_ARTIFACT_DIR, "").strip() or DEFAULT_LOCAL_DIR)
        if not environ.get(ENV_BUCKET, "").strip():
            return cls(s3=None, local_dir=local_dir)
        return cls(s3=S3Settings.from_env(environ), local_dir=local_dir)


def env_flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    """Parses a boolean variable; an unset one takes ``default``."""
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, not {raw!r}")


def _env_int(environ: Mapping[str, str], name: str, *, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {raw!r}") from None


def load_credentials(
    environ: Mapping[str, str],
) -> tuple[str | None, str | None, str | None]:
    """Access key id, secret and session token from the environment or a credentials file.

    The environment wins. Otherwise ``AWS_SHARED_CREDENTIALS_FILE`` (default
    ``~/.aws/credentials``) is read for profile ``AWS_PROFILE`` (default
    ``default``). All None leaves it to botocore's own chain (instance roles,
    web identity).
    """
    key_id = environ.get("AWS_ACCESS_KEY_ID") or None
    secret = environ.get("AWS_SECRET_ACCESS_KEY") or None
    token = environ.get("AWS_SESSION_TOKEN") or None
    if key_id and secret:
        return key_id, secret, token
    if key_id or secret:
        raise ValueError("set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither")
    explicit = environ.get("AWS_SHARED_CREDENTIALS_FILE")
    home = environ.get("HOME")
    if explicit:
        path = Path(explicit).expanduser()
    elif home:
        path = Path(home) / ".aws" / "credentials"
    else:
        return None, None, None
    profile = environ.get("AWS_PROFILE") or "default"
    if not path.is_file():
        if explicit:
            raise ValueError(f"credentials file {path} does not exist")
        return None, None, None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as exc:
        raise ValueError(f"credentials file {path} is not valid: {type(exc).__name__}") from exc
    if not parser.has_section(profile):
        if explicit or profile != "default":
            raise ValueError(f"credentials file {path} has no profile [{profile}]")
        return None, None, None
    section = parser[profile]
    key_id = section.get("aws_access_key_id") or None
    secret = section.get("aws_secret_access_key") or None
    if not (key_id and secret):
        raise ValueError(f"profile [{profile}] in {path} lacks a key id or secret")
    return key_id, secret, section.get("aws_session_token") or None
