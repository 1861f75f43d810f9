"""Replays a recorded ComfyUI session against the simulator.

Client actions (HTTP requests, socket connects, sends and closes) are replayed
in recorded order. Before each action the driver waits until every open
socket has received the same messages the recording had received by then
(matched by content, not by time), so "interrupt after progress 2" happens
after progress 2. Runs of identical GETs are the recorder polling: they are
repeated until the answer matches the last recorded one. Deliberate client
pauses of a second or more (e.g. "reconnect 1.5 s later") are kept, scaled by
the same factor as the simulated node durations; nothing else waits on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from comfyui_grpc.simulator import Simulator
from PIL import Image
from replay_compare import PromptFacts, compare_connection
from replay_http import http_problems
from replay_model import (
    TEMP_NAME,
    IdMap,
    Line,
    Msg,
    filenames_in,
    live_binary,
    live_text,
    map_ids,
    normal_filename,
    recorded_msg,
    token,
)

WAIT_TIMEOUT = 15.0


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(out, format="PNG")
    return out.getvalue()


# Transcripts keep only the size of uploaded files; these are the bytes the
# recorder sent (its notes say which uploads repeat the same bytes).
UPLOAD_BYTES: dict[str, list[bytes]] = {
    "10_upload_and_view_input": [png((200, 30, 30))] * 2
    + [png((30, 30, 200))] * 2
    + [png((200, 30, 30))] * 3,
}


@dataclass
class Conn:
    label: str
    ws: aiohttp.ClientWebSocketResponse
    messages: list[Msg] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    closed_by_client: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self) -> None:
        async for frame in self.ws:
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(live_text(frame.data))
            elif frame.type == aiohttp.WSMsgType.BINARY:
                self.messages.append(live_binary(frame.data))
            self.changed.set()
        self.changed.set()


class Replay:
    def __init__(
        self,
        name: str,
        lines: list[Line],
        sim: Simulator,
        session: aiohttp.ClientSession,
        ids: IdMap,
    ) -> None:
        self.name = name
        self.lines = lines
        self.sim = sim
        self.session = session
        self.time_scale = sim.time_scale
        self.ids = ids  # shared by the scenarios of one server: later ones refer to earlier prompts
        self.conns: dict[str, Conn] = {}
        self.problems: list[str] = []
        self.uploads = list(UPLOAD_BYTES.get(name, []))
        self.notes: list[str] = []
        self._recorded = self._recorded_messages()

    def _recorded_messages(self) -> dict[str, list[tuple[int, Msg]]]:
        out: dict[str, list[tuple[int, Msg]]] = {}
        for index, line in enumerate(self.lines):
            if line["channel"] == "ws" and line["direction"] == "s2c" and "kind" in line:
                out.setdefault(line["conn"], []).append((index, recorded_msg(line)))
        return out

    # -- driving ------------------------------------------------------------------
    async def run(self) -> list[str]:
        index = 0
        last_action_t: float | None = None
        last_action_wall = time.monotonic()
        after_restart = False
        last_action_index = 0
        while index < len(self.lines):
            line = self.lines[index]
            channel, direction = line["channel"], line["direction"]
            is_action = direction == "c2s" or (
                channel == "ws" and line.get("event") == "closed_by_server"
            )
            if channel == "note" and "Restarting ComfyUI" in line["note"]:
                await self._sync(index)
                self.notes.append("restarted the simulator (restart(keep_state=False))")
                await self.sim.restart(keep_state=False)
                after_restart = True
            if is_action:
                paused = not self._server_spoke(last_action_index, index)
                if last_action_t is not None and not after_restart and paused:
                    await self._pace(line["t_ms"] - last_action_t, last_action_wall)
                after_restart = False
                await self._sync(index)
                last_action_index = index
                index = await self._act(index)
                last_action_t = line["t_ms"]
                last_action_wall = time.monotonic()
                continue
            index += 1
        await self._sync(len(self.lines))
        for conn in self.conns.values():
            if not conn.ws.closed:
                await conn.ws.close()
            if conn.reader is not None:
                await asyncio.wait_for(conn.reader, WAIT_TIMEOUT)
        self._compare_ws()
        return self.problems

    def _server_spoke(self, start: int, end: int) -> bool:
        """Whether sockets received anything between two actions (then the gap was waiting)."""
        return any(
            line["channel"] == "ws" and line["direction"] == "s2c" and "kind" in line
            for line in self.lines[start:end]
        )

    async def _pace(self, recorded_gap_ms: float, since: float) -> None:
        """Keep deliberate client pauses (>= 1 s in the recording), scaled."""
        if recorded_gap_ms < 1000:
            return
        remaining = recorded_gap_ms / 1000 * self.time_scale - (time.monotonic() - since)
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def _sync(self, index: int) -> None:
        """Wait until each open socket got what the recording had got before line ``index``."""
        for label, recorded in self._recorded.items():
            conn = self.conns.get(label)
            if conn is None or conn.closed_by_client:
                continue
            before = [msg for at, msg in recorded if at < index]
            if not before:
                continue
            target = token(before[-1], self.ids)
            needed = sum(1 for msg in before if token(msg, self.ids) == target)
            empty = IdMap()

            def count(
                conn: Conn = conn, target: tuple[Any, ...] = target, empty: IdMap = empty
            ) -> int:
                return sum(1 for msg in conn.messages if token(msg, empty) == target)

            deadline = time.monotonic() + WAIT_TIMEOUT
            while count() < needed:
                if conn.ws.closed and conn.reader is not None and conn.reader.done():
                    raise AssertionError(f"{label} closed before receiving {target}")
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [token(m, empty) for m in conn.messages[-8:]]
                    raise AssertionError(f"{label}: never received {target} x{needed}; last: {got}")
                conn.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.changed.wait(), left)

    async def _act(self, index: int) -> int:
        line = self.lines[index]
        if line["channel"] == "ws":
            await self._ws_action(line)
            return index + 1
        group = self._poll_group(index)
        responses = [self._response_for(i) for i in group]
        await self._http(line, responses)
        return max(group) + 1

    async def _ws_action(self, line: Line) -> None:
        label = line["conn"]
        event = line.get("event")
        if event == "connect":
            ws = await self.session.ws_connect(
                self.sim.url + line.get("path", "/ws"),
                params=line.get("query") or {},
                max_msg_size=0,
            )
            conn = Conn(label, ws)
            conn.reader = asyncio.create_task(conn.read())
            self.conns[label] = conn
        elif event == "send":
            await self.conns[label].ws.send_str(json.dumps(line["msg"]))
        elif event == "close":
            conn = self.conns[label]
            conn.closed_by_client = True
            await conn.ws.close()
        elif event == "closed_by_server":
            conn = self.conns[label]
            assert conn.reader is not None
            await asyncio.wait_for(conn.reader, WAIT_TIMEOUT)
            conn.closed_by_client = True
            if conn.ws.close_code != line.get("close_code"):
                self.problems.append(
                    f"{label}: closed with {conn.ws.close_code}, recorded {line.get('close_code')}"
                )

    def _poll_group(self, index: int) -> list[int]:
        """Indices of consecutive identical GET requests starting at ``index``."""
        first = self.lines[index]
        group = [index]
        if first["method"] != "GET":
            return group
        key = (first["path"], json.dumps(first.get("query"), sort_keys=True))
        cursor = index + 1
        while cursor < len(self.lines):
            line = self.lines[cursor]
            if line["channel"] == "http" and line["direction"] == "c2s":
                if (
                    line["method"] == "GET"
                    and (line["path"], json.dumps(line.get("query"), sort_keys=True)) == key
                ):
                    group.append(cursor)
                else:
                    break
            elif line["channel"] == "ws" and line["direction"] == "c2s":
                break
            cursor += 1
        return group

    def _response_for(self, index: int) -> Line:
        for line in self.lines[index + 1 :]:
            if line["channel"] == "http" and line["direction"] == "s2c":
                return line
        raise AssertionError(f"no recorded response for line {index}")

    # -- HTTP --------------------------------------------------------------------
    async def _http(self, request: Line, responses: list[Line]) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT
        final = responses[-1]
        while True:
            status, headers, body = await self._send(request)
            self._learn_prompt_id(request, final, status, body)
            if not http_problems(request, final, status, headers, body, self.ids):
                break
            if len(responses) == 1 or time.monotonic() > deadline:
                self.problems.extend(http_problems(request, final, status, headers, body, self.ids))
                break
            if all(
                http_problems(request, r, status, headers, body, self.ids) for r in responses[:-1]
            ):
                self.problems.append(f"{request['path']}: poll answer matches no recorded answer")
                self.problems.extend(http_problems(request, final, status, headers, body, self.ids))
                break
            await asyncio.sleep(0.02)  # the recorder polled too; poll faster

    def _learn_prompt_id(self, request: Line, recorded: Line, status: int, body: Any) -> None:
        if request["method"] != "POST" or not request["path"].endswith("/prompt") or status != 200:
            return
        recorded_pid = recorded.get("body", {}).get("prompt_id")
        if isinstance(recorded_pid, str) and isinstance(body, dict) and "prompt_id" in body:
            self.ids.add(recorded_pid, body["prompt_id"])

    async def _send(self, line: Line) -> tuple[int, Mapping[str, str], Any]:
        kwargs: dict[str, Any] = {"headers": line.get("headers") or {}}
        if line.get("query"):
            kwargs["params"] = {k: self._own_filename(v) for k, v in line["query"].items()}
        if "body" in line:
            kwargs["json"] = map_ids(line["body"], self.ids)
        elif "raw_body" in line:
            kwargs["data"] = line["raw_body"]
        elif "form" in line:
            form = aiohttp.FormData()
            for key, value in line["form"].items():
                if isinstance(value, dict):
                    data = self.uploads.pop(0) if self.uploads else b""
                    form.add_field(
                        key, data, filename=value["filename"], content_type=value["content_type"]
                    )
                else:
                    form.add_field(key, value)
            kwargs["data"] = form
        path = "/".join(str(self.ids(part)) for part in line["path"].split("/"))
        async with self.session.request(line["method"], self.sim.url + path, **kwargs) as resp:
            raw = await resp.read()
            body: Any = raw
            if resp.content_type == "application/json":
                body = json.loads(raw)
            elif resp.content_type.startswith("text/"):
                body = raw.decode()
            return resp.status, resp.headers, body

    def _own_filename(self, value: str) -> str:
        """Temp file names end in random letters; use the replay's own name for a recorded one."""
        if not TEMP_NAME.search(value):
            return value
        seen: list[str] = []
        for conn in self.conns.values():
            for msg in conn.messages:
                seen.extend(filenames_in(msg.data))
        matches = [name for name in seen if normal_filename(name) == normal_filename(value)]
        return matches[-1] if matches else value

    # -- WebSocket comparison ---------------------------------------------------------
    def _compare_ws(self) -> None:
        facts = self._prompt_facts()
        for label, recorded in self._recorded.items():
            conn = self.conns.get(label)
            replayed = conn.messages if conn else []
            self.problems.extend(
                compare_connection(label, [m for _, m in recorded], replayed, self.ids, facts)
            )

    def _prompt_facts(self) -> dict[str, PromptFacts]:
        facts: dict[str, PromptFacts] = {}
        for index, line in enumerate(self.lines):
            if not (
                line["channel"] == "http"
                and line["direction"] == "c2s"
                and line["path"].endswith("/prompt")
            ):
                continue
            if line["method"] != "POST" or "prompt" not in line.get("body", {}):
                continue
            response = self._response_for(index)
            recorded_pid = response.get("body", {}).get("prompt_id")
            if response["status"] != 200 or not isinstance(recorded_pid, str):
                continue
            prompt = line["body"]["prompt"]
            inputs = {
                node: {v[0] for v in spec["inputs"].values() if isinstance(v, list) and len(v) == 2}
                for node, spec in prompt.items()
            }
            outputs = response["body"].get("node_errors", {})
            count = sum(1 for spec in prompt.values() if spec["class_type"] in OUTPUT_NODES) - len(
                outputs
            )
            last = max(
                (i for i, other in enumerate(self.lines) if recorded_pid in json.dumps(other)),
                default=index,
            )
            disruptive = any(
                (
                    other["channel"] == "ws"
                    and other.get("event") in ("connect", "close", "closed_by_server")
                )
                or (other["channel"] == "http" and other["path"].endswith("/interrupt"))
                or (other["channel"] == "note" and "Restarting" in other["note"])
                for other in self.lines[index:last]
            )
            facts[str(self.ids(recorded_pid))] = PromptFacts(inputs, count, disruptive)
        return facts


OUTPUT_NODES = {
    "SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveVideo", "SaveWEBM",
    "SaveImageWebsocket", "PreviewAny", "VHS_VideoCombine",
}  # fmt: skip
