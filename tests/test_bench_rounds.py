"""The bench pools a level's rounds: events/s over the rounds' windows, each round's own rate
and ratio kept (bench/figures.py, bench/report.py)."""

from __future__ import annotations

import pytest

from bench.figures import Cpu, level_figures
from bench.load import LevelRun, Sample, Walk
from bench.redisbox import Snapshot, usage
from bench.report import round_ratios


def _run(start: float, window: float, answers: list[float], late: int = 0) -> LevelRun:
    """A round with one answered sample per time in `answers` (seconds after `start`), and
    `late` samples answered after the window closed."""
    walk = Walk(user="U1")
    for t in answers:
        walk.samples.append(Sample(start + t - 0.001, 0.001, 200, 0.001, start + t, ("text",)))
    for _ in range(late):
        walk.samples.append(Sample(start + window, 0.001, 200, 0.5, start + window + 0.5))
    return LevelRun(residents=2, started=start, stop_at=start + window,
                    ended=start + window + 1, walks=[walk])


def test_rounds_pool_their_windows_and_keep_each_rate() -> None:
    fast = _run(0.0, 2.0, [0.1 * i for i in range(1, 20)], late=3)   # 19 in 2 s
    slow = _run(10.0, 4.0, [0.5 * i for i in range(1, 8)])             # 7 in 4 s
    fig = level_figures("tsunagu", [fast, slow], Cpu(server=0.6, redis=None, bench=0.2))
    assert fig.rounds_per_s == pytest.approx([9.5, 1.75])
    assert fig.events_per_s == pytest.approx(26 / 6)   # not the mean of the two rates
    assert fig.sent == 29 and fig.answered == 29 and fig.walks == 2
    assert fig.cpu_ms_per_event == pytest.approx(600 / 29)
    assert fig.machine_cpu_ms == pytest.approx(800 / 29)  # server and load (no Redis known)
    with_redis = level_figures("tsunagu", [fast], Cpu(server=0.6, redis=0.3, bench=0.2))
    assert with_redis.machine_cpu_ms == pytest.approx(1100 / 22)
    assert fig.wall_s == pytest.approx(3 + 5)


def test_round_ratios_pair_rounds_in_order() -> None:
    ours = level_figures("tsunagu", [_run(0, 1, [0.1] * 7), _run(5, 1, [0.1] * 9)],
                         Cpu(0.1, None, 0.1))
    base = level_figures("echo", [_run(2, 1, [0.1] * 10), _run(3, 1, [0.1] * 10)],
                         Cpu(0.1, None, 0.1))
    assert round_ratios(ours, base) == "0.70× / 0.90×"
    single = level_figures("tsunagu", [_run(0, 1, [0.1])], Cpu(0.1, None, 0.1))
    assert round_ratios(single, base) == "–"


def test_redis_usage_keeps_the_replicas_part() -> None:
    """A cluster's Redis CPU is summed over its nodes; the replicas' share is kept apart."""

    class Target:
        cluster = object()
        own_id = -1

        def nodes(self) -> list:
            return [1, 2]

    before = Snapshot(at=0.0, calls={"get": 1}, reads=10, connections=0, cpu=1.0, clients=[],
                      replica_cpu=0.25)
    after = Snapshot(at=1.0, calls={"get": 5}, reads=20, connections=0, cpu=2.0, clients=[],
                     replica_cpu=0.5)
    use = usage(Target(), before, after, [])  # type: ignore[arg-type]
    assert use.cpu_s == pytest.approx(1.0) and use.replica_cpu_s == pytest.approx(0.25)
    assert use.calls == {"get": 4} and use.round_trips == 8  # less one INFO per node
