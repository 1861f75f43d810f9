"""Raw workflow parsing and checks, typed templates, and ComfyUI error mapping."""

from __future__ import annotations

import json

import pytest
from comfyui_grpc.comfyui.errors import ComfyUIValidationError
from comfyui_grpc.errors import InvalidArgument
from comfyui_grpc.jobs.validation_errors import violations_from_comfyui
from comfyui_grpc.workflows import (
    TEXT_TO_IMAGE_FIELDS,
    TextToImageParams,
    VideoParams,
    parse_workflow_json,
    text_to_image_graph,
    validate_graph,
    video_graph,
    whole_numbers_to_int,
)

JOB = "00000000-0000-4000-8000-000000000002"


def test_struct_doubles_become_integers_where_whole() -> None:
    value = {"a": 20.0, "b": 7.5, "c": [1.0, {"d": -3.0}], "e": float("inf")}
    assert whole_numbers_to_int(value) == {
        "a": 20,
        "b": 7.5,
        "c": [1, {"d": -3}],
        "e": float("inf"),
    }
    assert isinstance(whole_numbers_to_int(20.0), int)


def test_workflow_json_keeps_big_integers_exact() -> None:
    graph = parse_workflow_json(
        '{"1": {"class_type": "KSampler", "inputs": {"seed": 18446744073709551615}}}'
    )
    assert graph["1"]["inputs"]["seed"] == 2**64 - 1


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"1": {}, "1": {}}', "twice"),
        ('{"1": {"class_type": "X", "inputs": {"v": NaN}}}', "NaN"),
    ],
)
def test_workflow_json_errors_are_invalid_argument(text: str, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as info:
        parse_workflow_json(text)
    assert info.value.violations[0].field == "workflow_json"


def test_validate_graph_lists_every_problem() -> None:
    graph = {
        "1": {"class_type": "", "inputs": {}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", -1]}},
        "4": "not a node",
    }
    with pytest.raises(InvalidArgument) as info:
        validate_graph(graph, "workflow")
    fields = [v.field for v in info.value.violations]
    assert fields == [
        "workflow.1.class_type",
        "workflow.2.inputs.images",
        "workflow.3.inputs.images",
        "workflow.4",
    ]


def test_validate_graph_limits_size_and_depth() -> None:
    big = {str(i): {"class_type": "X", "inputs": {}} for i in range(11)}
    with pytest.raises(InvalidArgument, match="at most 10"):
        validate_graph(big, "workflow", max_nodes=10)
    deep: dict[str, object] = {"v": 1}
    for _ in range(40):
        deep = {"v": deep}
    with pytest.raises(InvalidArgument, match="nested"):
        validate_graph({"1": {"class_type": "X", "inputs": deep}}, "workflow")


def test_text_to_image_graph_has_every_required_input_and_a_job_prefix() -> None:
    graph = text_to_image_graph(JOB, TextToImageParams(prompt="a cat", seed=5))
    assert graph["5"]["inputs"]["seed"] == 5
    assert graph["5"]["inputs"]["steps"] == 20
    assert graph["4"]["inputs"] == {"width": 1024, "height": 1024, "batch_size": 1}
    assert graph["7"]["inputs"]["filename_prefix"] == f"comfyui-grpc/{JOB}/image"
    json.dumps(graph)  # plain JSON


def test_random_seed_differs_between_graphs() -> None:
    seeds = {
        text_to_image_graph(JOB, TextToImageParams(prompt="x"))["5"]["inputs"]["seed"]
        for _ in range(5)
    }
    assert len(seeds) > 1


def test_video_graph_uses_the_gen2_chain() -> None:
    graph = video_graph(JOB, VideoParams(prompt="a boat", frames=8, fps=12))
    chain = [graph[n]["class_type"] for n in ("2", "3", "4", "8", "10")]
    assert chain == [
        "ADE_LoadAnimateDiffModel",
        "ADE_ApplyAnimateDiffModel",
        "ADE_UseEvolvedSampling",
        "KSampler",
        "VHS_VideoCombine",
    ]
    assert graph["8"]["inputs"]["model"] == ["4", 0]
    combine = graph["10"]["inputs"]
    assert combine["frame_rate"] == 12.0
    assert combine["format"] == "video/h264-mp4"
    assert {"pix_fmt", "crf", "save_metadata", "trim_to_audio", "pingpong", "save_output"} <= set(
        combine
    )
    assert graph["7"]["inputs"]["batch_size"] == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (TextToImageParams(prompt=" "), "text_to_image.prompt"),
        (TextToImageParams(prompt="x", width=1001), "text_to_image.width"),
        (TextToImageParams(prompt="x", steps=0), "text_to_image.steps"),
        (TextToImageParams(prompt="x", checkpoint="../etc/passwd"), "text_to_image.checkpoint"),
        (TextToImageParams(prompt="x", sampler="euler; rm"), "text_to_image.sampler"),
    ],
)
def test_template_checks_name_the_request_field(params: TextToImageParams, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        text_to_image_graph(JOB, params)
    assert [v.field for v in info.value.violations] == [field]


def test_comfyui_node_errors_map_to_request_fields_without_listing_models() -> None:
    error = ComfyUIValidationError(
        "Prompt outputs failed validation",
        {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation"},
        {
            "1": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'nope.safetensors' not in ['secret_model.safetensors']",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "received_value": "nope.safetensors",
                        },
                    }
                ],
                "class_type": "CheckpointLoaderSimple",
            },
            "9": {
                "errors": [
                    {
                        "type": "required_input_missing",
                        "message": "Required input is missing",
                        "details": "steps",
                        "extra_info": {"input_name": "steps"},
                    }
                ],
                "class_type": "TestSlowProgress",
            },
        },
    )
    mapped = violations_from_comfyui(error, "text_to_image", TEXT_TO_IMAGE_FIELDS)
    fields = {v.field: v for v in mapped.violations}
    assert set(fields) == {"text_to_image.checkpoint", "text_to_image.9.inputs.steps"}
    assert "nope.safetensors" in fields["text_to_image.checkpoint"].description
    assert "secret_model" not in str(mapped.violations)


def test_graph_level_errors_name_the_node() -> None:
    error = ComfyUIValidationError(
        "Cannot execute because node NoSuchNode does not exist.",
        {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#2'",
        },
        {},
    )
    mapped = violations_from_comfyui(error)
    assert mapped.violations[0].field == "workflow.2"
    assert "NoSuchNode" in mapped.violations[0].description
