"""Workflows: raw API-format graphs checked and normalised, and the typed
templates (text-to-image, AnimateDiff video) that build them."""

from .graph import MAX_NODES, parse_workflow_json, validate_graph, whole_numbers_to_int
from .templates import (
    TEXT_TO_IMAGE_FIELDS,
    VIDEO_FIELDS,
    TextToImageParams,
    VideoParams,
    text_to_image_graph,
    video_graph,
)

__all__ = [
    "MAX_NODES",
    "TEXT_TO_IMAGE_FIELDS",
    "VIDEO_FIELDS",
    "TextToImageParams",
    "VideoParams",
    "parse_workflow_json",
    "text_to_image_graph",
    "validate_graph",
    "video_graph",
    "whole_numbers_to_int",
]
