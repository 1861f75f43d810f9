"""Key building and checking: nothing a caller or ComfyUI names can escape the prefix."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from comfyui_grpc.storage import InvalidKey, LocalArtifactStore
from comfyui_grpc.storage.keys import (
    MAX_KEY_BYTES,
    MAX_SEGMENT_BYTES,
    artifact_key,
    manifest_key,
    normalize_prefix,
    sanitize_segment,
    validate_key,
)
from hypothesis import given
from hypothesis import strategies as st

names = st.text(max_size=400)
prefixes = st.lists(st.text(max_size=30), max_size=4).map("/".join)


def assert_safe_segment(segment: str) -> None:
    assert segment
    assert "/" not in segment
    assert "\\" not in segment
    assert segment not in (".", "..")
    assert not segment.startswith(".")
    assert not any(unicodedata.category(c).startswith("C") for c in segment)
    assert not any(c.isspace() for c in segment)
    assert len(segment.encode()) <= MAX_SEGMENT_BYTES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ComfyUI_00001_.png", "ComfyUI_00001_.png"),
        ("AnimateDiff_00001.mp4", "AnimateDiff_00001.mp4"),
        ("../../etc/passwd", "_.._etc_passwd"),
        ("..", "_"),
        (".", "_"),
        ("", "_"),
        ("/abs/path.png", "_abs_path.png"),
        ("C:\\Windows\\x.png", "C__Windows_x.png"),
        ("a\x00b\nc\x7f.png", "a_b_c_.png"),
        (".hidden.png", "hidden.png"),
        ("my image (1).png", "my_image_(1).png"),
        ("café 東京.webp", "café_東京.webp"),
        ("12:3", "12_3"),
    ],
)
def test_sanitize_segment_examples(raw: str, expected: str) -> None:
    assert sanitize_segment(raw) == expected


def test_long_names_keep_their_extension() -> None:
    segment = sanitize_segment("x" * 500 + ".png")
    assert segment.endswith(".png")
    assert len(segment.encode()) == MAX_SEGMENT_BYTES


def test_prefix_is_normalised() -> None:
    assert normalize_prefix("") == ""
    assert normalize_prefix("/comfy//outputs/") == "comfy/outputs"
    assert normalize_prefix("../x/./y") == "_/x/_/y"
    with pytest.raises(ValueError, match="prefix"):
        normalize_prefix("/".join(["p" * 100] * 3))


def test_keys_have_the_documented_layout() -> None:
    assert artifact_key("outputs", "job", "9", "a.png") == "outputs/job/9/a.png"
    assert artifact_key("", "job", "9", "a.png") == "job/9/a.png"
    assert manifest_key("outputs", "job") == "outputs/job/manifest.json"
    # A node can never be named like the manifest and clash with it on disk.
    assert artifact_key("p", "job", "manifest.json", "a.png") == "p/job/manifest.json_/a.png"


@given(names)
def test_any_text_becomes_a_safe_segment(raw: str) -> None:
    segment = sanitize_segment(raw)
    assert_safe_segment(segment)
    assert sanitize_segment(segment) == segment


@given(prefixes, names, names, names)
def test_artifact_keys_stay_under_the_prefix(prefix: str, job: str, node: str, name: str) -> None:
    clean = normalize_prefix(prefix)
    key = artifact_key(clean, job, node, name)
    assert len(key.encode()) <= MAX_KEY_BYTES
    head = f"{clean}/" if clean else ""
    assert key.startswith(head)
    below = key[len(head) :].split("/")
    assert len(below) == 3
    for segment in below:
        assert_safe_segment(segment)
    assert validate_key(clean, key) == below
    assert validate_key(clean, manifest_key(clean, job))[-1] == "manifest.json"


@given(names, names, names)
def test_local_paths_stay_inside_the_root(job: str, node: str, name: str) -> None:
    root = Path("/srv/artifacts")
    store = LocalArtifactStore(root, prefix="outputs")
    key = store.artifact_key(job, node, name)
    path = root.joinpath(*key.split("/"))
    assert path.resolve().is_relative_to(root / "outputs")


@given(st.text(max_size=200))
def test_validate_key_accepts_only_sanitised_keys(key: str) -> None:
    try:
        segments = validate_key("outputs", key)
    except InvalidKey:
        return
    assert key.startswith("outputs/")
    for segment in segments:
        assert_safe_segment(segment)
