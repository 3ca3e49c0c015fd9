"""The bench's level where every LINE call takes `--line-ms` (bench/__main__.py,
bench/report.py): its option, its section and target in results.md, and the thread bound it
states. Figures are made up; nothing here is timed."""

from __future__ import annotations

import pytest

from bench.__main__ import parse_args
from bench.figures import Cpu, level_figures
from bench.load import LevelRun, Sample, Walk
from bench.report import BASE, OURS, Run, document, line_bounds, targets

SETTINGS = {"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "8", "LINE_DISPATCH_THREADS": "16",
            "LOG_LEVEL": "INFO", "hang_gap_s": "0.2"}


def _figures(system: str, answers: int, webhook_s: float, n: int = 50):
    """A level of two 1-second rounds with `answers` answers in each."""
    runs = []
    for r in range(2):
        walk = Walk(user=f"U{r}")
        for i in range(answers):
            at = 10.0 * r + (i + 1) / (answers + 1)
            walk.samples.append(Sample(at - 0.1, webhook_s, 200, 0.1, at, ("text",)))
        runs.append(LevelRun(residents=n, started=10.0 * r, stop_at=10.0 * r + 1,
                             ended=10.0 * r + 1.5, walks=[walk]))
    return level_figures(system, runs, Cpu(0.1, None, 0.1))


def _run(**kw) -> Run:
    fields = dict(ours={}, base={}, hang=[], paced={}, think_s=1.0, redis_source="test",
                  redis_version="7", calibration=(0, 0), idle=(0.0, 0.0, ""),
                  settings=SETTINGS, duration_s=12.0, notes=[], rounds=2)
    return Run(**{**fields, **kw})


def test_line_ms_defaults_to_100_and_0_skips() -> None:
    assert parse_args([]).line_ms == 100.0
    assert parse_args(["--line-ms", "0"]).line_ms == 0.0
    assert parse_args(["--line-ms", "150"]).line_ms == 150.0
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(SystemExit):
            parse_args(["--line-ms", bad])


def test_the_bound_is_threads_per_process_over_the_latency() -> None:
    assert line_bounds(_run(line_ms=100.0)) == pytest.approx((320.0, 160.0))
    assert line_bounds(_run(line_ms=0.0)) is None
    assert line_bounds(_run(line_ms=100.0, settings={})) is None


def test_the_level_has_its_own_section_and_target() -> None:
    slow = {OURS: _figures(OURS, 27, 0.003), BASE: _figures(BASE, 15, 0.1)}
    run = _run(slow_line=slow, line_ms=100.0)
    text = document(run, {"commit": "abc"})
    assert "## N = 50 while LINE takes 100 ms per call" in text
    section = text.split("## N = 50 while LINE takes 100 ms per call", 1)[1]
    assert "| events/s | 27.0 | 15.0 | 1.80× |" in section
    assert "at most 320 events/s" in section and "at most 160 events/s" in section
    (name, met, figure), = [t for t in targets(run) if "while LINE takes" in t[0]]
    assert met is True and name.startswith("throughput ≥ 0.7× the echo baseline at N=50")
    assert "27 vs 15 events/s = 1.80×" in figure and "webhook p50 3.0 vs 100.0 ms" in figure
    assert "- **MET** — throughput ≥ 0.7× the echo baseline at N=50 while LINE takes" in text


def test_a_skipped_level_is_said_not_measured_and_has_no_section() -> None:
    text = document(_run(line_ms=100.0), {"commit": "abc"})
    assert "while LINE takes 100 ms per call" in text and "## N = 50 while LINE" not in text
    assert "**NOT MEASURED** — throughput ≥ 0.7× the echo baseline at N=50 while LINE" in text
    assert not [t for t in targets(_run(line_ms=0.0)) if "while LINE takes" in t[0]]


def test_the_method_names_the_slow_level_only_when_it_ran() -> None:
    ran = document(_run(line_ms=100.0), {"commit": "abc"})
    skipped = document(_run(line_ms=0.0), {"commit": "abc"})
    assert "- **LINE takes 100 ms per call**" in ran
    assert "- **LINE takes" not in skipped
    assert "- **LINE hangs**" in ran and "- **LINE hangs**" in skipped
