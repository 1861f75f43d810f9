"""Each fault knob, set at construction and changed on a running simulator."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
from comfyui_grpc.simulator import Faults, Simulator
from simclient import SimClient, slow_prompt, txt2img_prompt


async def test_http_latency_delays_every_request(
    simulator: Simulator, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    async with http.get(f"{simulator.url}/system_stats") as resp:
        assert resp.status == 200
    fast = time.monotonic() - started
    simulator.faults.http_latency_seconds = 0.3
    started = time.monotonic()
    async with http.get(f"{simulator.url}/api/queue") as resp:
        assert resp.status == 200
    assert time.monotonic() - started >= 0.3 > fast


async def test_http_500_on_chosen_paths_only(simulator: Simulator, client: SimClient) -> None:
    simulator.faults.http_500_paths = {"/prompt", "/history"}
    for method, path in [("POST", "/prompt"), ("POST", "/api/prompt"), ("GET", "/history/abc")]:
        async with client.http.request(
            method, simulator.url + path, json={"prompt": slow_prompt()}
        ) as resp:
            assert resp.status == 500
            assert resp.content_type == "text/plain"
    assert simulator.submitted_prompt_ids == []  # a failed submit queues nothing
    async with client.http.get(f"{simulator.url}/queue") as resp:
        assert resp.status == 200
    simulator.faults.http_500_paths.clear()
    await client.run(slow_prompt())


async def test_ws_dropped_after_n_messages(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    sim = Simulator(output_dir=tmp_path, faults=Faults(ws_drop_after_messages=4), step_seconds=0.01)
    await sim.start()
    try:
        client = await SimClient(http, sim.url).connect()
        await client.submit(slow_prompt(steps=3))
        assert await client.wait_closed() == 1006  # aborted, no close frame
        assert len(client.messages) == 4
        # A new socket is counted afresh; with the fault cleared it stays open.
        sim.faults.ws_drop_after_messages = None
        again = await SimClient(http, sim.url, client.client_id).connect()
        prompt_id = await again.run(slow_prompt(steps=3, prefix="t/again"))
        assert not again.closed
        assert again.of(prompt_id)
        await again.close()
    finally:
        await sim.close()


async def test_fail_node_class_fails_like_testfail(simulator: Simulator, client: SimClient) -> None:
    simulator.faults.fail_node_class = "KSampler"
    prompt_id = await client.run(txt2img_prompt())
    error = await client.wait_for(lambda m: m["type"] == "execution_error")
    assert error["data"]["node_type"] == "KSampler"
    assert error["data"]["exception_type"] == "RuntimeError"
    assert error["data"]["exception_message"].endswith("\n")
    entry = await client.history(prompt_id)
    assert entry["status"]["status_str"] == "error"
    assert entry["outputs"] == {}
    simulator.faults.fail_node_class = None
    prompt_id = await client.run(txt2img_prompt())
    assert (await client.history(prompt_id))["status"]["status_str"] == "success"


async def test_step_seconds_override_paces_sampler(simulator: Simulator, client: SimClient) -> None:
    simulator.faults.step_seconds = 0.1
    started = time.monotonic()
    await client.run(txt2img_prompt(steps=4))
    assert time.monotonic() - started >= 0.4
    progress = [m["data"]["value"] for m in client.messages if m["type"] == "progress"]
    assert progress == [1, 2, 3, 4]


async def test_time_scale_speeds_up_test_node(simulator: Simulator, client: SimClient) -> None:
    simulator.faults.time_scale = 0.01  # 10 x 2 s becomes 0.2 s
    started = time.monotonic()
    await client.run(slow_prompt(steps=10, seconds=2.0))
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 5


async def test_restart_loses_queue_history_and_temp_like_comfyui(
    simulator: Simulator, client: SimClient, http: aiohttp.ClientSession
) -> None:
    preview = {
        "1": slow_prompt()["1"],
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }
    done = await client.run(preview)
    temp_file = (await client.history(done))["outputs"]["2"]["images"][0]["filename"]
    saved = await client.run(slow_prompt(prefix="kept/img"))
    running = (await client.submit(slow_prompt(steps=50, seconds=1.0, prefix="t/long")))[
        "prompt_id"
    ]
    pending = (await client.submit(slow_prompt(prefix="t/pending")))["prompt_id"]
    await client.wait_for(lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == running)
    port = simulator.port

    await simulator.restart()
    assert await client.wait_closed() == 1006
    assert simulator.port == port
    fresh = await SimClient(http, simulator.url, client.client_id).connect()
    try:
        assert await fresh.get_json("/queue") == {"queue_running": [], "queue_pending": []}
        assert await fresh.get_json("/history") == {}
        for prompt_id in (done, saved, running, pending):
            assert await fresh.get_json(f"/history/{prompt_id}") == {}
        assert (await fresh.submit(slow_prompt(prefix="kept/img")))["number"] == 0
        assert not (simulator.folders.temp / temp_file).exists()
        assert (simulator.folders.output / "kept" / "img_00001_.png").exists()
        # Counters come from the files on disk, so they carry on.
        second = await fresh.history(await fresh.run(slow_prompt(prefix="kept/img", color=9)))
        assert second["outputs"]["3"]["images"][0]["filename"] == "img_00003_.png"
    finally:
        await fresh.close()


async def test_restart_can_keep_queue_and_history(
    simulator: Simulator, client: SimClient, http: aiohttp.ClientSession
) -> None:
    done = await client.run(slow_prompt())
    running = (await client.submit(slow_prompt(steps=50, seconds=0.2, prefix="t/long")))[
        "prompt_id"
    ]
    pending = (await client.submit(slow_prompt(prefix="t/pending")))["prompt_id"]
    await client.wait_for(lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == running)

    await simulator.restart(keep_state=True)
    assert await client.wait_closed() == 1006
    fresh = await SimClient(http, simulator.url, client.client_id).connect()
    try:
        assert done in await fresh.get_json("/history")
        queue = await fresh.get_json("/queue")
        listed = [item[1] for item in queue["queue_running"] + queue["queue_pending"]]
        assert sorted(listed) == sorted([running, pending])
        simulator.faults.time_scale = 0.0  # let the re-run finish at once
        await fresh.wait_done(running)
        await fresh.wait_done(pending)
        assert (await fresh.submit(slow_prompt(prefix="t/next")))["number"] == 3
    finally:
        await fresh.close()


async def test_stop_drops_sockets_and_start_is_fresh(
    simulator: Simulator, client: SimClient
) -> None:
    await client.run(slow_prompt())
    port = simulator.port
    await simulator.stop()
    assert await client.wait_closed() == 1006
    assert not simulator.running
    await simulator.start(port=port)
    assert await client.get_json("/history") == {}
