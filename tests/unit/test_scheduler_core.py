"""The scheduler core, driven directly: events in, actions out, no I/O."""

from __future__ import annotations

from collections import Counter
from copy import deepcopy
from dataclasses import dataclass, field

import pytest
from comfyui_grpc.backends.inventory import Inventory, Needs, needs_of
from comfyui_grpc.scheduler import Phase, Scheduler
from comfyui_grpc.scheduler import actions as act
from comfyui_grpc.scheduler.line import WaitingLine
from hypothesis import given, settings
from hypothesis import strategies as st

SD = Needs(frozenset({"KSampler"}), frozenset({("Loader", "ckpt_name", "sd.safetensors")}))
XL = Needs(frozenset({"KSampler"}), frozenset({("Loader", "ckpt_name", "xl.safetensors")}))


def inventory(*checkpoints: str) -> Inventory:
    return Inventory.from_object_info(
        {
            "KSampler": {"input": {"required": {"seed": ["INT", {}]}}},
            "Loader": {"input": {"required": {"ckpt_name": [list(checkpoints), {}]}}},
        }
    )


def submits(actions: list[act.Action]) -> list[tuple[str, str]]:
    return [(a.job_id, a.backend) for a in actions if isinstance(a, act.Submit)]


def fleet(*urls: str, prefetch: int = 1, checkpoints: tuple[str, ...] = ("sd.safetensors",)):
    core = Scheduler(prefetch=prefetch)
    for url in urls:
        core.add_backend(url)
        core.backend_up(url, inventory(*checkpoints))
    return core


def test_jobs_wait_in_the_gateway_until_a_backend_has_room() -> None:
    core = fleet("a", prefetch=1)
    for n in range(5):
        core.submit(f"j{n}", caller="c", needs=SD)
    # One to run, one prefetched; the rest wait in the gateway.
    assert submits(core.take_actions()) == [("j0", "a"), ("j1", "a")]
    assert [core.position(f"j{n}") for n in range(5)] == [0, 0, 1, 2, 3]
    core.submitted("j0")
    core.submitted("j1")
    core.started("j0")
    assert submits(core.take_actions()) == []
    core.finished("j0")  # j1 starts on ComfyUI's own; room for one more waiting
    assert submits(core.take_actions()) == [("j2", "a")]


def test_first_free_backend_takes_the_next_job() -> None:
    core = fleet("a", "b", prefetch=0)
    for n in range(4):
        core.submit(f"j{n}", caller="c", needs=SD)
    assert submits(core.take_actions()) == [("j0", "a"), ("j1", "b")]
    core.submitted("j1")
    core.started("j1")
    core.finished("j1")  # b is free first: it gets j2, a keeps running j0
    assert submits(core.take_actions()) == [("j2", "b")]


def test_callers_take_turns() -> None:
    core = fleet("a", prefetch=0)
    for n in range(300):
        core.submit(f"a{n}", caller="A", needs=SD)
    for n in range(10):
        core.submit(f"b{n}", caller="B", needs=SD)
    order = [job for job, _ in submits(core.take_actions())]
    while len(order) < 21:
        core.finished(order[-1])
        order += [job for job, _ in submits(core.take_actions())]
    # After the first job, A and B alternate until B has none left.
    assert order[:21] == ["a0"] + [x for n in range(10) for x in (f"b{n}", f"a{n + 1}")]
    assert core.position("a11") == 1


def test_high_priority_goes_first_within_its_callers_turn() -> None:
    core = fleet("a", prefetch=0)
    core.submit("a0", caller="A", needs=SD)
    core.submit("a1", caller="A", needs=SD)
    core.submit("b0", caller="B", needs=SD)
    core.submit("a-high", caller="A", needs=SD, high=True)
    assert core.position("b0") == 1
    assert core.position("a-high") == 2
    order = [job for job, _ in submits(core.take_actions())]
    for _ in range(3):
        core.finished(order[-1])
        order += [job for job, _ in submits(core.take_actions())]
    assert order == ["a0", "b0", "a-high", "a1"]


def test_a_job_goes_only_to_a_backend_that_has_its_model() -> None:
    core = Scheduler(prefetch=0)
    core.add_backend("sd")
    core.add_backend("xl")
    core.backend_up("sd", inventory("sd.safetensors"))
    core.backend_up("xl", inventory("xl.safetensors"))
    core.submit("x", caller="c", needs=XL)
    core.submit("s", caller="c", needs=SD)
    assert sorted(submits(core.take_actions())) == [("s", "sd"), ("x", "xl")]
    assert core.can_run(XL) == ["xl"]
    # A backend that loses the model gets no more such jobs.
    core.backend_up("xl", inventory("sd.safetensors"))
    core.finished("x")
    core.submit("x2", caller="c", needs=XL)
    assert submits(core.take_actions()) == []
    assert core.position("x2") == 1


def test_a_job_that_only_a_busy_backend_can_run_does_not_block_others() -> None:
    core = Scheduler(prefetch=0)
    for url, ckpt in (("sd", "sd.safetensors"), ("xl", "xl.safetensors")):
        core.add_backend(url)
        core.backend_up(url, inventory(ckpt))
    core.submit("x0", caller="A", needs=XL)
    core.submit("x1", caller="A", needs=XL)
    core.submit("s0", caller="A", needs=SD)
    assert sorted(submits(core.take_actions())) == [("s0", "sd"), ("x0", "xl")]


def test_cancelling_a_waiting_job_touches_no_backend() -> None:
    core = fleet("a", prefetch=0)
    core.submit("j0", caller="c", needs=SD)
    core.submit("j1", caller="c", needs=SD)
    core.take_actions()
    core.cancel("j1")
    assert core.take_actions() == [act.Cancelled("j1")]
    core.finished("j0")
    assert submits(core.take_actions()) == []


def test_cancel_deletes_only_the_jobs_own_waiting_prompt() -> None:
    core = fleet("a", prefetch=2)
    for n in range(3):
        core.submit(f"j{n}", caller="c", needs=SD)
        core.submitted(f"j{n}")
    core.started("j0")
    core.take_actions()
    core.cancel("j2")
    assert core.take_actions() == [act.Withdraw("j2", "a", 1)]
    core.withdrawn("j2")
    assert core.take_actions() == [act.Cancelled("j2")]
    core.cancel("j0")
    assert core.take_actions() == [act.Interrupt("j0", "a")]


def test_cancel_during_submission_withdraws_once_it_landed() -> None:
    core = fleet("a")
    core.submit("j", caller="c", needs=SD)
    core.take_actions()
    core.cancel("j")
    assert core.take_actions() == []
    core.submitted("j")
    assert core.take_actions() == [act.Withdraw("j", "a", 1)]


def test_a_lost_backends_waiting_prompts_go_to_the_front_of_the_line() -> None:
    core = fleet("a", "b", prefetch=1)
    core.backend_down("b")
    for n in range(3):
        core.submit(f"j{n}", caller="c", needs=SD)
        core.submitted(f"j{n}")
    core.started("j0")
    core.take_actions()
    core.submit("late", caller="c", needs=SD)
    core.backend_lost("a")
    actions = core.take_actions()
    assert act.Lost("j0", "a") in actions
    assert act.Requeued("j1", "a") in actions
    assert [core.position(j) for j in ("j1", "j2", "late")] == [1, 2, 3]
    core.backend_up("b")
    assert submits(core.take_actions()) == [("j1", "b"), ("j2", "b")]
    # The lost backend may still hold j1: it is deleted there when it is back.
    core.backend_up("a")
    assert act.DeleteOwed("a", ("j1",)) in core.take_actions()


def test_running_job_with_retry_goes_back_to_the_line() -> None:
    core = fleet("a", prefetch=0)
    core.submit("j", caller="c", needs=SD, retry_on_loss=True)
    core.submitted("j")
    core.started("j")
    core.take_actions()
    core.backend_lost("a")
    assert core.take_actions() == [act.Requeued("j", "a")]
    assert core.tickets["j"].phase is Phase.WAITING


def test_an_idle_backend_takes_back_a_prompt_waiting_behind_a_long_job() -> None:
    core = fleet("a", "b", prefetch=1)
    for n in range(3):
        core.submit(f"j{n}", caller="c", needs=SD)
    handed = submits(core.take_actions())
    assert handed == [("j0", "a"), ("j1", "b"), ("j2", "a")]
    for job, _ in handed:
        core.submitted(job)
    core.started("j0")  # long
    core.started("j1")
    core.finished("j1")  # b is idle, nothing in the line, j2 waits behind j0 on a
    actions = core.take_actions()
    assert act.Withdraw("j2", "a", 1) in actions
    core.withdrawn("j2")
    assert submits(core.take_actions()) == [("j2", "b")]


def test_submission_not_sent_comes_back_first() -> None:
    core = fleet("a", "b", prefetch=0)
    core.submit("j0", caller="c", needs=SD)
    core.submit("j1", caller="c", needs=SD)
    core.submit("j2", caller="c", needs=SD)
    core.take_actions()
    core.submit_failed("j0", refused=False)
    assert core.position("j0") == 1
    assert not core.backends["a"].up


def test_needs_of_a_graph() -> None:
    needs = needs_of(
        {
            "1": {"class_type": "Loader", "inputs": {"ckpt_name": "sd.safetensors"}},
            "2": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 3}},
        }
    )
    assert needs.classes == {"Loader", "KSampler"}
    assert inventory("sd.safetensors").satisfies(needs)
    assert not inventory("xl.safetensors").satisfies(needs)


# -- random interleavings ---------------------------------------------------------


@dataclass
class Comfy:
    """What each simulated ComfyUI holds: its queue and the one prompt it runs."""

    pending: list[str] = field(default_factory=list)
    running: str | None = None


class Harness:
    """Runs the core's actions against simulated backends and checks every rule."""

    def __init__(self, urls: list[str], prefetch: int) -> None:
        self.core = Scheduler(prefetch=prefetch)
        self.comfy = {u: Comfy() for u in urls}
        self.alive = set(urls)
        for url in urls:
            self.core.add_backend(url)
            self.core.backend_up(url, inventory("sd.safetensors", "xl.safetensors"))
        self.sends: Counter[str] = Counter()
        self.requeues: Counter[str] = Counter()
        self.ended: set[str] = set()
        # Submissions and withdrawals not yet answered (job, backend, attempt):
        # an old one may still be answered after the job was handed out again.
        self.in_flight: list[tuple[str, str, int]] = []
        self.withdrawals: list[tuple[str, str, int]] = []
        self.jobs: list[str] = []
        self.last_phase: dict[str, Phase] = {}

    def drain(self) -> None:
        while actions := self.core.take_actions():
            self._run(actions)
        self.check()

    def _run(self, actions: list[act.Action]) -> None:
        for action in actions:
            match action:
                case act.Submit(job_id, backend, attempt):
                    assert job_id not in self.ended, "a finished job was submitted"
                    assert self.sends[job_id] <= self.requeues[job_id], "submitted twice"
                    self.sends[job_id] += 1
                    self.in_flight.append((job_id, backend, attempt))
                case act.Withdraw(job_id, backend, attempt):
                    assert self.core.tickets[job_id].backend == backend, "not the job's prompt"
                    self.withdrawals.append((job_id, backend, attempt))
                case act.Interrupt(job_id, backend):
                    assert self.core.tickets[job_id].backend == backend, "not the job's prompt"
                case act.Requeued(job_id, _):
                    self.requeues[job_id] += 1
                case act.Cancelled(job_id) | act.Lost(job_id, _):
                    assert job_id not in self.ended
                    self.ended.add(job_id)
                case act.DeleteOwed(backend, job_ids):
                    comfy = self.comfy[backend]
                    comfy.pending = [j for j in comfy.pending if j not in job_ids]
                    self.core.deletes_done(backend, job_ids)

    def check(self) -> None:
        core = self.core
        order = [core.position(j) for j in core.line.order()]
        assert order == list(range(1, len(order) + 1))
        core.reposition()
        assert [core.position(j) for j in core.line.order()] == order
        limit = 1 + core.prefetch
        for slot in core.backends.values():
            assert slot.load <= limit
            if slot.up and slot.inventory is not None and slot.load < limit:
                assert not any(core._fits(j, slot) for j in core.line.order()), (
                    "a job waits while a free backend could run it"
                )
        for job_id, ticket in core.tickets.items():
            previous = self.last_phase.get(job_id)
            if previous is Phase.RELEASED:
                assert ticket.phase is Phase.RELEASED, "a released job came back"
            self.last_phase[job_id] = ticket.phase

    # -- events the environment can produce --

    def submit(self, caller: int, xl: bool, high: bool, retry: bool) -> None:
        job_id = f"j{len(self.jobs)}"
        self.jobs.append(job_id)
        self.core.submit(
            job_id, caller=f"c{caller}", needs=XL if xl else SD, high=high, retry_on_loss=retry
        )

    def answer_submit(self, index: int, ok: bool) -> None:
        if not self.in_flight:
            return
        job_id, backend, attempt = self.in_flight.pop(index % len(self.in_flight))
        if ok and backend in self.alive:
            self.comfy[backend].pending.append(job_id)
            self.core.submitted(job_id, attempt)
        else:
            self.core.submit_failed(job_id, attempt, refused=False)
            if backend in self.alive:
                self.core.backend_up(backend)

    def comfy_step(self, index: int) -> None:
        """One backend's ComfyUI starts its next prompt or finishes the running one."""
        url = sorted(self.comfy)[index % len(self.comfy)]
        if url not in self.alive:
            return
        comfy = self.comfy[url]
        if comfy.running is not None:
            job_id, comfy.running = comfy.running, None
            self.core.finished(job_id)
            self.ended.add(job_id)
        elif comfy.pending:
            comfy.running = comfy.pending.pop(0)
            self.core.started(comfy.running)

    def answer_withdraw(self, index: int) -> None:
        if not self.withdrawals:
            return
        job_id, backend, attempt = self.withdrawals.pop(index % len(self.withdrawals))
        comfy = self.comfy[backend]
        if job_id in comfy.pending:
            comfy.pending.remove(job_id)
            self.core.withdrawn(job_id, attempt)
        else:
            self.core.withdraw_failed(job_id, attempt)

    def cancel(self, index: int) -> None:
        if self.jobs:
            self.core.cancel(self.jobs[index % len(self.jobs)])

    def kill(self, index: int) -> None:
        url = sorted(self.comfy)[index % len(self.comfy)]
        if url in self.alive:
            self.alive.discard(url)
            self.comfy[url] = Comfy()  # a restart forgets everything
            self.core.backend_down(url)
            self.core.backend_lost(url)
            for entry in [e for e in self.in_flight if e[1] == url]:
                self.in_flight.remove(entry)
                self.core.submit_failed(entry[0], entry[2], refused=False)
            for entry in [e for e in self.withdrawals if e[1] == url]:
                self.withdrawals.remove(entry)
                self.core.withdraw_failed(entry[0], entry[2])

    def revive(self, index: int) -> None:
        url = sorted(self.comfy)[index % len(self.comfy)]
        if url not in self.alive:
            self.alive.add(url)
            self.core.backend_up(url, inventory("sd.safetensors", "xl.safetensors"))


EVENTS = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 2), st.booleans(), st.booleans(), st.booleans()),
    st.tuples(st.just("answer_submit"), st.integers(0, 50), st.booleans()),
    st.tuples(st.just("comfy_step"), st.integers(0, 50)),
    st.tuples(st.just("comfy_step"), st.integers(0, 50)),
    st.tuples(st.just("answer_withdraw"), st.integers(0, 50)),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("kill"), st.integers(0, 50)),
    st.tuples(st.just("revive"), st.integers(0, 50)),
)


@settings(max_examples=600, deadline=None)
@given(
    backends=st.integers(1, 3),
    prefetch=st.integers(0, 2),
    events=st.lists(EVENTS, max_size=80),
)
def test_random_interleavings_keep_every_rule(
    backends: int, prefetch: int, events: list[tuple[object, ...]]
) -> None:
    harness = Harness([f"http://b{n}" for n in range(backends)], prefetch)
    for name, *args in events:
        getattr(harness, str(name))(*args)
        harness.drain()
    # Run the fleet dry: every job that was neither cancelled nor lost finishes.
    for url in list(harness.comfy):
        harness.revive(sorted(harness.comfy).index(url))
    harness.drain()
    for _ in range(2000):
        busy = any(c.pending or c.running for c in harness.comfy.values())
        if not (busy or harness.in_flight or harness.withdrawals or harness.core.line):
            break
        harness.answer_submit(0, True)
        harness.answer_withdraw(0)
        for n in range(backends):
            harness.comfy_step(n)
        harness.drain()
    for job_id in harness.jobs:
        ticket = harness.core.tickets[job_id]
        assert ticket.phase is Phase.RELEASED, f"{job_id} was left {ticket.phase}"
        assert job_id in harness.ended, f"{job_id} was lost"


@pytest.mark.parametrize("prefetch", [-1])
def test_prefetch_must_not_be_negative(prefetch: int) -> None:
    with pytest.raises(ValueError, match="prefetch"):
        Scheduler(prefetch=prefetch)


def test_a_job_whose_end_went_unheard_stays_to_be_reconciled() -> None:
    core = Scheduler(prefetch=1)
    core.add_backend("a")
    core.adopt("before-restart", caller="c", needs=SD, backend="a", running=True)
    core.backend_up("a", inventory("sd.safetensors"))
    core.submit("new", caller="c", needs=SD)
    assert submits(core.take_actions()) == [("new", "a")]
    core.submitted("new")
    core.started("new")  # ComfyUI moved on: the adopted one ended unheard
    assert core.tickets["before-restart"].phase is Phase.RUNNING
    assert "before-restart" in core.jobs_on("a")
    assert core.backends["a"].load == 1
    core.prompt_missing("before-restart")
    assert core.take_actions() == [act.Lost("before-restart", "a", True)]


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "high", "back", "take"]), st.integers(0, 3)),
        max_size=60,
    )
)
def test_the_line_hands_jobs_out_in_the_order_it_reports(
    steps: list[tuple[str, int]],
) -> None:
    line = WaitingLine()
    taken: list[tuple[str, str]] = []
    for n, (step, caller) in enumerate(steps):
        name = f"c{caller}"
        if step == "take":
            job = line.take(lambda _: True)
            if job is not None:
                taken.append((job, name))
        elif step == "back" and taken:
            job, owner = taken.pop()
            line.put_back(job, owner)
        else:
            line.add(f"j{n}", name, high=step == "high")
    expected = list(line.order())
    assert [line.position(j) for j in expected] == list(range(1, len(expected) + 1))
    copy = deepcopy(line)
    assert [copy.take(lambda _: True) for _ in expected] == expected


def test_an_outcome_about_an_earlier_hand_over_changes_nothing() -> None:
    core = fleet("a", "b", prefetch=0)
    core.submit("j", caller="c", needs=SD)
    assert core.take_actions() == [act.Submit("j", "a", 1)]
    core.backend_down("a")
    core.backend_lost("a")  # handed out again, to b, while a's answer is still due
    assert act.Submit("j", "b", 2) in core.take_actions()
    core.submit_failed("j", 1, refused=False)  # a's late answer
    assert core.backends["b"].up
    assert core.tickets["j"].phase is Phase.SUBMITTING
    core.submitted("j", 2)
    assert core.tickets["j"].phase is Phase.PENDING
