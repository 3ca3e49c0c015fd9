"""The command line: chat in a terminal, validate content, draw the flow, evaluate safety and
triage, explain what a text is understood as."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from bot.replies import Cards, Question, Reply, Text

REPO = Path(__file__).resolve().parents[1]


def render_text(replies: list[Reply], out: TextIO) -> Question | None:
    """Print replies for a terminal; return the question so numbers can pick its choices."""
    question = None
    for r in replies:
        if isinstance(r, Text):
            print(("!! " if r.urgent else "") + r.text, file=out)
        elif isinstance(r, Cards):
            print(f"== {r.title} ==", file=out)
            for c in r.cards:
                parts = [c.name, c.phone or "", c.status or "", c.hours or ""]
                print("  * " + " | ".join(p for p in parts if p), file=out)
                print(f"    {c.summary}", file=out)
        elif isinstance(r, Question):
            question = r
            print(r.text, file=out)
            for i, choice in enumerate(r.choices, 1):
                print(f"  {i}. {choice.label}", file=out)
    return question


def cmd_chat(args: argparse.Namespace) -> int:
    from bot.engine import Incoming
    from bot.pack import load_pack
    from bot.service import utcnow
    from bot.wiring import build_engine

    engine = build_engine(load_pack(args.pack))
    session = None
    step = engine.step(None, Incoming(kind="event", value="first_contact"), utcnow())
    session, question = step.session, render_text(step.replies, sys.stdout)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if question and line.isdigit() and 1 <= int(line) <= len(question.choices):
            choice = question.choices[int(line) - 1]
            incoming = Incoming(kind="tap", value=choice.value, state=question.state)
        else:
            incoming = Incoming(kind="text", value=line)
        step = engine.step(session, incoming, utcnow())
        session = step.session
        print("", file=sys.stdout)
        question = render_text(step.replies, sys.stdout) or question
        sys.stdout.flush()
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """One pack, or every pack under bot/content/ (and the common files they share)."""
    from bot.pack.loader import pack_names
    from bot.validate import validate

    failed = 0
    for name in [args.pack] if args.pack else pack_names():
        errors = validate(name)
        for err in errors:
            print(f"{name}: {err}" if not args.pack else err)
        if errors:
            failed += 1
            print(f"{len(errors)} problem(s) in content pack {name!r}", file=sys.stderr)
        else:
            print(f"content pack {name!r} and flows: OK")
    return 1 if failed else 0


def cmd_windows(args: argparse.Namespace) -> int:
    from bot.pack import load_pack
    from bot.pack.audit import report

    if not args.check:
        print("usage: python -m bot windows --check [--pack PACK]", file=sys.stderr)
        return 2
    sys.stdout.write(report(load_pack(args.pack)))
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
    from bot.flows import load_flows
    from bot.graph import mermaid
    from bot.pack import load_pack

    pack = load_pack(args.pack)
    text = "".join(mermaid(f, pack, args.lang) for f in load_flows().values())
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


SAFETY_SETS = [REPO / "tests" / "data" / "safety_eval.yaml",
               REPO / "tests" / "data" / "safety_eval_fresh.yaml"]


def cmd_eval_safety(args: argparse.Namespace) -> int:
    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector, evaluate

    detector = CrisisDetector.from_file(crisis_file(args.pack))
    paths = [Path(p) for p in args.eval_set] if args.eval_set else \
        [p for p in SAFETY_SETS if p.exists()]
    report = evaluate(detector, *paths)
    print(report.format())
    return 0 if report.recall == 1.0 and report.false_positive_rate <= 0.05 else 1


def cmd_eval_triage(args: argparse.Namespace) -> int:
    from bot.pack import load_pack
    from bot.service import utcnow
    from bot.triage_eval import evaluate_triage
    from bot.wiring import build_engine

    engine = build_engine(load_pack(args.pack))
    report = evaluate_triage(engine, Path(args.eval_set), utcnow())
    print(report.format(verbose=args.verbose))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from bot.pack import load_pack
    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector
    from bot.triage import explain

    pack = load_pack(args.pack)
    detector = CrisisDetector.from_file(crisis_file(args.pack))
    for text in args.text:
        print(explain(text, pack, detector, args.lang))
        print(_soft_explain(text))
    return 0


def _soft_explain(text: str) -> str:
    """The soft tier's view of a text (bot/crisis_model.py): score, threshold, top features."""
    from bot import crisis_model
    from bot.language import analyze
    from bot.pack import PackError

    try:
        model = crisis_model.load()
    except PackError as exc:
        return f"soft tier: {exc}"
    found = analyze(text)
    score = model.score(found)
    top = ", ".join(f"{f[1:]!r}({f[0]}) {w:+.2f}" for f, w in model.top(found))
    return (f"soft tier: score {score:.3f}, threshold {model.threshold:.2f} -> "
            f"{'flags' if score >= model.threshold else 'quiet'}\n  top features: {top}")


def cmd_train_crisis_model(args: argparse.Namespace) -> int:
    """Train the soft tier's weights (or, with --score, measure rules + model on files)."""
    from bot import crisis_model

    if args.score:
        return _score_files([Path(p) for p in args.score], args.pack)
    trained = crisis_model.train(progress=print)
    print(trained.table)
    if args.dry_run:
        return 0
    crisis_model.write(trained.model)
    size = crisis_model.MODEL_FILE.stat().st_size
    print(f"wrote {crisis_model.MODEL_FILE} ({len(trained.model['weights'])} weights, "
          f"{size // 1024} KB, threshold {trained.model['threshold']:.2f})")
    return 0


def _score_files(paths: list[Path], pack: str) -> int:
    """Risk lines caught by the rules or the model at its threshold; ordinary lines flagged."""
    from bot import crisis_model
    from bot.pack import PackError
    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector

    try:
        model = crisis_model.load()
    except PackError as exc:
        print(exc, file=sys.stderr)
        return 1
    detector = CrisisDetector.from_file(crisis_file(pack))
    share = crisis_model.share
    for path in paths:
        c = crisis_model.rules_and_model(path, detector, model)
        print(f"{path.name} (threshold {model.threshold:.2f})\n"
              f"  rules only:    recall {share(c.risk_rules, c.risk)}, "
              f"false positives {share(c.ordinary_rules, c.ordinary)}\n"
              f"  rules + model: recall {share(c.risk_either, c.risk)}, "
              f"false positives {share(c.ordinary_either, c.ordinary)}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from bot import logs
    from bot.config import Settings, SettingsError
    from bot.wiring import run_worker

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"tsunagu: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if settings.tenants_file:
        import os

        from bot.tenants import run_city_workers

        try:
            return run_city_workers(settings, os.environ, run_worker)
        except SettingsError as exc:
            print(f"tsunagu: configuration error: {exc}", file=sys.stderr)
            return 2
    return run_worker(settings)


def cmd_stats(args: argparse.Namespace) -> int:
    from datetime import date, timedelta

    from bot import figures
    from bot.config import Settings, SettingsError
    from bot.pack import load_pack
    from bot.wiring import redis_client

    try:
        settings = Settings.from_env()
        if args.city:
            from bot.tenants import city_view

            settings = city_view(settings, args.city)
    except SettingsError as exc:
        print(f"tsunagu: configuration error: {exc}", file=sys.stderr)
        return 2
    if settings.embedded_redis:
        print("REDIS_URL: required for `python -m bot stats` (the figures live in Redis)",
              file=sys.stderr)
        return 2
    try:
        until = date.fromisoformat(args.until) if args.until else figures.today()
        since = date.fromisoformat(args.since) if args.since else until - timedelta(days=30)
    except ValueError as exc:
        print(f"--since/--until: not a date (YYYY-MM-DD): {exc}", file=sys.stderr)
        return 2
    if since > until or (until - since).days > figures.KEEP_DAYS:
        print(f"--since/--until: at most {figures.KEEP_DAYS} days, since <= until",
              file=sys.stderr)
        return 2
    rows = figures.Figures(redis_client(settings), settings.key_prefix).read(since, until)
    small = (load_pack(settings.municipality).msg("figures.small_cell", args.lang)
             if args.publish else None)
    write = {"csv": figures.to_csv, "json": figures.to_json, "table": figures.to_table}
    sys.stdout.write(write[args.format](rows, small))
    return 0


def main(argv: list[str] | None = None) -> int:
    from bot.pack.loader import default_pack_name

    parser = argparse.ArgumentParser(prog="python -m bot", description="tsunagu")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("chat", help="talk to the bot in this terminal; numbers pick choices")
    p.add_argument("--pack", default=default_pack_name())
    p.set_defaults(func=cmd_chat)
    p = sub.add_parser("validate", help="check a content pack and the flows; non-zero on error")
    p.add_argument("pack", nargs="?", help="a pack name or folder (default: every pack)")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("windows", help="list windows and lines with source and confirmed date")
    p.add_argument("--check", action="store_true",
                   help="every window and line, oldest confirmation first")
    p.add_argument("--pack", default=default_pack_name())
    p.set_defaults(func=cmd_windows)
    p = sub.add_parser("graph", help="write the flows as a Mermaid diagram")
    p.add_argument("--pack", default=default_pack_name())
    p.add_argument("--lang", default="ja", choices=["ja", "en"])
    p.add_argument("--out", help="file to write (default: standard output)")
    p.set_defaults(func=cmd_graph)
    p = sub.add_parser("eval-safety", help="crisis detection recall and false positives")
    p.add_argument("--pack", default=default_pack_name())
    p.add_argument("--eval-set", "--data", dest="eval_set", action="append",
                   help="evaluation file (repeatable; default: tests/data/safety_eval*.yaml; "
                        "tests/data/safety_holdout.yaml is the held-out set)")
    p.set_defaults(func=cmd_eval_safety)
    p = sub.add_parser("eval-triage", help="free text → category: accuracy, precision/recall")
    p.add_argument("--pack", default=default_pack_name())
    p.add_argument("--eval-set", "--data", dest="eval_set",
                   default=str(REPO / "tests" / "data" / "triage_eval.yaml"),
                   help="evaluation file (default: tests/data/triage_eval.yaml; "
                        "tests/data/triage_holdout*.yaml are the held-out sets)")
    p.add_argument("-v", "--verbose", action="store_true", help="list every miss")
    p.set_defaults(func=cmd_eval_triage)
    p = sub.add_parser("explain", help="what the bot understands of a text, and why")
    p.add_argument("text", nargs="+")
    p.add_argument("--pack", default=default_pack_name())
    p.add_argument("--lang", default="ja", choices=["ja", "en"])
    p.set_defaults(func=cmd_explain)
    p = sub.add_parser("train-crisis-model",
                       help="train the soft tier (bot/content/common/crisis_model.json)")
    p.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    p.add_argument("--score", action="append", metavar="FILE",
                   help="instead: recall and false positives of rules + model on a safety file")
    p.add_argument("--pack", default=default_pack_name())
    p.set_defaults(func=cmd_train_crisis_model)
    p = sub.add_parser("worker", help="deliver handoff cases to staff (Slack, webhook)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("stats", help="the city's anonymous figures (REDIS_URL)")
    p.add_argument("--since", help="first date, YYYY-MM-DD (Asia/Tokyo; default: 30 days "
                   "before --until)")
    p.add_argument("--until", help="last date, YYYY-MM-DD (default: today in Asia/Tokyo)")
    p.add_argument("--format", default="csv", choices=["csv", "json", "table"])
    p.add_argument("--publish", action="store_true",
                   help="show counts below 5 as 'fewer than 5' (for publication)")
    p.add_argument("--lang", default="ja", choices=["ja", "en"],
                   help="language of the small-cell wording")
    p.add_argument("--city", help="with TSUNAGU_TENANTS: the city (its id in the file)")
    p.set_defaults(func=cmd_stats)
    args = parser.parse_args(argv)
    return int(args.func(args))
