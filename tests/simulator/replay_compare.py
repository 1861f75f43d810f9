"""Compare one connection's recorded and replayed WebSocket messages.

Per connection the messages are split into: ``status`` broadcasts (compared as
the sequence of queue sizes), other prompt-less messages (feature flags,
reconnect ``executing``, TEXT frames; compared in order), and one stream per
prompt. A prompt stream is compared as
  * its lifecycle skeleton (execution_start, execution_cached with the cached
    node list, the terminal message, ``executing(null)``), exactly;
  * per node, the sequence of its messages (progress_state changes, executing,
    progress, previews, executed), exactly - except that where the recording
    itself depends on timing (an interrupt, a socket closed or opened while the
    prompt ran, a restart) a run of progress steps counts as one;
  * the node order: equal to the recording when the prompt has one output
    node; with several independent outputs ComfyUI's order varies between runs
    (README), so any dependency-respecting order is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from replay_model import IdMap, Msg, shape

STEP_KINDS = {"ps-step", "progress", "preview1", "preview4"}


@dataclass
class PromptStream:
    skeleton: list[tuple[Any, ...]] = field(default_factory=list)
    nodes: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    node_order: list[str] = field(default_factory=list)
    positions: list[tuple[int, str | None]] = field(default_factory=list)  # (index, node)
    status_before_end: bool | None = None


@dataclass
class Split:
    statuses: list[tuple[Any, ...]] = field(default_factory=list)
    misc: list[tuple[Any, ...]] = field(default_factory=list)
    prompts: dict[str, PromptStream] = field(default_factory=dict)


def _ps_kind(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    value, maximum, state = entry["value"], entry["max"], entry["state"]
    if state == "running" and value == 0.0 and maximum == 1.0 and isinstance(value, float):
        return ("ps-start",)
    if state == "running":
        return ("ps-step", value, maximum)
    return ("ps-" + state, type(value).__name__, value, maximum)


def split(messages: list[Msg], ids: IdMap) -> Split:
    out = Split()
    snapshots: dict[str, dict[str, tuple[Any, ...]]] = {}
    last_progress: tuple[str, str] | None = None
    previous: Msg | None = None

    runs: dict[str, int] = {}

    def key(pid: str) -> str:
        """Streams are per run: a prompt id submitted twice runs twice (transcript 07)."""
        count = runs.get(pid, 1)
        return pid if count == 1 else f"{pid}#{count}"

    def stream(pid: str) -> PromptStream:
        return out.prompts.setdefault(key(pid), PromptStream())

    def node_event(pid: str, node: str, event: tuple[Any, ...], index: int) -> None:
        s = stream(pid)
        if node not in s.nodes:
            s.nodes[node] = []
            s.node_order.append(node)
        s.nodes[node].append(event)
        s.positions.append((index, node))

    for index, msg in enumerate(messages):
        event: tuple[Any, ...]
        data = msg.data
        pid = ids(msg.prompt_id)
        if msg.kind == "binary":
            if msg.event == 3:
                out.misc.append(("text", msg.reading.get("node_id"), msg.reading.get("text")))
            elif msg.event == 4:
                meta = msg.reading.get("metadata") or {}
                event = ("preview4", tuple(sorted(meta)), meta.get("image_type"))
                node_event(str(ids(meta.get("prompt_id"))), str(meta.get("node_id")), event, index)
            elif last_progress is not None:
                event = ("preview1", msg.reading.get("image_format"))
                node_event(last_progress[0], last_progress[1], event, index)
            else:
                out.misc.append(("preview1-orphan",))
        elif msg.type == "status":
            queue = data["status"]["exec_info"]["queue_remaining"]
            out.statuses.append((queue, tuple(sorted(data))))
        elif msg.type == "feature_flags":
            out.misc.append(("feature_flags", tuple(sorted(data))))
        elif msg.type == "executing" and "prompt_id" not in data:
            out.misc.append(("executing-on-connect", data.get("node"), tuple(sorted(data))))
        elif pid is None:
            out.misc.append(("unexpected", msg.type, tuple(sorted(data))))
        elif msg.type == "executing" and data.get("node") is None:
            s = stream(pid)
            s.skeleton.append(("executing(null)", tuple(sorted(data))))
            s.positions.append((index, None))
            s.status_before_end = previous is not None and previous.type == "status"
        elif msg.type in ("executing", "executed", "progress"):
            node = str(data.get("node"))
            keys = tuple(sorted(data))
            if msg.type == "progress":
                event = ("progress", keys, data["value"], data["max"])
                last_progress = (pid, node)
            elif msg.type == "executed":
                event = ("executed", keys, repr(shape(data.get("output"), IdMap())))
            else:
                event = ("executing", keys)
            node_event(pid, node, event, index)
        elif msg.type == "progress_state":
            before = snapshots.setdefault(pid, {})
            now = {n: _ps_kind(v) for n, v in data["nodes"].items()}
            entry_keys = {tuple(sorted(v)) for v in data["nodes"].values()}
            for node, kind in now.items():
                if before.get(node) != kind:
                    node_event(pid, node, (*kind, tuple(sorted(entry_keys))), index)
            for node in before.keys() - now.keys():
                node_event(pid, node, ("ps-vanished",), index)
            snapshots[pid] = now
        else:
            if msg.type == "execution_start" and any(
                e[0] == "execution_start" for e in stream(pid).skeleton
            ):
                runs[pid] = runs.get(pid, 1) + 1
            s = stream(pid)
            keys = tuple(sorted(data))
            detail: tuple[Any, ...] = (msg.type, keys)
            if msg.type == "execution_cached":
                detail += (tuple(data["nodes"]),)
            if msg.type in ("execution_error", "execution_interrupted"):
                detail += (
                    data.get("node_id"),
                    data.get("node_type"),
                    tuple(sorted(data["executed"])),
                )
            if msg.type == "execution_error":
                detail += (data.get("exception_type"), data.get("exception_message"))
            s.skeleton.append(detail)
            s.positions.append((index, None))
        previous = msg
    return out


def _collapse(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Reduce each run of progress-step messages to one marker (timing-dependent counts)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        if event[0] in STEP_KINDS:
            if not out or out[-1][0] != "steps":
                out.append(("steps",))
            continue
        out.append(event)
    return out


@dataclass
class PromptFacts:
    """What the comparison needs to know about a prompt beyond its messages."""

    inputs: dict[str, set[str]]  # node -> linked source nodes
    output_count: int
    timing_dependent: bool


def compare_connection(
    label: str,
    recorded: list[Msg],
    replayed: list[Msg],
    ids: IdMap,
    facts: Mapping[str, PromptFacts],
) -> list[str]:
    """Human-readable mismatches (empty when the replay matches the recording)."""
    problems: list[str] = []
    want = split(recorded, ids)
    got = split(replayed, IdMap())
    if want.statuses != got.statuses:
        problems.append(f"{label}: status sequence {got.statuses} != recorded {want.statuses}")
    if want.misc != got.misc:
        problems.append(f"{label}: other messages {got.misc} != recorded {want.misc}")
    if set(want.prompts) != set(got.prompts):
        found, recorded_ids = sorted(got.prompts), sorted(want.prompts)
        problems.append(f"{label}: messages for prompts {found} != recorded {recorded_ids}")
    for pid, expected in want.prompts.items():
        actual = got.prompts.get(pid)
        if actual is None:
            continue
        fact = facts.get(pid.split("#")[0])
        where = f"{label} prompt {pid}"
        if expected.skeleton != actual.skeleton:
            problems.append(f"{where}: lifecycle {actual.skeleton} != recorded {expected.skeleton}")
        if expected.status_before_end != actual.status_before_end:
            problems.append(
                f"{where}: status right before executing(null): {actual.status_before_end}"
            )
        loose = fact is None or fact.timing_dependent
        if set(expected.nodes) != set(actual.nodes):
            problems.append(
                f"{where}: nodes {sorted(actual.nodes)} != recorded {sorted(expected.nodes)}"
            )
        for node, events in expected.nodes.items():
            mine = actual.nodes.get(node, [])
            if loose:
                events, mine = _collapse(events), _collapse(mine)
            if events != mine:
                problems.append(f"{where} node {node}: {mine} != recorded {events}")
        problems.extend(_order_problems(where, expected, actual, fact))
    return problems


def _order_problems(
    where: str, expected: PromptStream, actual: PromptStream, fact: PromptFacts | None
) -> list[str]:
    problems: list[str] = []
    # A node's messages are contiguous (one node runs at a time) ...
    seen: list[str] = []
    for _, node in actual.positions:
        if node is None:
            continue
        if seen and seen[-1] != node and node in seen:
            problems.append(f"{where}: messages of node {node} are interleaved with others")
            break
        if not seen or seen[-1] != node:
            seen.append(node)
    # ... and lie between execution_cached and the terminal message.
    skeleton_at = [i for i, node in actual.positions if node is None]
    node_at = [i for i, node in actual.positions if node is not None]
    starts = bool(actual.skeleton) and actual.skeleton[0][0] == "execution_start"
    if node_at and len(skeleton_at) >= 2 and starts and min(node_at) < skeleton_at[1]:
        problems.append(f"{where}: node messages before execution_cached")
    terminal = [
        i
        for (i, node), event in zip(
            [p for p in actual.positions if p[1] is None], actual.skeleton, strict=False
        )
        if event[0] in ("execution_success", "execution_error", "execution_interrupted")
    ]
    if node_at and terminal and max(node_at) > terminal[0]:
        problems.append(f"{where}: node messages after the terminal message")
    if fact is None:
        return problems
    if fact.output_count <= 1:
        if expected.node_order != actual.node_order:
            problems.append(
                f"{where}: node order {actual.node_order} != recorded {expected.node_order}"
            )
    else:
        done: set[str] = set()
        for node in actual.node_order:
            missing = {
                src
                for src in fact.inputs.get(node, set())
                if src in actual.nodes and src not in done
            }
            if missing:
                problems.append(f"{where}: node {node} ran before its inputs {sorted(missing)}")
            done.add(node)
    return problems
