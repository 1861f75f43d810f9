"""The replay comparison catches deviations (so the replay tests can fail)."""

from __future__ import annotations

import copy

from replay_compare import PromptFacts, compare_connection
from replay_model import IdMap, Msg, load_transcript, recorded_msg


def recorded(name: str, conn: str = "wsA") -> list[Msg]:
    return [
        recorded_msg(line)
        for line in load_transcript(name)
        if line["channel"] == "ws"
        and line["direction"] == "s2c"
        and line["conn"] == conn
        and "kind" in line
    ]


def facts_for(
    messages: list[Msg], inputs: dict[str, set[str]], outputs: int
) -> dict[str, PromptFacts]:
    pids = {m.prompt_id for m in messages if m.prompt_id}
    return {pid: PromptFacts(inputs, outputs, False) for pid in pids if pid}


CHAIN = {"1": set(), "2": {"1"}, "3": {"2"}}


def check(
    original: list[Msg], changed: list[Msg], inputs: dict[str, set[str]] = CHAIN, outputs: int = 1
) -> list[str]:
    return compare_connection(
        "wsA", original, changed, IdMap(), facts_for(original, inputs, outputs)
    )


def index_of(messages: list[Msg], kind: str, **data: object) -> int:
    return next(
        i
        for i, m in enumerate(messages)
        if m.type == kind and all(m.data.get(k) == v for k, v in data.items())
    )


def test_identical_streams_match() -> None:
    messages = recorded("01_txt2img_success")
    assert check(messages, copy.deepcopy(messages)) == []


def test_missing_progress_is_caught() -> None:
    messages = recorded("01_txt2img_success")
    changed = copy.deepcopy(messages)
    del changed[index_of(changed, "progress", value=3)]
    assert any("node 2" in p for p in check(messages, changed))


def test_swapped_executing_and_progress_state_is_caught() -> None:
    messages = recorded("01_txt2img_success")
    changed = copy.deepcopy(messages)
    at = index_of(changed, "executing", node="2")
    changed[at - 1], changed[at] = changed[at], changed[at - 1]
    assert check(messages, changed)


def test_executing_null_before_status_is_caught() -> None:
    messages = recorded("01_txt2img_success")
    changed = copy.deepcopy(messages)
    changed[-1], changed[-2] = changed[-2], changed[-1]
    assert any("status right before" in p for p in check(messages, changed))


def test_wrong_queue_size_is_caught() -> None:
    messages = recorded("01_txt2img_success")
    changed = copy.deepcopy(messages)
    changed[1].data["status"]["exec_info"]["queue_remaining"] = 2
    assert any("status sequence" in p for p in check(messages, changed))


def test_extra_message_to_a_deaf_socket_is_caught() -> None:
    messages = recorded("08_ws_reconnect", "wsX2")
    extra = [*copy.deepcopy(messages), copy.deepcopy(messages[0])]
    assert check(messages, extra)


ANIMATION = {
    "1": set(), "2": set(), "3": {"1", "2"}, "4": {"3"}, "5": {"4"}, "6": {"4"}, "7": {"4"},
    "8": {"4"}, "9": {"8"}, "10": {"4"},
}  # fmt: skip


def test_dependency_order_is_enforced_with_several_outputs() -> None:
    """Independent outputs may run in any order (the replay of 13 runs them the other
    way round and passes), but never before their inputs."""
    messages = recorded("03_animation_outputs")
    assert check(messages, copy.deepcopy(messages), ANIMATION, outputs=5) == []
    broken = copy.deepcopy(messages)
    moved = broken.pop(index_of(broken, "executing", node="7"))
    broken.insert(index_of(broken, "executing", node="4"), moved)
    assert check(messages, broken, ANIMATION, outputs=5)
