"""The one-line cycle summary operators read in the reconciler's log."""

from __future__ import annotations

import pytest

from aws_reconciler.reconciler.result import CycleStats


@pytest.mark.parametrize(
    ("stats", "line"),
    [
        (CycleStats(), "launched 0, finished 0, failed 0, revoked 0, stopped 0"),
        (CycleStats(launched=3, finished=1), "launched 3, finished 1, failed 0, revoked 0, stopped 0"),
        (
            CycleStats(failed=2, throttled=4, deferred=10),
            "launched 0, finished 0, failed 2, revoked 0, stopped 0, throttled 4, deferred 10",
        ),
    ],
)
def test_summary_shows_the_main_counts_and_the_others_when_not_zero(stats: CycleStats, line: str) -> None:
    assert stats.summary() == line
