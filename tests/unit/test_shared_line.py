"""What a replica takes from the line it shares with other replicas, and how
its own scheduler core hands backends and jobs over: no I/O."""

from __future__ import annotations

import itertools
from collections import Counter

from comfyui_grpc.backends.inventory import Inventory, Needs
from comfyui_grpc.scheduler import Phase, Scheduler
from comfyui_grpc.scheduler import actions as act
from comfyui_grpc.scheduler.shared_line import WaitingRow, choose, next_tags
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


class SharedLine:
    """The database's side of the shared line, in memory: tags given at
    enqueue (:func:`next_tags`), claims through :func:`choose`."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.finish: dict[str, float] = {}
        self.rows: dict[str, WaitingRow] = {}
        self.seq = itertools.count()

    def enqueue(self, job_id: str, caller: str, needs: Needs = SD, high: bool = False) -> None:
        start, finish = next_tags(self.clock, self.finish.get(caller))
        self.finish[caller] = finish
        self.rows[job_id] = WaitingRow(job_id, caller, start, high, next(self.seq), needs)

    def claim(self, runnable: set[Needs] | None = None, count: int = 1) -> list[str]:
        choice = choose(
            list(self.rows.values()),
            lambda needs: runnable is None or needs in runnable,
            count,
        )
        for job_id, tag in choice.retags:
            row = self.rows[job_id]
            self.rows[job_id] = WaitingRow(
                row.job_id, row.caller, tag, row.high, row.seq, row.needs
            )
        for pick in choice.picks:
            del self.rows[pick.job_id]
            self.clock = max(self.clock, pick.tag)
        return [p.job_id for p in choice.picks]


def caller_of(job_id: str) -> str:
    return job_id.split("-")[0]


def test_callers_take_turns_whatever_they_queued() -> None:
    line = SharedLine()
    for n in range(100):
        line.enqueue(f"a-{n}", "a")
    line.enqueue("b-0", "b")
    line.enqueue("b-1", "b")
    taken = [line.claim()[0] for _ in range(6)]
    # b's first job goes at once (b joins at the clock), then one each.
    assert [caller_of(j) for j in taken][:5] == ["a", "b", "a", "b", "a"]


def test_an_idle_caller_banks_no_turns() -> None:
    line = SharedLine()
    for n in range(10):
        line.enqueue(f"a-{n}", "a")
    for _ in range(8):
        line.claim()
    for n in range(5):
        line.enqueue(f"b-{n}", "b")
    line.enqueue("a-new", "a")
    taken = [line.claim()[0] for _ in range(5)]
    # b joins at the clock: it alternates with a instead of taking 8 turns first.
    assert [caller_of(j) for j in taken] == ["b", "a", "b", "a", "b"]


def test_a_high_job_takes_its_callers_turn_not_anothers() -> None:
    line = SharedLine()
    for n in range(3):
        line.enqueue(f"a-{n}", "a")
        line.enqueue(f"b-{n}", "b")
    line.enqueue("b-urgent", "b", high=True)
    line.enqueue("a-urgent", "a", high=True)
    taken = [line.claim()[0] for _ in range(8)]
    assert taken[:2] == ["a-urgent", "b-urgent"]
    assert [caller_of(j) for j in taken] == ["a", "b"] * 4
    assert sorted(taken) == sorted(
        [*(f"{c}-{n}" for c in "ab" for n in range(3)), "a-urgent", "b-urgent"]
    )


def test_only_what_the_free_backends_can_run_is_taken() -> None:
    line = SharedLine()
    line.enqueue("a-xl", "a", needs=XL)
    line.enqueue("b-sd", "b", needs=SD)
    assert line.claim({SD}, count=2) == ["b-sd"]
    assert list(line.rows) == ["a-xl"]
    assert line.claim({SD}) == []


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.booleans(), st.sampled_from([SD, XL])),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=40),
)
def test_every_job_is_taken_once_and_callers_share(
    jobs: list[tuple[str, bool, Needs]], batches: list[int]
) -> None:
    """Claims by replicas in any batch sizes: each job exactly once, and while
    two callers both wait, neither gets two turns more than the other."""
    line = SharedLine()
    for n, (caller, high, needs) in enumerate(jobs):
        line.enqueue(f"{caller}-{n}", caller, needs, high)
    taken: list[str] = []
    for size in itertools.cycle(batches):
        got = line.claim(count=size)
        if not got:
            break
        taken += got
    assert sorted(taken) == sorted(f"{c}-{n}" for n, (c, _, _) in enumerate(jobs))
    waiting = Counter(caller_of(j) for j in taken)
    served: Counter[str] = Counter()
    for job_id in taken:
        served[caller_of(job_id)] += 1
        busy = [c for c in waiting if served[c] < waiting[c]]
        for x, y in itertools.combinations(busy, 2):
            assert abs(served[x] - served[y]) <= 2, (taken, x, y)


# -- the core's side: room, giving jobs back, disowning a backend --------------------


def core_with(*urls: str, prefetch: int = 1) -> Scheduler:
    core = Scheduler(prefetch=prefetch)
    for url in urls:
        core.add_backend(url)
        core.backend_up(url, inventory("sd.safetensors"))
    return core


def test_room_counts_what_the_backends_could_take_beyond_the_line() -> None:
    core = core_with("a", "b", prefetch=1)
    assert len(core.room()) == 4
    core.submit("j0", caller="c", needs=SD)
    assert len(core.room()) == 3
    core.backend_down("b")
    assert len(core.room()) == 1


def test_jobs_left_in_the_line_are_given_back_whole() -> None:
    core = core_with("a", prefetch=0)
    for n in range(3):
        core.submit(f"j{n}", caller="c", needs=SD)
    assert [a.job_id for a in core.take_actions() if isinstance(a, act.Submit)] == ["j0"]
    assert core.give_back() == ["j1", "j2"]
    assert set(core.tickets) == {"j0"}
    assert len(core.line) == 0
    assert core.give_back() == []


def test_a_disowned_backend_takes_its_jobs_along_and_emits_nothing() -> None:
    core = core_with("a", "b", prefetch=1)
    for n in range(4):
        core.submit(f"j{n}", caller="c", needs=SD)
    for a in core.take_actions():
        assert isinstance(a, act.Submit)
        core.submitted(a.job_id, a.attempt)
    on_a = core.jobs_on("a")
    core.started(on_a[0])
    core.take_actions()
    assert sorted(core.disown("a")) == sorted(on_a)
    assert core.take_actions() == []
    assert "a" not in core.backends
    assert all(t.backend == "b" for t in core.tickets.values())
    assert all(t.phase is Phase.PENDING for t in core.tickets.values())


def test_a_backend_with_deletes_owed_asks_for_nothing_until_they_are_made() -> None:
    core = core_with("a", prefetch=0)
    core.submit("j0", caller="c", needs=SD)
    [submit] = core.take_actions()
    assert isinstance(submit, act.Submit)
    core.submitted("j0", submit.attempt)
    core.backend_lost("a")  # j0 may still sit in a's queue: deleted when a is back
    core.give_back()
    core.backend_up("a")
    assert any(isinstance(a, act.DeleteOwed) for a in core.take_actions())
    assert core.room() == []
    core.deletes_done("a", ("j0",))
    assert len(core.room()) == 1


def test_deletes_owed_by_an_earlier_owner_are_made_when_the_backend_is_up() -> None:
    core = Scheduler(prefetch=0)
    core.add_backend("a")
    core.owe("a", {"j7"})
    assert core.take_actions() == []  # not up yet
    core.backend_up("a", inventory("sd.safetensors"))
    assert core.take_actions() == [act.DeleteOwed("a", ("j7",))]
    assert core.room() == []
    core.deletes_done("a", ("j7",))
    assert core.owed_by("a") == set()
    assert len(core.room()) == 1
