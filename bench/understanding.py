"""`python -m bench.understanding`: the cost of understanding one message, in this process.

Per message: the language analysis (SudachiPy), triage (categories and slots) and the crisis
check — what the engine does with every piece of free text. Run over the sentences of the
triage and safety evaluation sets, several rounds, after a warm-up; prints the mean, median
and 99th percentile per message, and the one-off cost of loading the dictionary and the pack.
Not a test (speed belongs here, not in the suite); the target is ≤ 2 ms a message.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


def _texts() -> list[str]:
    texts = [str(i["text"]) for i in
             yaml.safe_load((DATA / "triage_eval.yaml").read_text(encoding="utf-8"))["items"]]
    for name in ("safety_eval.yaml", "safety_eval_fresh.yaml"):
        path = DATA / name
        if path.exists():
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            texts += [str(r["text"]) for r in data["risk"]]
            texts += [str(o["text"] if isinstance(o, dict) else o) for o in data["ordinary"]]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.understanding")
    parser.add_argument("--pack", default="kyoto")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    from bot import language

    language.warm_up()
    dictionary_s = time.perf_counter() - started
    from bot.pack import load_pack
    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector
    from bot.triage import triage

    started, cpu = time.perf_counter(), time.process_time()
    pack = load_pack(args.pack)
    detector = CrisisDetector.from_file(crisis_file(args.pack))
    load_s, load_cpu = time.perf_counter() - started, time.process_time() - cpu

    texts = _texts()
    for text in texts:  # warm-up: caches, branch predictors, lazy imports
        detector.detect(language.analyze(text))
    costs: list[float] = []
    cpu_started = time.thread_time()
    for _ in range(args.rounds):
        for text in texts:
            t0 = time.perf_counter()
            found = language.analyze(text)
            detector.detect(found)
            triage(found, "ja", pack)
            costs.append(time.perf_counter() - t0)
    cpu_ms = (time.thread_time() - cpu_started) * 1000 / len(costs)
    costs_ms = sorted(c * 1000 for c in costs)
    p99 = costs_ms[int(len(costs_ms) * 0.99) - 1]
    print(f"messages:         {len(texts)} x {args.rounds} rounds")
    print(f"per message:      CPU {cpu_ms:.3f} ms; wall mean {statistics.fmean(costs_ms):.3f} ms, "
          f"median {statistics.median(costs_ms):.3f} ms, p99 {p99:.3f} ms, max "
          f"{costs_ms[-1]:.3f} ms")
    print("  (analysis + crisis check + triage; target <= 2 ms; wall time includes waiting for")
    print("   the CPU when the machine is busy: compare the load average)")
    print(f"dictionary load:  {dictionary_s * 1000:.0f} ms (once per process)")
    print(f"pack + crisis:    {load_s * 1000:.0f} ms wall, {load_cpu * 1000:.0f} ms CPU "
          f"(once per process, at start-up)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
