"""``python -m bench``: the comfyui-grpc benchmark, every section in one run.

Starts everything on 127.0.0.1 (the ComfyUI simulator with zero step time, a
moto S3 server, the gateway and the comparison servers), measures, and
writes ``bench/results/results.json``, ``results.md`` and ``latency.png``.
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import (
    artifacts,
    fleet,
    memory,
    previews,
    progress,
    replica_streams,
    replica_submission,
    report,
    servers,
    submission,
)
from .common import REPO, Children, clean_floats, dump_json, log, machine_info

SECTIONS = (
    "submission",
    "progress",
    "previews",
    "artifacts",
    "memory",
    "fleet",
    "replica_submission",
    "replica_streams",
)
CORE_VARIANTS = ["gateway", "floor", "direct", "refproxy", "comfy_api_proxy", "echo"]
INFO_VARIANTS = ["gateway_typed", "direct_aiohttp"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark the comfyui-grpc gateway against its floor, ceiling and peers.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a 1-2 minute smoke run (fewer runs, smaller loads)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only this section (repeatable); other sections in the results file are kept",
    )
    parser.add_argument("--runs", type=int, help="repetitions per measurement (default 3, quick 1)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="where results.json, results.md and latency.png go (default bench/results)",
    )
    parser.add_argument(
        "--gateway-pythonpath",
        action="append",
        default=[],
        metavar="DIR",
        help="put DIR before the installed comfyui_grpc in the gateway's processes "
        "(to measure a patched copy of server/ side by side)",
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the scratch folder (logs, outputs)"
    )
    parser.add_argument(
        "--variants",
        metavar="NAMES",
        help="comma-separated subset of what to run in every section, e.g. "
        "gateway,floor,plain for a quick before/after comparison of the gateway",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: redraw results.md and latency.png from results.json",
    )
    return parser.parse_args(argv)


def plan(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    runs = args.runs or (1 if quick else 3)
    wanted = set(args.variants.split(",")) if args.variants else None

    def pick(names: list[str]) -> list[str]:
        return [n for n in names if wanted is None or n in wanted]

    return {
        "mode": "quick" if quick else "full",
        "runs": runs,
        "submission": {
            "runs": runs,
            "warmup": 0.3 if quick else 0.5,
            "duration": 1.0 if quick else 1.5,
            "variants": pick(CORE_VARIANTS + ([] if quick else INFO_VARIANTS)),
        },
        "progress": {"runs": runs, "quick": quick, "relays": pick(list(progress.RELAYS))},
        "previews": {"runs": runs, "quick": quick},
        "artifacts": {"quick": quick, "runs_small": runs, "modes": pick(list(artifacts.MODES))},
        "memory": {"finished_jobs": 1000 if quick else 10_000, "streams": 1000},
        "fleet": {"jobs_per_backend": 12 if quick else 18, "a_jobs": 120 if quick else 300},
        "replica_submission": {
            "runs": runs,
            "quick": quick,
            "variants": pick(list(replica_submission.VARIANTS)),
        },
        "replica_streams": {"runs": runs, "quick": quick},
    }


async def run_sections(
    sections: list[str], settings: dict[str, Any], workdir: Path
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    async with Children() as children:
        log("starting the S3 server (moto)")
        s3 = await servers.start_moto(children, workdir)
        for name in sections:
            started = time.monotonic()
            log(f"section {name}: starting")
            options = settings[name]
            if name == "submission":
                data = await submission.run(workdir, s3, **options)
                runs = options["runs"]
            elif name == "progress":
                data = await progress.run(workdir, s3, **options)
                runs = options["runs"]
            elif name == "previews":
                data = await previews.run(workdir, s3, **options)
                runs = options["runs"]
            elif name == "artifacts":
                data = await artifacts.run(workdir, s3, **options)
                runs = options["runs_small"]
            elif name == "memory":
                data = await memory.run(workdir, s3, **options)
                runs = 1
            elif name == "replica_submission":
                data = await replica_submission.run(workdir, s3, **options)
                runs = options["runs"]
            elif name == "replica_streams":
                data = await replica_streams.run(workdir, s3, **options)
                runs = options["runs"]
            else:
                data = await fleet.run(workdir, s3, **options)
                runs = 1
            data["mode"] = settings["mode"]
            data["runs"] = runs
            data["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
            data["seconds"] = round(time.monotonic() - started, 1)
            data["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
            out[name] = data
            log(f"section {name}: done in {data['seconds']:.0f} s")
    return out


def render(out: Path, results: dict[str, Any]) -> None:
    (out / "results.md").write_text(report.markdown(results))
    drawn = report.chart(results, out / "latency.png")
    drawn = report.fleet_chart(results, out / "fleet.png") and drawn
    if not drawn:
        log("matplotlib is not installed: no chart (pip install -e '.[bench]')")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        stored: dict[str, Any] = json.loads((args.out / "results.json").read_text())
        stored["notes"] = notes(stored)
        stored["targets"] = report.targets(stored)
        render(args.out, stored)
        print((args.out / "results.md").read_text())
        return 0
    servers.GATEWAY_PYTHONPATH.extend(str(Path(p).resolve()) for p in args.gateway_pythonpath)
    settings = plan(args)
    sections = list(dict.fromkeys(args.only or SECTIONS))
    workdir = Path(tempfile.mkdtemp(prefix="comfyui-grpc-bench-"))
    log(f"{settings['mode']} run of {', '.join(sections)}; scratch folder {workdir}")
    started = time.monotonic()
    machine = machine_info()
    try:
        measured = asyncio.run(run_sections(sections, settings, workdir))
    finally:
        if args.keep_workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results_path = args.out / "results.json"
    previous: dict[str, Any] = {}
    if args.only and results_path.exists():
        previous = json.loads(results_path.read_text())
    results: dict[str, Any] = {
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "mode": settings["mode"],
        "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "total_seconds": round(time.monotonic() - started, 1),
        "machine": machine,
        "gateway_pythonpath": servers.GATEWAY_PYTHONPATH,
        "sections": {**previous.get("sections", {}), **measured},
    }
    results["notes"] = notes(results)
    results["targets"] = report.targets(results)
    results = clean_floats(results)
    dump_json(results_path, results)
    render(args.out, results)
    log(f"wrote results.json, results.md, latency.png to {args.out}")
    print((args.out / "results.md").read_text())
    return 0


def notes(results: dict[str, Any]) -> list[str]:
    out = [
        "Submission: each cell (variant x callers x run) has a fresh simulator and server; "
        "a gate prompt keeps the simulator's worker busy, so submitted prompts wait in its "
        "queue as in front of a busy GPU and only the submission path is measured.",
        "The floor and direct post through the gateway's own ComfyUI pool (8 connections, "
        "calls admitted only when one is free): httpx's pool costs CPU in proportion to "
        "its waiting requests times its connections.",
        "Progress delays are send-to-receive on one clock (CLOCK_MONOTONIC is shared by "
        "all processes): the simulator stamps each progress frame as it writes it to the "
        "socket, the client stamps it as it is decoded. All subscribers live in one client "
        "process, so the delays include that client's own work.",
        "comfy-api-proxy allows 8 concurrent event streams (429 too_many_streams beyond) and "
        "opens one ComfyUI socket per stream under the job's client id, and it throttles "
        "progress to about 2 events per second: updates it drops are counted as not delivered.",
        "Artifact MB/s are 10^6 bytes per second of wall time for the whole copy; the "
        "gateway's time includes the download from /view, which a plain upload does not "
        "have, and the job's manifest (see the phases column).",
        "Since late binding, the gateway's Generate records the job and answers without "
        "calling ComfyUI (the floor still posts every call to /prompt): jobs wait in the "
        "gateway's line (--max-queued-jobs 1000000 here) and each cell's gateway is stopped at "
        "its end, which drops its in-memory line; the simulator holds at most the gateway's "
        "running + prefetched prompts.",
        "Fleet: makespans and gaps come from each simulator's own history (execution_start / "
        "execution_success timestamps, 1 ms): the GPU's busy time. The gateway's Job.end_time "
        "also counts the upload to S3, which does not hold the GPU. The greedy schedule and the "
        "lower bound are computed offline from the same jobs' measured durations and arrival "
        "times (Job.create_time).",
        "Replica sections: PostgreSQL is a throw-away local server (initdb, fsync=off, "
        "synchronous_commit=off, as in the test suite), so a commit costs no disk flush; on a "
        "real server each Generate and each batch of events also waits for its WAL flush. "
        "Gateways, PostgreSQL, simulators and the load generator share the same 2 cores.",
        "Ratios near a target move across it from run to run on these shared cores; "
        "bench/README.md (Where the targets stand) lists the last full runs side by side "
        "and explains what is not met and why.",
    ]
    if results.get("gateway_pythonpath"):
        out.append(
            "The gateway ran from a patched copy: " + ", ".join(results["gateway_pythonpath"])
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
