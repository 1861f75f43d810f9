"""Targets and Markdown tables of the replica sections (replica_submission, replica_streams)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

SUBMISSION_ORDER = ("sqlite", "postgres_1", "postgres_3")
Add = Callable[..., None]


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not math.isnan(value):
        return float(value)
    return None


def _fmt(value: Any, digits: int = 1) -> str:
    number = _num(value)
    return "n/a" if number is None else f"{number:,.{digits}f}"


def targets(results: dict[str, Any], add: Add) -> None:
    streams = (results.get("sections") or {}).get("replica_streams")
    if not streams:
        return
    goal = _num(streams.get("goal_ms")) or 50.0
    wanted = f"non-owner p99 <= owner p99 + {goal:g} ms, no event lost"
    if "not_measured" in streams:
        add("Stream delay on a non-owner replica", wanted, "n/a", None, streams["not_measured"])
        return
    sides = streams.get("sides") or {}
    owner, other = sides.get("owner") or {}, sides.get("other") or {}
    difference = _num(streams.get("p99_difference_ms"))
    lost = int(owner.get("lost") or 0) + int(other.get("lost") or 0)
    add(
        "Stream delay on a non-owner replica, 100 subscribers",
        wanted,
        f"p99 {_fmt(other.get('p99_ms'))} vs {_fmt(owner.get('p99_ms'))} ms: "
        f"+{_fmt(difference)} ms; lost {lost}",
        None if difference is None else difference <= goal and lost == 0,
        streams.get("plan", ""),
    )


def tables(sections: dict[str, Any], header: Callable[[dict[str, Any], str], list[str]],
           table: Callable[[list[str], list[list[str]]], list[str]]) -> list[str]:  # fmt: skip
    return _submission(sections.get("replica_submission"), header, table) + _streams(
        sections.get("replica_streams"), header, table
    )


def _submission(sub: dict[str, Any] | None, header: Any, table: Any) -> list[str]:
    if not sub:
        return []
    lines: list[str] = header(sub, "Submission with job state: SQLite, PostgreSQL 1 and 3 replicas")
    workload = sub.get("workload") or {}
    rows = []
    for variant in SUBMISSION_ORDER:
        data = (sub.get("medians") or {}).get(variant)
        if data is None:
            continue
        if "not_measured" in data:
            rows.append([variant, "-", f"not measured: {data['not_measured']}", "", ""])
            continue
        for callers, c in data.items():
            errors = f", {c['errors']} errors" if c.get("errors") else ""
            rows.append(
                [
                    variant,
                    workload.get(callers, callers),
                    f"{_fmt(c.get('jobs_per_s'), 0)}{errors}",
                    f"{_fmt(c.get('p50_ms'), 2)} / {_fmt(c.get('p95_ms'), 2)} / "
                    f"{_fmt(c.get('p99_ms'), 2)} (n={c.get('samples', '?')})",
                    f"{_fmt(c.get('gateway_cpu_ms_per_job'), 2)} / "
                    f"{_fmt(c.get('postgres_cpu_ms_per_job'), 2)} / "
                    f"{_fmt(c.get('client_cpu_ms_per_job'), 2)}",
                ]
            )
    lines += table(
        [
            "variant",
            "workload",
            "jobs/s (median of runs)",
            "Generate p50 / p95 / p99 ms (all runs' calls)",
            "CPU ms per job: gateways / PostgreSQL / load generator",
        ],
        rows,
    )
    lines += [""] + [f"- `{k}`: {v}" for k, v in (sub.get("description") or {}).items()]
    lines += [
        f"- {sub.get('backends', '?')} simulators, each held by a gate prompt: jobs wait in "
        "the gateway's line (SQLite) or the shared line (PostgreSQL); Generate's answer time "
        "is what is measured. Every cell has fresh gateways and an empty database.",
    ]
    return lines


def _streams(streams: dict[str, Any] | None, header: Any, table: Any) -> list[str]:
    if not streams:
        return []
    lines: list[str] = header(streams, "Stream delay on the replica that does not own the backend")
    if "not_measured" in streams:
        return [*lines, f"Not measured: {streams['not_measured']}"]
    sides = streams.get("sides") or {}
    rows = []
    for side, label in (
        ("owner", f"owner ({streams.get('owner_replica', '?')})"),
        ("other", "other replica"),
    ):
        s = sides.get(side) or {}
        rows.append(
            [
                label,
                f"{_fmt(s.get('p50_ms'), 2)} / {_fmt(s.get('p95_ms'), 2)} / "
                f"{_fmt(s.get('p99_ms'), 2)} / {_fmt(s.get('max_ms'), 2)}",
                str(s.get("samples", "?")),
                f"{s.get('delivered', '?')}/{s.get('owed', '?')}",
            ]
        )
    lines += table(
        [
            "subscribers on",
            "delay ms p50 / p95 / p99 / max (ComfyUI send -> client)",
            "samples",
            "delivered/owed",
        ],
        rows,
    )
    lag = streams.get("lag_behind_owner") or {}
    lines += [
        "",
        f"Plan: {streams.get('plan', '?')}. Difference at p99: "
        f"**{_fmt(streams.get('p99_difference_ms'))} ms** (goal <= "
        f"{_fmt(streams.get('goal_ms'), 0)} ms). Lag of a non-owner subscriber behind the "
        f"owner's median receive time of the same event: p50 {_fmt(lag.get('p50_ms'))}, "
        f"p95 {_fmt(lag.get('p95_ms'))}, p99 {_fmt(lag.get('p99_ms'))} ms.",
        "",
        "Where the non-owner's lag goes (per event; the owner's `event_time` mapped onto "
        "CLOCK_MONOTONIC, the NOTIFY as heard by the benchmark's own LISTEN connection):",
        "",
    ]
    parts = streams.get("breakdown") or {}
    lines += table(
        ["stage", "p50 ms", "p95 ms", "p99 ms", "samples"],
        [
            [
                label,
                _fmt(_get(parts, key, "p50_ms"), 2),
                _fmt(_get(parts, key, "p95_ms"), 2),
                _fmt(_get(parts, key, "p99_ms"), 2),
                str(_get(parts, key, "samples") or 0),
            ]
            for key, label in (
                ("comfyui_to_event_on_owner", "ComfyUI send -> event recorded on the owner"),
                ("event_to_notify", "event -> NOTIFY heard (the owner's write batch)"),
                ("notify_to_other_subscriber", "NOTIFY -> non-owner subscriber (read, stream)"),
            )
        ],
    )
    return lines


def _get(data: dict[str, Any], key: str, field: str) -> Any:
    inner = data.get(key)
    return inner.get(field) if isinstance(inner, dict) else None
