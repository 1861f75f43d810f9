"""Settings from the environment, flags and credentials files; choosing the store."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from comfyui_grpc.storage import (
    LocalArtifactStore,
    S3ArtifactStore,
    S3Settings,
    StorageSettings,
    add_storage_arguments,
    guess_content_type,
    make_store,
    storage_settings_from_args,
)
from storage_helpers import SECRET_KEY, s3_settings

BASE_ENV = {
    "COMFYUI_GRPC_S3_ENDPOINT_URL": "http://rustfs:9000",
    "COMFYUI_GRPC_S3_REGION": "eu-west-1",
    "COMFYUI_GRPC_S3_BUCKET": "renders",
    "COMFYUI_GRPC_S3_PREFIX": "comfy/outputs",
    "COMFYUI_GRPC_S3_CREATE_BUCKET": "true",
    "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "very-secret-value",
}


def test_s3_settings_from_env() -> None:
    settings = S3Settings.from_env(BASE_ENV)
    assert settings.endpoint_url == "http://rustfs:9000"
    assert settings.region == "eu-west-1"
    assert settings.bucket == "renders"
    assert settings.prefix == "comfy/outputs"
    assert settings.create_bucket is True
    assert settings.path_style is True
    assert settings.access_key_id == "AKIDEXAMPLE"
    assert settings.secret_access_key == "very-secret-value"


def test_defaults_without_optional_variables() -> None:
    settings = S3Settings.from_env({"COMFYUI_GRPC_S3_BUCKET": "b", "HOME": "/nonexistent"})
    assert settings.endpoint_url is None
    assert settings.region == "us-east-1"
    assert settings.prefix == ""
    assert settings.create_bucket is False
    assert settings.access_key_id is None
    assert settings.part_size_bytes == 8 * 1024 * 1024
    assert settings.multipart_threshold_bytes == 16 * 1024 * 1024


def test_credentials_never_appear_in_repr() -> None:
    text = repr(S3Settings.from_env(BASE_ENV)) + str(S3Settings.from_env(BASE_ENV))
    assert "very-secret-value" not in text
    assert "AKIDEXAMPLE" not in text
    assert "renders" in text


def test_credentials_file_with_profile(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
        "[rustfs]\naws_access_key_id = R\naws_secret_access_key = RS%\n"
    )
    env = {"COMFYUI_GRPC_S3_BUCKET": "b", "AWS_SHARED_CREDENTIALS_FILE": str(path)}
    default = S3Settings.from_env(env)
    assert (default.access_key_id, default.secret_access_key) == ("D", "DS")
    named = S3Settings.from_env({**env, "AWS_PROFILE": "rustfs"})
    assert (named.access_key_id, named.secret_access_key) == ("R", "RS%")
    from_env = S3Settings.from_env({**env, "AWS_ACCESS_KEY_ID": "E", "AWS_SECRET_ACCESS_KEY": "ES"})
    assert from_env.access_key_id == "E"


def test_credentials_file_under_home(tmp_path: Path) -> None:
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "credentials").write_text(
        "[default]\naws_access_key_id = H\naws_secret_access_key = HS\n"
    )
    settings = S3Settings.from_env({"COMFYUI_GRPC_S3_BUCKET": "b", "HOME": str(tmp_path)})
    assert settings.access_key_id == "H"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AWS_ACCESS_KEY_ID": "only-the-id"}, "both"),
        ({"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials"}, "does not exist"),
        ({"COMFYUI_GRPC_S3_CREATE_BUCKET": "maybe"}, "true or false"),
        ({"COMFYUI_GRPC_S3_MAX_ATTEMPTS": "many"}, "whole number"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        S3Settings.from_env({"COMFYUI_GRPC_S3_BUCKET": "b", **env})


def test_profile_missing_from_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("[default]\naws_access_key_id = D\naws_secret_access_key = DS\n")
    with pytest.raises(ValueError, match=r"no profile \[other\]"):
        S3Settings.from_env(
            {
                "COMFYUI_GRPC_S3_BUCKET": "b",
                "AWS_SHARED_CREDENTIALS_FILE": str(path),
                "AWS_PROFILE": "other",
            }
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"bucket": ""}, "bucket"),
        ({"part_size_bytes": 1024}, "part size"),
        ({"multipart_threshold_bytes": -1}, "multipart threshold"),
        ({"multipart_threshold_bytes": 6 * 1024**3}, "multipart threshold"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"access_key_id": None}, "both"),
    ],
)
def test_invalid_s3_settings(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s3_settings("http://127.0.0.1:1", **overrides)


def test_no_bucket_means_local_directory(tmp_path: Path) -> None:
    settings = StorageSettings.from_env({"COMFYUI_GRPC_ARTIFACT_DIR": str(tmp_path)})
    assert settings.s3 is None
    store = make_store(settings)
    assert isinstance(store, LocalArtifactStore)
    assert store.root == tmp_path
    assert isinstance(make_store(StorageSettings.from_env(BASE_ENV)), S3ArtifactStore)


def test_flags_override_the_environment(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_storage_arguments(parser)
    args = parser.parse_args(
        [
            "--s3-bucket",
            "flagged",
            "--s3-prefix",
            "p",
            "--no-s3-create-bucket",
            "--no-s3-path-style",
            "--s3-region",
            "us-west-2",
        ]
    )
    settings = storage_settings_from_args(args, BASE_ENV)
    assert settings.s3 is not None
    assert settings.s3.bucket == "flagged"
    assert settings.s3.prefix == "p"
    assert settings.s3.create_bucket is False
    assert settings.s3.path_style is False
    assert settings.s3.region == "us-west-2"
    assert settings.s3.endpoint_url == "http://rustfs:9000"  # from the environment

    local = storage_settings_from_args(
        parser.parse_args(["--artifact-dir", str(tmp_path)]), {"HOME": "/nonexistent"}
    )
    assert local.s3 is None
    assert local.local_dir == tmp_path


async def test_store_logs_never_contain_credentials(
    moto_endpoint: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with S3ArtifactStore(s3_settings(moto_endpoint)) as store:
        key = store.artifact_key("job", "9", "a.png")
        await store.put_bytes(key, b"x" * 100, content_type="image/png")
        await store.presign_get(key, 60)
    assert caplog.records
    assert SECRET_KEY not in caplog.text
    assert "artifact store: s3://" in caplog.text


@pytest.mark.parametrize(
    ("name", "head", "expected"),
    [
        ("ComfyUI_00001_.png", b"", "image/png"),
        ("x.JPG", b"", "image/jpeg"),
        ("x.webp", b"", "image/webp"),
        ("AnimateDiff_00001.mp4", b"", "video/mp4"),
        ("clip.webm", b"", "video/webm"),
        ("clip.gif", b"", "image/gif"),
        ("noext", b"\x89PNG\r\n\x1a\n....", "image/png"),
        ("noext", b"\x00\x00\x00\x20ftypisom", "video/mp4"),
        ("noext", b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("noext", b"", "application/octet-stream"),
    ],
)
def test_content_types(name: str, head: bytes, expected: str) -> None:
    assert guess_content_type(name, head) == expected
