"""Targets, the Markdown table and the latency chart, from the results dict."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import replica_report
from .common import ratio

MB = 1_000_000
KB = 1_000

SUBMISSION_ORDER = (
    "gateway",
    "gateway_typed",
    "floor",
    "direct",
    "direct_aiohttp",
    "refproxy",
    "comfy_api_proxy",
    "echo",
)
RELAY_ORDER = ("gateway", "floor", "refproxy", "comfy_api_proxy")
COLORS = {
    "gateway": "tab:blue",
    "gateway_typed": "tab:cyan",
    "floor": "tab:orange",
    "direct": "tab:green",
    "direct_aiohttp": "tab:olive",
    "refproxy": "tab:red",
    "comfy_api_proxy": "tab:purple",
    "echo": "tab:brown",
}


def _get(data: dict[str, Any], *path: str) -> Any:
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value)
    return None


def fmt(value: Any, digits: int = 1, suffix: str = "") -> str:
    number = _num(value)
    if number is None:
        return "n/a"
    return f"{number:,.{digits}f}{suffix}"


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


# -- targets ---------------------------------------------------------------------


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each issue target with what was measured, as met / not met / not measured."""
    out: list[dict[str, Any]] = []

    def add(name: str, wanted: str, measured: str, met: bool | None, note: str = "") -> None:
        status = "not measured" if met is None else ("met" if met else "not met")
        out.append(
            {"target": name, "wanted": wanted, "measured": measured, "status": status, "note": note}
        )

    sub = _get(results, "sections", "submission", "medians") or {}

    def rate(variant: str) -> float | None:
        return _num(_get(sub, variant, "64", "calls_per_s"))

    gateway = rate("gateway")
    for level in _get(results, "sections", "submission", "levels") or []:
        g = _get(sub, "gateway", str(level)) or {}
        f = _get(sub, "floor", str(level)) or {}
        r = ratio(_num(g.get("calls_per_s")), _num(f.get("calls_per_s")))
        gp50, fp50 = _num(g.get("p50_ms")), _num(f.get("p50_ms"))
        add(
            f"Submission vs minimal gRPC-to-httpx forwarder, {level} caller(s)",
            "gateway calls/s >= 1.0 x floor and p50 latency below the floor's",
            f"{fmt_ratio(r)} calls/s; p50 {fmt(gp50, 2)} vs {fmt(fp50, 2)} ms",
            None if r is None or gp50 is None or fp50 is None else r >= 1.0 and gp50 < fp50,
            _get(sub, "floor", "not_measured") or "",
        )
    for variant, factor, label in (
        ("refproxy", 15.0, "Submission vs reference proxy (new client per request)"),
    ):
        r = ratio(gateway, rate(variant))
        note = _get(sub, variant, "not_measured") or ""
        add(
            label,
            f"gateway calls/s at 64 callers >= {factor:g} x {variant}",
            fmt_ratio(r),
            None if r is None else r >= factor,
            note,
        )
    r = ratio(gateway, rate("comfy_api_proxy"))
    add(
        "Submission vs comfy-api-proxy",
        "gateway calls/s at 64 callers ahead of comfy-api-proxy (> 1x)",
        fmt_ratio(r),
        None if r is None else r > 1.0,
        _get(sub, "comfy_api_proxy", "not_measured") or "",
    )

    prog = _get(results, "sections", "progress", "medians") or {}
    for scenario in ("1", "100", "1000"):
        g = _get(prog, "gateway", scenario) or {}
        f = _get(prog, "floor", scenario) or {}
        r = ratio(_num(g.get("p99_ms")), _num(f.get("p99_ms")))
        lost = g.get("lost")
        relay_met = None if r is None or lost is None else (r <= 1.5 and lost == 0)
        add(
            f"Progress relay, {scenario} subscriber(s)",
            "gateway p99 <= 1.5 x bare grpc.aio broadcast, no event lost",
            f"{fmt_ratio(r)}; lost {lost if lost is not None else 'n/a'}",
            relay_met,
        )
    for scenario in ("1", "100", "1000"):
        g = _get(prog, "gateway", scenario) or {}
        c = _get(prog, "comfy_api_proxy", scenario) or {}
        cp99 = _num(c.get("p99_ms"))
        gp99 = _num(g.get("p99_ms"))
        delivered = (
            f"it delivered {c.get('delivered')} of the {c.get('owed')} progress updates "
            "owed to its accepted streams (about 2 per second per stream by design)"
        )
        measured = f"gateway {fmt(gp99, 2)} ms vs {fmt(cp99, 2)} ms"
        met: bool | None
        if not c or "not_measured" in (_get(prog, "comfy_api_proxy") or {}):
            met, measured = None, "n/a"
            note = _get(prog, "comfy_api_proxy", "not_measured") or "no run"
        elif c.get("refused_streams"):
            # Not like for like: it serves a handful of the subscribers.
            met, measured = None, f"gateway {fmt(gp99, 2)} ms, all streams served"
            note = (
                f"comfy-api-proxy cannot serve this: it refused {c['refused_streams']} of "
                f"{scenario} streams (429 too_many_streams, 8 at most) and a second stream on "
                f"a job takes the ComfyUI socket from the first; {delivered}"
            )
        elif cp99 is None or gp99 is None:
            met, note = None, f"no delay measured; {delivered}"
        else:
            met, note = gp99 < cp99, delivered
        add(
            f"Progress relay vs comfy-api-proxy, {scenario} subscriber(s)",
            "gateway p99 below comfy-api-proxy's event stream",
            measured,
            met,
            note,
        )

    art = _get(results, "sections", "artifacts", "medians") or {}
    for label in ("image_10MiB", "video_1GiB"):
        g = _get(art, label, "gateway") or {}
        p = _get(art, label, "plain") or {}
        r = ratio(_num(g.get("mb_per_s")), _num(p.get("mb_per_s")))
        size = _get(art, label, "size_bytes")
        add(
            f"Artifact copy MB/s, {label}"
            + ("" if size is None else f" ({size / (1024 * 1024):.0f} MiB)"),
            "gateway >= 0.8 x plain upload of the same bytes",
            fmt_ratio(r),
            None if r is None else r >= 0.8,
        )
    growth = _num(_get(art, "video_1GiB", "gateway", "peak_rss_growth_mib"))
    size = _get(art, "video_1GiB", "size_bytes")
    note = ""
    if size is not None and size < 1024**3:
        note = f"quick run: a {size / (1024 * 1024):.0f} MiB video stands in for 1 GiB"
    add(
        "Artifact copy peak RSS growth, 1 GiB video",
        "<= 64 MB",
        "n/a" if growth is None else f"{growth * 1024 * 1024 / MB:.1f} MB",
        None if growth is None else growth * 1024 * 1024 <= 64 * MB,
        note,
    )

    fleet_targets(results, add)

    prev = _get(results, "sections", "previews") or {}
    medians = prev.get("medians") or {}
    on, off = _num(_get(medians, "on", "p99_ms")), _num(_get(medians, "off", "p99_ms"))
    if prev:
        lost = sum(int(_get(medians, k, "lost") or 0) for k in ("on", "off"))
        add(
            "Previews: others' progress p99, 50 of 100 streams taking previews",
            "<= 1.1 x the same run with no previews, no event lost",
            f"{fmt_ratio(ratio(on, off))} ({fmt(on, 2)} vs {fmt(off, 2)} ms); lost {lost}",
            None if on is None or off is None else on <= 1.1 * off and lost == 0,
            f"{prev.get('runs', '?')} runs, previews at {fmt(prev.get('preview_fps'), 0)}/s",
        )

    mem = _get(results, "sections", "memory") or {}
    idle = _num(mem.get("idle_rss_mib"))
    add(
        "Gateway RSS idle",
        "<= 100 MB",
        "n/a" if idle is None else f"{idle * 1024 * 1024 / MB:.1f} MB",
        None if idle is None else idle * 1024 * 1024 <= 100 * MB,
    )
    per_stream = _num(mem.get("per_stream_kib"))
    add(
        f"Gateway RSS growth per open stream ({mem.get('streams_open', 'n/a')} streams)",
        "<= 50 KB",
        "n/a" if per_stream is None else f"{per_stream * 1024 / KB:.1f} KB",
        None if per_stream is None else per_stream * 1024 <= 50 * KB,
    )
    replica_report.targets(results, add)
    return out


def fleet_targets(results: dict[str, Any], add: Any) -> None:
    """Makespan, gaps and fair share of the fleet section (see bench/fleet.py)."""
    fleet = _get(results, "sections", "fleet") or {}
    for sc in fleet.get("scenarios", []):
        vs_greedy, vs_bound = _num(sc.get("vs_greedy")), _num(sc.get("vs_lower_bound"))
        greedy_vs_bound = ratio(_num(sc.get("greedy_s")), _num(sc.get("lower_bound_s")))
        met = None
        if vs_greedy is not None and vs_bound is not None:
            met = vs_greedy <= 1.05 and vs_bound <= 1.2
        add(
            f"Fleet makespan, {sc['name']} ({sc['jobs']} jobs, {sc['long_jobs']} long)",
            "<= 1.05 x greedy first-free schedule and <= 1.2 x lower bound",
            f"{fmt_ratio(vs_greedy)} greedy, {fmt_ratio(vs_bound)} bound "
            f"({fmt(sc.get('makespan_s'), 2)} s; greedy {fmt(sc.get('greedy_s'), 2)} s, "
            f"bound {fmt(sc.get('lower_bound_s'), 2)} s)",
            met,
            f"greedy itself is {fmt_ratio(greedy_vs_bound)} the bound"
            + (f"; {sc['not_run']} job(s) not run" if sc.get("not_run") else ""),
        )
        gap = sc.get("gap_ms") or {}
        median_gap = _num(gap.get("median"))
        add(
            f"Fleet gap between jobs on a backend, {sc['name']}",
            "median <= 20 ms (next start - previous end, simulators' records)",
            f"{fmt(median_gap, 1)} ms (p95 {fmt(gap.get('p95'), 1)}, max "
            f"{fmt(gap.get('max'), 1)}, n={gap.get('n', 'n/a')})",
            None if median_gap is None else median_gap <= 20.0,
            "timestamps have 1 ms resolution",
        )
    fair = fleet.get("fairness") or {}
    if fair:
        b95, bound = _num(fair.get("b_wait_p95_jobs")), _num(fair.get("fair_share_p95_jobs"))
        add(
            f"Fair share: caller B's {fair.get('b_jobs')} jobs behind A's {fair.get('a_jobs')}",
            "B's p95 wait (Generate -> started) within its fair share, not behind A's queue",
            f"B p95 {fmt(b95, 2)} job-durations (fair share {fmt(bound, 2)}); A p95 "
            f"{fmt(fair.get('a_wait_p95_jobs'), 1)}",
            None if b95 is None or bound is None else b95 <= bound,
            f"behind A's queue B would wait ~{fmt(fair.get('fifo_b_p95_jobs'), 1)}; one job = "
            f"{fmt((_num(fair.get('job_duration_s')) or math.nan) * 1000, 0)} ms, "
            f"{fair.get('backends')} backends",
        )


# -- ratios ------------------------------------------------------------------------


def ratio_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    sub = _get(results, "sections", "submission", "medians") or {}
    levels = _get(results, "sections", "submission", "levels") or []
    for level in levels:
        g = _num(_get(sub, "gateway", str(level), "calls_per_s"))
        for other, label in (
            ("floor", "floor (minimal forwarder)"),
            ("refproxy", "reference proxy"),
            ("echo", "ceiling (bare echo)"),
            ("comfy_api_proxy", "comfy-api-proxy"),
            ("direct", "direct to /prompt (httpx)"),
        ):
            o = _num(_get(sub, other, str(level), "calls_per_s"))
            rows.append(
                (
                    f"Generate calls/s, {level} caller(s)",
                    f"gateway / {label}",
                    fmt_ratio(ratio(g, o)),
                )
            )
    prog = _get(results, "sections", "progress", "medians") or {}
    for scenario in ("1", "100", "1000"):
        g = _num(_get(prog, "gateway", scenario, "p99_ms"))
        for other, label in (
            ("floor", "bare broadcast (ceiling)"),
            ("refproxy", "reference proxy WS"),
            ("comfy_api_proxy", "comfy-api-proxy SSE"),
        ):
            o = _num(_get(prog, other, scenario, "p99_ms"))
            rows.append(
                (
                    f"Progress p99 delay, {scenario} subscriber(s)",
                    f"gateway / {label}",
                    fmt_ratio(ratio(g, o)),
                )
            )
    art = _get(results, "sections", "artifacts", "medians") or {}
    for label in ("image_10MiB", "video_1GiB"):
        mine: dict[str, Any] = _get(art, label, "gateway") or {}
        for other, name in (("plain", "plain upload"), ("base64", "base64 path")):
            theirs: dict[str, Any] = _get(art, label, other) or {}
            rows.append(
                (
                    f"Artifact copy MB/s, {label}",
                    f"gateway / {name}",
                    fmt_ratio(ratio(_num(mine.get("mb_per_s")), _num(theirs.get("mb_per_s")))),
                )
            )
            rows.append(
                (
                    f"Artifact copy peak RSS growth, {label}",
                    f"gateway / {name}",
                    fmt_ratio(
                        ratio(
                            _num(mine.get("peak_rss_growth_mib")),
                            _num(theirs.get("peak_rss_growth_mib")),
                        )
                    ),
                )
            )
    for sc in _get(results, "sections", "fleet", "scenarios") or []:
        rows.append(
            (
                f"Fleet makespan, {sc['name']}",
                "gateway / greedy first-free schedule",
                fmt_ratio(_num(sc.get("vs_greedy"))),
            )
        )
        rows.append(
            (
                f"Fleet makespan, {sc['name']}",
                "gateway / lower bound",
                fmt_ratio(_num(sc.get("vs_lower_bound"))),
            )
        )
    fair = _get(results, "sections", "fleet", "fairness") or {}
    if fair:
        rows.append(
            (
                "Fair share, p95 wait",
                "caller B (10 jobs) / caller A (queued first)",
                fmt_ratio(
                    ratio(_num(fair.get("b_wait_p95_jobs")), _num(fair.get("a_wait_p95_jobs")))
                ),
            )
        )
    return rows


# -- markdown ----------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(results: dict[str, Any]) -> str:
    machine = results.get("machine", {})
    lines = [
        "# comfyui-grpc benchmark",
        "",
        f"Reproduce: `{results.get('command', 'python -m bench')}` "
        "(see `bench/README.md`; `--quick` for a 1-2 minute smoke run).",
        "",
        f"Measured {results.get('finished_at', '?')} on {machine.get('cores', '?')} cores "
        f"({machine.get('cpu', '?')}), {machine.get('memory_gib', '?')} GiB RAM, Linux "
        f"{machine.get('kernel', '?')}, Python {machine.get('python', '?')}; "
        f"load average at start {machine.get('load_average_at_start', '?')}. "
        "Everything on 127.0.0.1. The cores are shared with other work, so absolute "
        "numbers are noisy; ratios come from the same run and are the result.",
        "",
        "## Targets",
        "",
    ]
    rows = [
        [t["target"], t["wanted"], t["measured"], f"**{t['status']}**", t["note"]]
        for t in results.get("targets", [])
    ]
    lines += _table(["target", "wanted", "measured", "status", "note"], rows)
    lines += ["", "## Ratios (medians over runs)", ""]
    lines += _table(["what", "ratio", "value"], [list(r) for r in ratio_rows(results)])
    lines += _section_tables(results)
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {note}" for note in notes]
    lines += ["", "![latency distributions](latency.png)", ""]
    return "\n".join(lines)


def _section_header(section: dict[str, Any], title: str) -> list[str]:
    return [
        "",
        f"## {title}",
        "",
        f"_{section.get('mode', '?')} run, {section.get('runs', '?')} run(s), "
        f"measured {section.get('measured_at', '?')} in {section.get('seconds', '?')} s, "
        f"load average after it {section.get('load_average_after', '?')} "
        "(2 cores: above 2 means other work was competing); machine as above._",
        "",
    ]


def _section_tables(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    sections = results.get("sections", {})
    sub = sections.get("submission")
    if sub:
        lines += _section_header(sub, "Submission: Generate calls/s and latency")
        levels = sub.get("levels", [])
        header = ["variant"] + [f"{lv} caller(s): calls/s, p50 / p99 ms" for lv in levels]
        rows = []
        for variant in SUBMISSION_ORDER:
            data = sub["medians"].get(variant)
            if data is None:
                continue
            if "not_measured" in data:
                rows.append(
                    [variant, f"not measured: {data['not_measured']}"] + [""] * (len(levels) - 1)
                )
                continue
            cells = []
            for lv in levels:
                c = data.get(str(lv))
                if not c:
                    cells.append("-")
                    continue
                extra = f", {c['errors']} errors" if c.get("errors") else ""
                latency = f"{fmt(c['p50_ms'], 1)} / {fmt(c['p99_ms'], 1)}"
                cells.append(f"{fmt(c['calls_per_s'], 0)}, {latency}{extra}")
            rows.append([variant, *cells])
        lines += _table(header, rows)
        lines += [""] + [f"- `{k}`: {v}" for k, v in sub.get("description", {}).items()]
        lines += [
            "",
            "Queue depth reached in the simulator at the end of a cell (median): "
            + ", ".join(
                f"{v}@64={fmt(_get(sub['medians'], v, '64', 'queue_depth_after'), 0)}"
                for v in SUBMISSION_ORDER
                if _get(sub["medians"], v, "64", "queue_depth_after") is not None
            ),
        ]
    prog = sections.get("progress")
    if prog:
        lines += _section_header(prog, "Progress relay: send-to-receive delay")
        rows = []
        for relay in RELAY_ORDER:
            data = prog["medians"].get(relay)
            if data is None:
                continue
            if "not_measured" in data:
                rows.append([relay, "-", f"not measured: {data['not_measured']}", "", "", ""])
                continue
            for scenario, c in data.items():
                rows.append(
                    [
                        relay,
                        scenario,
                        f"{fmt(c['p50_ms'], 2)} / {fmt(c['p99_ms'], 2)} "
                        f"(n={c.get('samples', '?')})",
                        f"{c['delivered']}/{c['owed']}",
                        str(c.get("refused_streams", 0)),
                        f"{fmt(c.get('relay_rss_idle_mib'))} -> "
                        f"{fmt(c.get('relay_rss_subscribed_mib'))}",
                    ]
                )
        lines += _table(
            [
                "relay",
                "subscribers",
                "p50 / p99 ms (all runs' events)",
                "delivered/owed",
                "streams refused",
                "relay RSS MiB before -> subscribed",
            ],
            rows,
        )
        lines += [""] + [f"- `{k}`: {v}" for k, v in prog.get("description", {}).items()]
        lines += [""] + [f"- scenario {k}: {v}" for k, v in prog.get("scenarios", {}).items()]
    art = sections.get("artifacts")
    if art:
        lines += _section_header(art, "Artifact copy into S3")
        rows = []
        for label, data in art["medians"].items():
            for mode in ("gateway", "base64", "plain"):
                c = data.get(mode)
                if c is None:
                    continue
                if "not_measured" in c:
                    rows.append([label, mode, c["not_measured"], "", ""])
                    continue
                phases = ", ".join(f"{k} {v:.2f}s" for k, v in c.get("phases_s", {}).items())
                rows.append(
                    [
                        label,
                        mode,
                        fmt(c["mb_per_s"]),
                        fmt(c["peak_rss_growth_mib"]),
                        phases,
                    ]
                )
        lines += _table(["file", "path", "MB/s", "peak RSS growth MiB", "gateway phases"], rows)
        lines += [""] + [f"- `{k}`: {v}" for k, v in art.get("description", {}).items()]
    mem = sections.get("memory")
    if mem:
        lines += _section_header(mem, "Gateway memory (RSS)")
        jobs = mem.get("finished_jobs", {})
        rows = [
            ["idle (started, backend connected)", fmt(mem.get("idle_rss_mib"))],
            [
                f"after {jobs.get('jobs', '?')} finished jobs "
                f"({fmt(jobs.get('jobs_per_s'), 0)} jobs/s end to end)",
                fmt(mem.get("rss_with_finished_jobs_mib")),
            ],
            [
                f"plus {mem.get('streams_open')} open StreamProgress streams",
                fmt(mem.get("rss_with_streams_mib")),
            ],
            ["growth per open stream (KiB)", fmt(mem.get("per_stream_kib"))],
        ]
        lines += _table(["stage", "RSS MiB"], rows)
    lines += _fleet_tables(sections.get("fleet"))
    lines += replica_report.tables(sections, _section_header, _table)
    return lines


def _fleet_tables(fleet: dict[str, Any] | None) -> list[str]:
    if not fleet:
        return []
    lines = _section_header(fleet, "Fleet: scheduling across backends")
    rows = []
    for sc in fleet.get("scenarios", []):
        gap = sc.get("gap_ms") or {}
        rows.append(
            [
                sc["name"],
                f"{sc['jobs']} ({sc['long_jobs']} long)",
                fmt(sc.get("makespan_s"), 2),
                fmt(sc.get("greedy_s"), 2),
                fmt(sc.get("lower_bound_s"), 2),
                fmt_ratio(_num(sc.get("vs_greedy"))),
                fmt_ratio(_num(sc.get("vs_lower_bound"))),
                f"{fmt(gap.get('median'), 1)} / {fmt(gap.get('p95'), 1)} / "
                f"{fmt(gap.get('max'), 1)}",
                " ".join(str(n) for n in sc.get("jobs_per_backend", [])),
                fmt(sc.get("submit_s"), 2),
            ]
        )
    lines += _table(
        [
            "scenario",
            "jobs",
            "makespan s",
            "greedy s",
            "bound s",
            "/ greedy",
            "/ bound",
            "gap ms median / p95 / max",
            "jobs per backend",
            "burst submitted in s",
        ],
        rows,
    )
    fair = fleet.get("fairness") or {}
    if fair:
        lines += [
            "",
            f"Fair share on {fair.get('backends')} backends: caller A queued {fair.get('a_jobs')} "
            f"short jobs, then caller B submitted {fair.get('b_jobs')}. Waits are Generate sent "
            "-> execution started on the simulator, in job durations "
            f"(one job = {fmt((_num(fair.get('job_duration_s')) or math.nan) * 1000, 0)} ms). "
            f"When B came, {fair.get('a_not_started_when_b_came')} of A's jobs had not started. "
            "B's fair share for its k-th job is (1 + prefetch) + (2k - 1) / backends job "
            "durations: the running and prefetched job on the backend it goes to, then one job "
            "per active caller per turn (its own earlier ones included) over the backends; the "
            "p95 of those 10 values is the target.",
            "",
        ]
        lines += _table(
            ["caller", "jobs", "wait p50", "wait p95", "fair share p95"],
            [
                [
                    "A",
                    str(fair.get("a_jobs")),
                    fmt(fair.get("a_wait_p50_jobs"), 2),
                    fmt(fair.get("a_wait_p95_jobs"), 2),
                    "",
                ],
                [
                    "B",
                    str(fair.get("b_jobs")),
                    fmt(fair.get("b_wait_p50_jobs"), 2),
                    fmt(fair.get("b_wait_p95_jobs"), 2),
                    fmt(fair.get("fair_share_p95_jobs"), 2),
                ],
            ],
        )
    lines += [""] + [f"- {k}: {v}" for k, v in fleet.get("description", {}).items()]
    lines += ["", "![fleet schedules and waits](fleet.png)"]
    return lines


# -- chart -----------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> bool:
    """ECDFs of submission latency and relay delay; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sub = _get(results, "sections", "submission") or {}
    prog = _get(results, "sections", "progress") or {}
    levels = [str(x) for x in sub.get("levels", [])]
    scenarios = list((prog.get("scenarios") or {}).keys())
    columns = max(len(levels), len(scenarios), 1)
    fig, axes = plt.subplots(2, columns, figsize=(6 * columns, 9), squeeze=False)
    samples = sub.get("latency_samples_ms", {})
    for index, level in enumerate(levels):
        ax = axes[0][index]
        for variant in SUBMISSION_ORDER:
            series = _get(samples, variant, level)
            if series:
                _ecdf(ax, series, variant)
        ax.set_title(f"Generate latency, {level} caller(s)")
        ax.set_xlabel("ms (log)")
    delays = prog.get("delay_samples_ms", {})
    for index, scenario in enumerate(scenarios):
        ax = axes[1][index]
        for relay in RELAY_ORDER:
            series = _get(delays, relay, scenario)
            if series:
                _ecdf(ax, series, relay)
        ax.set_title(f"Progress relay delay, {scenario} subscriber(s)")
        ax.set_xlabel("ms (log)")
    from matplotlib.ticker import NullFormatter

    for row in axes:
        for ax in row:
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("fraction of calls / events")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8, loc="lower right")
    machine = results.get("machine", {})
    fig.suptitle(
        f"comfyui-grpc benchmark ({results.get('mode', '?')}), {machine.get('cores', '?')} "
        f"shared cores, {machine.get('cpu', '?')}",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def fleet_chart(results: dict[str, Any], path: Path) -> bool:
    """Each burst's schedule per backend, and the fair-share waits; False without matplotlib."""
    fleet = _get(results, "sections", "fleet")
    if not fleet:
        return True
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = fleet.get("scenarios", [])
    panels = len(scenarios) + (1 if fleet.get("fairness") else 0)
    columns = 3
    rows = max(1, math.ceil(panels / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, sc in zip(flat, scenarios, strict=False):
        for backend, start, end, long in sc.get("timeline", []):
            ax.barh(
                backend,
                end - start,
                left=start,
                height=0.8,
                color="tab:red" if long else "tab:blue",
                edgecolor="white",
                linewidth=0.3,
            )
        for value, style, label in (
            (sc.get("greedy_s"), "--", "greedy"),
            (sc.get("lower_bound_s"), ":", "lower bound"),
        ):
            if _num(value) is not None:
                ax.axvline(value, color="black", linestyle=style, label=f"{label} {value:.2f} s")
        scales = sc.get("time_scales", [])
        ax.set_yticks(range(len(scales)))
        ax.set_yticklabels([f"{i}{' (2x slow)' if s > 1 else ''}" for i, s in enumerate(scales)])
        ax.set_title(f"{sc['name']}: makespan {fmt(sc.get('makespan_s'), 2)} s", fontsize=10)
        ax.set_xlabel("s since the first job arrived (red: long jobs)")
        ax.legend(fontsize=8, loc="lower right")
    fair = fleet.get("fairness") or {}
    if fair:
        ax = flat[len(scenarios)]
        for key, label, color in (
            ("a_waits_jobs", f"caller A ({fair.get('a_jobs')} jobs)", "tab:orange"),
            ("b_waits_jobs", f"caller B ({fair.get('b_jobs')} jobs)", "tab:green"),
        ):
            waits = sorted(fair.get(key) or [])
            if waits:
                ax.step(
                    waits,
                    [(i + 1) / len(waits) for i in range(len(waits))],
                    where="post",
                    label=label,
                    color=color,
                )
        bound = _num(fair.get("fair_share_p95_jobs"))
        if bound is not None:
            ax.axvline(bound, color="black", linestyle=":", label=f"B's fair share p95 {bound:.1f}")
        ax.set_title("Fair share: wait from Generate to start", fontsize=10)
        ax.set_xlabel("job durations")
        ax.set_ylabel("fraction of the caller's jobs")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(
        f"comfyui-grpc fleet scheduling ({fleet.get('mode', '?')}), simulators' own records",
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _ecdf(ax: Any, series: dict[str, Any] | list[float], label: str) -> None:
    """One series ``{"n": samples, "ms": evenly spaced sorted subset}`` as an ECDF."""
    if isinstance(series, list):  # results written before the sample count was kept
        series = {"n": len(series), "ms": series}
    ordered = sorted(v for v in series.get("ms", []) if v is not None and v > 0)
    if not ordered:
        return
    points = len(ordered)
    ax.step(
        ordered,
        [(i + 1) / points for i in range(points)],
        where="post",
        label=f"{label} (n={series.get('n', points)})",
        color=COLORS.get(label),
    )
    ax.set_xscale("log")
