"""Mutation check: every headline guarantee is held by a test that fails when
the code breaks it.

Each entry below is one such break, written as an exact text change to one
file, with the tests that must catch it. The check copies the tracked files
to a temporary directory, runs the named tests there once unchanged (they
must pass), then applies one change at a time and runs them again (they must
fail), and prints ``caught`` or ``SURVIVED`` per change. The working tree is
never touched.

Opt-in, not part of ``make test`` (it runs the named tests once per change,
a few minutes in all)::

    .venv/bin/python scripts/mutants.py            # every change
    .venv/bin/python scripts/mutants.py --list     # names only
    .venv/bin/python scripts/mutants.py --only interrupt-without-prompt-id

Exit status 0 when every change is caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = "server/comfyui_grpc"
GUARANTEES = "tests/e2e/test_guarantees.py"
CORE = "tests/unit/test_scheduler_core.py"
FLEET = "tests/e2e/test_fleet.py"
STORAGE = "tests/storage/test_s3_integrity.py"
SHARED = "tests/state/test_shared_state.py"
SHARED_LINE = "tests/unit/test_shared_line.py"
REPLICAS = "tests/e2e/test_replicas.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS: tuple[Mutant, ...] = (
    # -- the changes that once left the whole suite green ------------------------
    Mutant(
        "interrupt-without-prompt-id",
        f"{SERVER}/comfyui/client.py",
        'await self._request("POST", "/interrupt", json={"prompt_id": prompt_id})',
        'await self._request("POST", "/interrupt", json={})',
        (f"{GUARANTEES}::test_an_interrupt_stops_only_the_prompt_it_names",),
    ),
    Mutant(
        "cancel-deletes-every-waiting-prompt",
        f"{SERVER}/comfyui/client.py",
        'await self._request("POST", "/queue", json={"delete": prompt_ids})',
        'await self._request("POST", "/queue", json={"clear": True})',
        (f"{GUARANTEES}::test_cancel_deletes_only_the_jobs_own_prompt",),
    ),
    Mutant(
        "interrupt-race-guard-off",
        f"{SERVER}/jobs/tracker.py",
        "if time.monotonic() - recent < INTERRUPT_RACE_SECONDS and job.attempts < 3:",
        "if False:",
        (f"{GUARANTEES}::test_an_interrupt_that_hits_the_next_prompt_hands_it_out_again",),
    ),
    Mutant(
        "no-record-before-post-prompt",
        f"{SERVER}/scheduler/executor.py",
        "            await self.job_store.save_now(job)\n        except Exception as exc:",
        "            pass\n        except Exception as exc:",
        (f"{GUARANTEES}::test_a_job_is_recorded_with_its_backend_before_comfyui_sees_it",),
    ),
    Mutant(
        "no-request-id-lookup-in-store",
        f"{SERVER}/jobs/service.py",
        "existing = await self.job_store.by_request(spec.request_id)",
        "existing = None",
        (f"{GUARANTEES}::test_a_request_id_is_found_in_the_store_after_a_restart",),
    ),
    Mutant(
        "duplicate-gets-an-unrecorded-job",
        f"{SERVER}/jobs/service.py",
        "if self.registry.get(existing.job_id) is existing or existing.terminal:",
        "if True:",
        (f"{GUARANTEES}::test_a_duplicate_of_a_request_that_could_not_be_recorded_tries_again",),
    ),
    Mutant(
        "lost-answer-assumed-not-landed",
        f"{SERVER}/scheduler/executor.py",
        "if exc.maybe_sent and await self._landed(backend, job):",
        "if False:",
        (f"{GUARANTEES}::test_a_submission_whose_answer_was_lost_is_not_sent_again",),
    ),
    Mutant(
        "partial-graph-not-withdrawn",
        f"{SERVER}/scheduler/executor.py",
        "await self._take_back(backend, job.job_id)",
        "pass",
        (f"{GUARANTEES}::test_a_graph_comfyui_only_partly_accepts_is_withdrawn",),
    ),
    Mutant(
        "s3-payload-unsigned",
        f"{SERVER}/storage/s3_store.py",
        '"payload_signing_enabled": True,',
        '"payload_signing_enabled": False,',
        (f"{STORAGE}::test_every_put_and_part_is_signed_with_its_bodys_sha256",),
    ),
    Mutant(
        "no-check-after-multipart-upload",
        f"{SERVER}/storage/s3_store.py",
        '        """Checks that the assembled object has the size that was streamed."""\n',
        '        """Checks that the assembled object has the size that was streamed."""\n'
        "        return\n",
        (f"{STORAGE}::test_multipart_object_assembled_short_is_refused_and_removed",),
    ),
    # -- the scheduler core ----------------------------------------------------------
    Mutant(
        "no-fair-share",
        f"{SERVER}/scheduler/line.py",
        "        for caller in self._turns():\n",
        "        for caller in sorted(self._callers, key=self._joined.__getitem__):\n",
        (
            f"{CORE}::test_callers_take_turns",
            f"{FLEET}::test_callers_take_turns_and_each_has_a_limit",
        ),
    ),
    Mutant(
        "priority-ignored",
        f"{SERVER}/scheduler/line.py",
        "(queue.high if high else queue.normal).append(job_id)",
        "queue.normal.append(job_id)",
        (f"{CORE}::test_high_priority_goes_first_within_its_callers_turn",),
    ),
    Mutant(
        "routing-ignores-inventory",
        f"{SERVER}/backends/inventory.py",
        "        info = self.object_info\n        if any(",
        "        info = self.object_info\n        return True\n        if any(",
        (
            f"{CORE}::test_a_job_goes_only_to_a_backend_that_has_its_model",
            f"{FLEET}::test_a_job_runs_only_where_its_checkpoint_is",
        ),
    ),
    Mutant(
        "no-validation-at-generate",
        f"{SERVER}/jobs/service.py",
        '        """Refuse at once a graph that no known backend could run."""\n',
        '        """Refuse at once a graph that no known backend could run."""\n        return\n',
        (f"{FLEET}::test_invalid_input_is_refused_at_generate_without_comfyui",),
    ),
    Mutant(
        "prefetch-unbounded",
        f"{SERVER}/scheduler/core.py",
        "limit = 1 + self.prefetch\n        free",
        "limit = 1000\n        free",
        (f"{CORE}::test_jobs_wait_in_the_gateway_until_a_backend_has_room",),
    ),
    Mutant(
        "cancel-in-line-never-answers",
        f"{SERVER}/scheduler/core.py",
        "            case Phase.WAITING:\n",
        "            case Phase.WAITING if False:\n",
        (
            f"{CORE}::test_cancelling_a_waiting_job_touches_no_backend",
            f"{FLEET}::test_a_waiting_job_is_cancelled_without_reaching_comfyui",
        ),
    ),
    Mutant(
        "lost-backend-fails-its-waiting-jobs",
        f"{SERVER}/scheduler/core.py",
        "elif was_running and not ticket.retry_on_loss:",
        "elif not ticket.retry_on_loss:",
        (f"{CORE}::test_a_lost_backends_waiting_prompts_go_to_the_front_of_the_line",),
    ),
    Mutant(
        "no-deletes-owed-to-a-returning-backend",
        f"{SERVER}/scheduler/core.py",
        "                slot.owed.add(job_id)\n",
        "                pass\n",
        (f"{CORE}::test_a_lost_backends_waiting_prompts_go_to_the_front_of_the_line",),
    ),
    Mutant(
        "idle-backend-takes-nothing-back",
        f"{SERVER}/scheduler/core.py",
        "            else:\n                break\n        self._reclaim()",
        "            else:\n                break",
        (f"{CORE}::test_an_idle_backend_takes_back_a_prompt_waiting_behind_a_long_job",),
    ),
    Mutant(
        "stale-outcome-applied",
        f"{SERVER}/scheduler/core.py",
        "        if attempt is not None and attempt != latest:\n            return None\n",
        "",
        (f"{CORE}::test_an_outcome_about_an_earlier_hand_over_changes_nothing",),
    ),
    Mutant(
        "unheard-end-released",
        f"{SERVER}/scheduler/core.py",
        "            slot.unheard.add(slot.running)\n",
        "            self._release(self.tickets[slot.running])\n",
        (f"{CORE}::test_a_job_whose_end_went_unheard_stays_to_be_reconciled",),
    ),
    # -- several replicas on one PostgreSQL ---------------------------------------------
    Mutant(
        "claim-without-row-locks",
        f"{SERVER}/cluster/shared_state.py",
        '"ORDER BY fair_tag, seq LIMIT %s FOR UPDATE SKIP LOCKED",',
        '"ORDER BY fair_tag, seq LIMIT %s",',
        (f"{SHARED}::test_concurrent_claims_never_hand_a_job_to_two_replicas",),
    ),
    Mutant(
        "writes-not-fenced-on-holder",
        f"{SERVER}/state/postgres.py",
        '"WHERE job_id = %s AND holder = %s RETURNING job_id",',
        '"WHERE job_id = %s AND (holder = %s OR true) RETURNING job_id",',
        (f"{SHARED}::test_a_taken_over_backend_brings_its_open_jobs_and_fences_the_old_holder",),
    ),
    Mutant(
        "events-not-fenced-on-holder",
        f"{SERVER}/state/postgres.py",
        '"JOIN jobs j ON j.job_id = w.job_id AND j.holder = %s FOR SHARE OF j "',
        '"JOIN jobs j ON j.job_id = w.job_id AND (j.holder = %s OR true) FOR SHARE OF j "',
        (f"{SHARED}::test_a_taken_over_backend_brings_its_open_jobs_and_fences_the_old_holder",),
    ),
    Mutant(
        "released-lease-keeps-its-owner",
        f"{SERVER}/cluster/shared_state.py",
        "\"UPDATE backend_leases SET owner = '', expires = now() - interval '1 second' \"",
        "\"UPDATE backend_leases SET expires = now() - interval '1 second' \"",
        (f"{SHARED}::test_one_owner_per_backend_until_its_lease_lapses_or_is_released",),
    ),
    Mutant(
        "high-job-steals-another-callers-turn",
        f"{SERVER}/scheduler/shared_line.py",
        "        mine = [r for r in left if r.caller == turn.caller and runnable(r.needs)]\n",
        "        mine = [r for r in left if runnable(r.needs)]\n",
        (f"{SHARED_LINE}::test_a_high_job_takes_its_callers_turn_not_anothers",),
    ),
    Mutant(
        "shared-line-by-arrival",
        f"{SERVER}/scheduler/shared_line.py",
        "    left = sorted(rows, key=lambda r: (r.tag, r.seq))\n",
        "    left = sorted(rows, key=lambda r: r.seq)\n",
        (f"{REPLICAS}::test_fair_share_and_caller_limits_hold_across_replicas",),
    ),
    Mutant(
        "callbacks-of-dead-replicas-left",
        f"{SERVER}/callbacks/delivery.py",
        "            await asyncio.sleep(SHARED_SWEEP_SECONDS)\n",
        "            await asyncio.sleep(SHARED_SWEEP_SECONDS)\n            continue\n",
        (f"{REPLICAS}::test_a_pending_callback_survives_the_replica_that_held_it",),
    ),
    Mutant(
        "let-go-job-not-followed",
        f"{SERVER}/cluster/mirrors.py",
        "        if not any(j is job for j in followed):\n",
        "        if not followed:\n",
        ("tests/unit/test_mirrors.py",),
    ),
    Mutant(
        "previews-stay-on-the-holder",
        f"{SERVER}/cluster/previews.py",
        "        if not rows:\n            return\n",
        "        return\n",
        (f"{REPLICAS}::test_previews_reach_streams_on_every_replica",),
    ),
)


def copy_tree(target: Path) -> None:
    """The tracked files (and the generated stubs) of the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True
    ).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        relative = raw.decode()
        source = ROOT / relative
        if source.is_file():
            destination = target / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> bool:
    """True when the tests pass in ``tree`` (its code first on the import path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "server"), str(tree / "clients/python")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        result = subprocess.run(
            command,
            cwd=tree,
            env=env,
            capture_output=True,
            timeout=timeout,
            # Ctrl-C tests need SIGINT delivered even when this runs in the background.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], metavar="NAME")
    parser.add_argument("--list", action="store_true", help="print the changes' names")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per test run")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for mutant in chosen:
            print(mutant.name)
        return 0
    unknown = set(args.only) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown change(s): {', '.join(sorted(unknown))}")

    survived = 0
    with tempfile.TemporaryDirectory(prefix="comfyui-grpc-mutants-") as tmp:
        tree = Path(tmp)
        copy_tree(tree)
        for mutant in chosen:
            path = tree / mutant.path
            original = path.read_text()
            if original.count(mutant.old) != 1:
                print(f"{mutant.name}: does not apply (its text is not in {mutant.path} once)")
                return 2
            if not run_tests(tree, mutant.tests, args.timeout):
                print(f"{mutant.name}: its tests fail without the change; fix them first")
                return 2
            path.write_text(original.replace(mutant.old, mutant.new))
            started = time.monotonic()
            try:
                caught = not run_tests(tree, mutant.tests, args.timeout)
            finally:
                path.write_text(original)
            took = time.monotonic() - started
            print(f"{'caught  ' if caught else 'SURVIVED'} {mutant.name} ({took:.0f} s)")
            survived += not caught
    print(f"{len(chosen) - survived} caught, {survived} survived")
    return 0 if survived == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
