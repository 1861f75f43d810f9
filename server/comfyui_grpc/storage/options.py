"""Command-line flags for storage; each overrides its environment variable."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from . import settings as s


def add_storage_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``--s3-*`` and ``--artifact-dir`` flags (all default to the environment)."""
    group = parser.add_argument_group(
        "artifact storage",
        "S3 is used when a bucket is set; otherwise outputs go to --artifact-dir. "
        "Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS "
        "credentials file.",
    )
    group.add_argument(
        "--s3-endpoint-url",
        metavar="URL",
        help=f"S3 endpoint, e.g. http://rustfs:9000; unset means AWS [{s.ENV_ENDPOINT_URL}]",
    )
    group.add_argument(
        "--s3-region", metavar="REGION", help=f"region for signing [{s.ENV_REGION}, us-east-1]"
    )
    group.add_argument(
        "--s3-bucket",
        metavar="BUCKET",
        help=f"bucket for artifacts; unset: the local directory [{s.ENV_BUCKET}]",
    )
    group.add_argument(
        "--s3-prefix", metavar="PREFIX", help=f"key prefix for all objects [{s.ENV_PREFIX}]"
    )
    group.add_argument(
        "--s3-create-bucket",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"create the bucket at start if missing [{s.ENV_CREATE_BUCKET}, false]",
    )
    group.add_argument(
        "--s3-path-style",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"path-style addressing, needed by RustFS and MinIO [{s.ENV_PATH_STYLE}, true]",
    )
    group.add_argument(
        "--artifact-dir",
        metavar="DIR",
        type=Path,
        help=f"local store directory when no bucket is set [{s.ENV_ARTIFACT_DIR}, "
        f"{s.DEFAULT_LOCAL_DIR}]",
    )


def storage_settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> s.StorageSettings:
    """Settings from the environment with the flags given on the command line on top."""
    merged = dict(environ)
    overrides = {
        s.ENV_ENDPOINT_URL: args.s3_endpoint_url,
        s.ENV_REGION: args.s3_region,
        s.ENV_BUCKET: args.s3_bucket,
        s.ENV_PREFIX: args.s3_prefix,
        s.ENV_CREATE_BUCKET: args.s3_create_bucket,
        s.ENV_PATH_STYLE: args.s3_path_style,
        s.ENV_ARTIFACT_DIR: args.artifact_dir,
    }
    for name, value in overrides.items():
        if value is None:
            continue
        merged[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return s.StorageSettings.from_env(merged)
