"""The loop's pacing: a storm of wake-ups (a NOTIFY per queueing scheduler loop, events arriving
ten at a time) starts one cycle per coalescing window, not one per wake-up."""

from __future__ import annotations

from aws_reconciler.reconciler.manager import Manager


class StormWaker:
    """Every wait ends at once, woken."""

    def __init__(self) -> None:
        self.cleared = 0

    def wait(self, timeout: float) -> bool:
        return True

    def wake(self) -> None:
        pass

    def clear(self) -> None:
        self.cleared += 1

    def close(self) -> None:
        pass


class Leading:
    """An elector that always leads."""

    on_acquired = None
    retry_period = 1.0
    last_error = None
    current_holder = "me"

    def is_leader(self) -> bool:
        return True

    def start(self) -> None:
        pass

    def stop(self, *, release: bool) -> None:
        pass


def test_a_storm_of_wake_ups_starts_one_cycle_per_coalescing_window() -> None:
    now = [0.0]
    pauses: list[float] = []
    waker = StormWaker()

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds
        if len(pauses) == 5:
            manager.request_stop()

    manager = Manager(
        engines=[],
        elector=Leading(),  # type: ignore[arg-type]
        waker=waker,  # type: ignore[arg-type]
        interval=5.0,
        backoff_base=1.0,
        backoff_max=10.0,
        monotonic=lambda: now[0],
        pause=pause,
    )
    assert manager.run() == 0
    assert manager.coalesce == 0.5
    assert pauses == [0.5] * 5
    assert manager.health.cycles == 5 and waker.cleared == 5
