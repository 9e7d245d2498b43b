"""benchmarks.peer.run leaves out a pair whose CPU the hypervisor took: which pairs count."""

from __future__ import annotations

from benchmarks.peer.run import Run, steady


def run(steal: float | None) -> Run:
    return Run("x", 100_000.0, 2_000_000, 10.0, 400.0, 5.0, 20.0, steal)


def test_a_pair_counts_only_if_neither_run_had_more_than_the_limit_stolen() -> None:
    assert steady((run(0.4), run(5.0)), 5.0)
    assert not steady((run(0.4), run(5.1)), 5.0)
    assert not steady((run(20.7), run(0.1)), 5.0)
    assert steady((run(20.7), run(0.1)), 100.0)


def test_a_run_that_could_not_read_the_stolen_cpu_counts_as_steady() -> None:
    assert steady((run(None), run(1.0)), 5.0)
    assert not steady((run(None), run(6.0)), 5.0)
