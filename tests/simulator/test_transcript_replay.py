"""Every recorded real-ComfyUI session replayed against the simulator.

Scenarios 01-14 were recorded in order on one fresh ComfyUI without model
files, 15-17 on another fresh one with model files; numbers, file counters,
caching and history depend on that order, so each group runs in order on one
simulator configured like the recorded server. A test replays any earlier
scenarios of its group first (once per module), so each test also works alone.

What cannot be replayed literally, and how it is handled:
  * 10: transcripts keep only the size of uploaded files; the bytes are
    re-made (replay_driver.UPLOAD_BYTES) following the recorder's notes.
  * 11: the full /object_info body was not recorded; its structure is checked
    (the real server also lists ~600 core nodes the simulator does not have).
  * 14: the recorder restarted a real process; the replay calls
    ``Simulator.restart()`` at the same point and checks the 1006 close.
  * Durations: TestSlowProgress runs at ``TIME_SCALE`` of its recorded speed
    and model nodes take no time; deliberate client pauses are scaled alike.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from comfyui_grpc.simulator import Simulator
from replay_driver import Replay
from replay_model import IdMap, load_transcript, scenario_names

TIME_SCALE = 0.25
MODEL_GROUP_START = "15"  # scenarios from here on ran on a server with model files


class ReplaySession:
    """Replays scenarios in recorded order, one simulator per recorded server."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.sims: dict[str, Simulator] = {}
        self.results: dict[str, list[str]] = {}
        self.ids: dict[str, IdMap] = {}
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def simulator(self, group: str) -> Simulator:
        if group not in self.sims:
            with_models = group == "models"
            kwargs = {} if with_models else {"checkpoints": (), "motion_modules": ()}
            sim = Simulator(
                output_dir=self.base / group / "output",
                input_dir=self.base / group / "input",
                temp_dir=self.base / group / "temp",
                step_seconds=0.01,
                time_scale=TIME_SCALE,
                **kwargs,  # type: ignore[arg-type]
            )
            await sim.start()
            self.sims[group] = sim
        return self.sims[group]

    async def replay(self, name: str) -> list[str]:
        names = scenario_names()
        group = "models" if name >= MODEL_GROUP_START else "base"
        for earlier in names[: names.index(name) + 1]:
            same_group = ("models" if earlier >= MODEL_GROUP_START else "base") == group
            if not same_group or earlier in self.results:
                continue
            sim = await self.simulator(group)
            ids = self.ids.setdefault(group, IdMap())
            replay = Replay(earlier, load_transcript(earlier), sim, self.http, ids)
            try:
                self.results[earlier] = await replay.run()
            except AssertionError as exc:
                self.results[earlier] = [f"replay stopped: {exc}", *replay.problems]
        return self.results[name]

    async def close(self) -> None:
        await self.http.close()
        for sim in self.sims.values():
            await sim.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def session(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplaySession]:
    replays = ReplaySession(tmp_path_factory.mktemp("replay"))
    try:
        yield replays
    finally:
        await replays.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("name", scenario_names())
async def test_replay_matches_recording(session: ReplaySession, name: str) -> None:
    problems = await session.replay(name)
    assert not problems, f"{name}: {len(problems)} mismatch(es):\n" + "\n".join(problems)


def test_every_transcript_is_replayed() -> None:
    assert len(scenario_names()) == 17
