"""The soft tier (bot/crisis_model.py): its weights are what the trainer makes, its threshold keeps
false positives within bounds, and the engine adds its gentle line beside the normal reply —
once, never instead of the rules' crisis reply, and within LINE's five messages."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from bot import crisis_model
from bot.channels.line_render import render
from bot.engine import Incoming
from bot.language import analyze
from bot.replies import Cards, Question, Text
from tests.conftest import WEEKDAY_MORNING

DATA = Path(__file__).parent / "data"
HOLDOUT_D = DATA / "safety_holdout_d.yaml"

# Our own phrasings (in no training file) that the rules miss and the model catches.
SOFT_JA = ["みんなの前からそっといなくなろうと思ってる", "ここから飛んだら楽になれるかな"]
SOFT_EN = ["I want to stop being me", "I want it all to go quiet"]
ORDINARY = ["明日の天気はどうですか", "家賃の支払いが少し遅れそうです",
            "I would like to know the opening hours"]


@functools.cache
def _retrained() -> crisis_model.Trained:
    return crisis_model.train()


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(crisis_model.MODEL_FILE.read_text(encoding="utf-8"))


def _maybe(step) -> bool:
    return "crisis:maybe" in step.events


# -- the weights are data made by the trainer --------------------------------------------------
# Retraining is 14 cross-validation folds and a final fit: on a loaded 2-core CI machine it can
# take longer than the 120 s every other test gets.
@pytest.mark.timeout(900)
def test_the_model_file_is_what_the_trainer_makes(shipped):
    trained = _retrained().model
    assert shipped["data_sha256"] == trained["data_sha256"], \
        "the training data changed: run python -m bot train-crisis-model"
    assert shipped["threshold"] == trained["threshold"]
    assert shipped["cv"] == trained["cv"]
    assert abs(shipped["bias"] - trained["bias"]) < 1e-3
    a, b = shipped["weights"], trained["weights"]
    for name in a.keys() | b.keys():
        wa, wb = a.get(name, 0.0), b.get(name, 0.0)
        # A weight right at the cut may fall either side of it on another machine.
        assert abs(wa - wb) < 1e-3 or max(abs(wa), abs(wb)) < crisis_model.CUT + 2e-3, name
    assert crisis_model.MODEL_FILE.stat().st_size < 300_000


@pytest.mark.parametrize("name", ["safety_holdout_d.yaml", "safety_holdout_f.yaml",
                                  "triage_holdout_h.yaml"])
def test_the_blind_sets_are_never_trained_on(shipped, name):
    assert name in shipped["excluded"]
    assert name not in shipped["files"]
    assert name not in [f.name for f in crisis_model.training_files()]
    with pytest.raises(ValueError):
        crisis_model.examples([DATA / name])


@pytest.mark.timeout(900)
def test_the_threshold_keeps_false_positives_within_bounds(shipped):
    """Held out by file (each file scored by a model trained without it), as the trainer chose
    it; and, in-sample, with the shipped weights."""
    held = _retrained().held_out
    flagged, total = held["ordinary"]
    assert flagged <= crisis_model.MAX_FP_SAFETY * total, held
    flagged, total = held["triage"]
    assert flagged <= crisis_model.MAX_FP_TRIAGE * total, held
    model = crisis_model.load()
    assert model is not None and model.threshold == shipped["threshold"]
    items = crisis_model.examples(crisis_model.training_files())
    for group, bound in (("ordinary", crisis_model.MAX_FP_SAFETY),
                         ("triage", crisis_model.MAX_FP_TRIAGE)):
        texts = [e.text for e in items if e.group == group]
        assert sum(model.flags(analyze(t)) for t in texts) <= bound * len(texts), group


def test_rules_and_model_on_the_blind_set_d():
    """Set d was measured once, after everything else was fixed (figures in its header)."""
    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector

    detector = CrisisDetector.from_file(crisis_file("kyoto"))
    c = crisis_model.rules_and_model(HOLDOUT_D, detector, crisis_model.load())
    assert c.risk_either >= FLOOR_D * c.risk, c
    assert c.ordinary_either <= FP_CEILING_D * c.ordinary, c


# Measured once, blind: rules + model 91.7% (55/60), false positives 0/60 (rules alone 90.0%).
FLOOR_D = 0.85
FP_CEILING_D = 2 / 60


# -- the engine -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", SOFT_JA + SOFT_EN)
def test_words_the_rules_miss_get_the_gentle_line_and_the_normal_reply(engine, text):
    assert engine.detector.detect(analyze(text)) is None, "the rules catch it: pick another"
    step = engine.step(None, Incoming("text", text), WEEKDAY_MORNING)
    assert _maybe(step), (text, step.events)
    assert not any(e.startswith("crisis:") and e != "crisis:maybe" for e in step.events)
    assert step.session is not None and step.session.crisis is None and step.session.soft
    gentle = engine.pack.msg("crisis.maybe", step.session.lang)
    assert [r for r in step.replies if isinstance(r, Text) and r.text == gentle]
    cards = [r for r in step.replies if isinstance(r, Cards)]
    assert cards and 1 <= len(cards[-1].cards) <= 2 and all(c.tel for c in cards[-1].cards)
    assert not any(getattr(r, "urgent", False) for r in step.replies)  # not the takeover
    # The normal reply goes on: its question and choices close the reply.
    question = step.replies[-1]
    assert isinstance(question, Question) and question.choices
    assert step.session.lang == ("en" if text in SOFT_EN else "ja")


def test_the_gentle_line_comes_once_a_session(engine):
    step = engine.step(None, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    assert _maybe(step)
    again = engine.step(step.session, Incoming("text", SOFT_JA[-1]), WEEKDAY_MORNING)
    assert not _maybe(again) and isinstance(again.replies[-1], Question)


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_words_get_no_gentle_line(engine, text):
    step = engine.step(None, Incoming("text", text), WEEKDAY_MORNING)
    assert not _maybe(step)


def test_a_rule_hit_gets_the_crisis_reply_not_the_gentle_line(engine):
    step = engine.step(None, Incoming("text", "死にたい"), WEEKDAY_MORNING)
    assert "crisis:self_harm" in step.events and not _maybe(step)
    later = engine.step(step.session, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    assert not _maybe(later)  # after a crisis reply, the full lines were already given


def test_taps_never_get_the_gentle_line(engine):
    step = engine.step(None, Incoming("tap", SOFT_JA[0]), WEEKDAY_MORNING)
    assert not _maybe(step)


@pytest.mark.parametrize("text", SOFT_JA + SOFT_EN)
def test_line_rendering_keeps_five_messages_and_the_question(engine, text):
    session = None
    for words in ("こんにちは", text):  # a stranger, and someone already answering questions
        step = engine.step(session, Incoming("text", words), WEEKDAY_MORNING)
        session = step.session
        messages = render(step.replies, "電話", "ホームページ")
        assert 1 <= len(messages) <= 5
        assert "quickReply" in messages[-1]
        question = step.replies[-1]
        assert isinstance(question, Question)
        assert len(messages[-1]["quickReply"]["items"]) == min(len(question.choices), 13)


def test_the_gentle_line_is_left_out_where_it_would_not_fit(engine):
    """A reply already at LINE's five messages (texts and card groups, then the question) gets
    nothing added: the soft tier never pushes the normal reply's content out."""
    from bot.engine import MAX_PARTS, Step

    step = engine.step(None, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    cards = next(r for r in step.replies if isinstance(r, Cards))
    session = engine.new_session()
    full = [Text(text="a"), *[cards] * (MAX_PARTS - 2), engine.ask(session)]
    out = Step(session=session, replies=list(full), found=analyze(SOFT_JA[0]))
    engine._maybe(out, WEEKDAY_MORNING)
    assert out.replies == full and "crisis:maybe" not in out.events and not session.soft
    roomy = Step(session=engine.new_session(), replies=[Text(text="a"), engine.ask(session)],
                 found=analyze(SOFT_JA[0]))
    engine._maybe(roomy, WEEKDAY_MORNING)
    assert "crisis:maybe" in roomy.events and len(roomy.replies) == 4


def test_figures_count_the_gentle_line_as_its_own_kind(engine):
    from bot.figures import tally

    step = engine.step(None, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    counts = tally("web", None, step, Incoming("text", SOFT_JA[0]))
    assert counts["crisis", "maybe"] == 1
    assert not any(k == "crisis" and v != "maybe" for k, v in counts)


def test_one_analysis_a_message_serves_the_rules_and_the_soft_tier(engine, monkeypatch):
    import bot.engine

    calls: list[str] = []

    def counted(text: str):
        calls.append(text)
        return analyze(text)

    monkeypatch.setattr(bot.engine, "analyze", counted)
    step = engine.step(None, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    assert _maybe(step) and calls == [SOFT_JA[0]]


def test_a_flood_notice_gets_no_gentle_line(engine):
    from bot.engine import Step

    session = engine.new_session()
    out = Step(session=session, replies=[Text(text="slow down"), engine.ask(session)],
               events=["flooded"], found=analyze(SOFT_JA[0]))
    engine._maybe(out, WEEKDAY_MORNING)
    assert not _maybe(out) and len(out.replies) == 2 and not session.soft


def test_a_flooded_person_writing_soft_words_gets_only_the_flood_notice(engine):
    session = None
    for _ in range(engine.rate_limit):
        step = engine.step(session, Incoming("text", "こんにちは"), WEEKDAY_MORNING)
        session = step.session
    step = engine.step(session, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    notice = engine.t("flood.note", step.session)
    assert "flooded" in step.events and not _maybe(step), step.events
    assert [r for r in step.replies if isinstance(r, Text) and r.text == notice]
    assert len(step.replies) == 2 and isinstance(step.replies[-1], Question)


def test_the_gentle_line_on_a_relay_marks_the_case_urgent(engine):
    """In an open case the resident still gets the line (staff may be away at night); the
    relay is marked urgent, as a rule hit would mark it, so staff see it too."""
    from bot.engine import Step

    session = engine.new_session()
    out = Step(session=session, replies=[Text(text="relayed"), engine.ask(session)],
               events=["handoff:relay"], relay=SOFT_JA[0], found=analyze(SOFT_JA[0]))
    engine._maybe(out, WEEKDAY_MORNING)
    assert _maybe(out) and out.urgent and "handoff:urgent" in out.events
    quiet = Step(session=engine.new_session(), replies=[Text(text="relayed"), engine.ask(session)],
                 events=["handoff:relay"], relay=ORDINARY[0], found=analyze(ORDINARY[0]))
    engine._maybe(quiet, WEEKDAY_MORNING)
    assert not _maybe(quiet) and not quiet.urgent


# -- the model file -----------------------------------------------------------------------------
@pytest.mark.parametrize("content", [
    '{"bias": 0.1, "threshold": 0.5, "weights": {"la": 1.0',  # truncated
    '{"bias": 0.1, "threshold": 0.5}',  # a key missing
    '{"bias": 0.1, "threshold": null, "weights": {}}',
    '{"bias": 0.1, "threshold": 1.0, "weights": {}}',
    '{"bias": 0.1, "threshold": 0.5, "weights": {"la": "1"}}',
    '{"bias": 1e999, "threshold": 0.5, "weights": {}}',
    '[0.1, 0.5, {}]',
    '',
])
def test_a_broken_model_file_is_a_pack_error_in_one_line(tmp_path, content):
    from bot.pack import PackError

    path = tmp_path / "crisis_model.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PackError) as caught:
        crisis_model.load(path)
    assert str(caught.value).startswith("crisis_model.json: ")
    assert "\n" not in str(caught.value)


def test_a_missing_model_file_is_a_pack_error(tmp_path):
    from bot.pack import PackError

    with pytest.raises(PackError, match=r"^crisis_model\.json: cannot be read"):
        crisis_model.load(tmp_path / "crisis_model.json")


def test_a_good_model_file_loads_once(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"bias": -1, "threshold": 0.5, "weights": {"la": 2}, "about": "x"}',
                    encoding="utf-8")
    model = crisis_model.load(path)
    assert model.threshold == 0.5 and model.weights == {"la": 2.0} and model.bias == -1.0
    assert crisis_model.load(path) is model


def test_start_up_stops_with_one_line_on_a_broken_model_file(tmp_path, monkeypatch, capsys):
    import server

    broken = tmp_path / "crisis_model.json"
    broken.write_text('{"bias": 0.1, "threshold": 0.5, "weights": {', encoding="utf-8")
    monkeypatch.setattr(crisis_model, "MODEL_FILE", broken)
    monkeypatch.delenv("TSUNAGU_TENANTS", raising=False)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never reached
    monkeypatch.setenv("BOT_SECRET_KEY", "k" * 32)
    with pytest.raises(SystemExit) as stopped:
        server._app_or_exit()
    assert stopped.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "tsunagu: content pack error:"
    assert len(err) == 2 and err[1].startswith("crisis_model.json: not a crisis model (")


def test_validate_names_a_broken_model_file(tmp_path, monkeypatch):
    from bot.validate import validate

    broken = tmp_path / "crisis_model.json"
    broken.write_text("[]", encoding="utf-8")
    monkeypatch.setattr(crisis_model, "MODEL_FILE", broken)
    assert [e for e in validate("kyoto") if e.startswith("crisis_model.json: ")]


def test_the_model_file_and_numpy_are_in_the_package():
    """A non-editable install carries crisis_model.json (package-data) and the trainer's numpy
    is a dependency of its own, not something matplotlib happens to bring."""
    import fnmatch
    import tomllib

    project = tomllib.loads((crisis_model.REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = project["tool"]["setuptools"]["package-data"]["*"]
    bot = crisis_model.REPO / "bot"
    data = [p for p in bot.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts]
    assert crisis_model.MODEL_FILE in data
    missing = [str(p.relative_to(bot)) for p in data
               if not any(fnmatch.fnmatch(p.name, pat) for pat in patterns)]
    assert not missing, missing
    assert any(d.split(">")[0].split("=")[0].split("[")[0].strip() == "numpy"
               for d in project["project"]["dependencies"])


def test_an_empty_group_divides_by_nothing(tmp_path):
    """A set with no ordinary lines (or no risk lines) is measured and tabled, not a
    ZeroDivisionError."""
    import numpy as np

    from bot.pack.loader import crisis_file
    from bot.safety import CrisisDetector

    items = [crisis_model.Example("a", 1, "f", "risk"), crisis_model.Example("b", 1, "f", "risk")]
    threshold, lines = crisis_model._threshold(np.array([0.2, 0.9]), items)
    assert threshold == 0.30 and any("<- chosen" in line for line in lines)
    risk_only = tmp_path / "safety_x.yaml"
    risk_only.write_text("risk:\n  - text: 死にたい\n", encoding="utf-8")
    c = crisis_model.rules_and_model(risk_only, CrisisDetector.from_file(crisis_file("kyoto")),
                                     crisis_model.load())
    assert (c.risk, c.risk_rules, c.ordinary, c.ordinary_either) == (1, 1, 0, 0)
    assert crisis_model.share(0, 0) == "- (0/0)" and crisis_model.share(1, 4) == "25.0% (1/4)"


def test_the_cli_scores_files_with_the_same_counts(tmp_path, capsys):
    from bot.cli import _score_files

    ordinary_only = tmp_path / "safety_y.yaml"
    ordinary_only.write_text("ordinary:\n  - 明日の天気はどうですか\n", encoding="utf-8")
    assert _score_files([ordinary_only], "kyoto") == 0
    out = capsys.readouterr().out
    assert "recall - (0/0)" in out and "false positives 0.0% (0/1)" in out


def test_figures_say_maybe_is_the_gentle_line():
    from bot import figures, metrics

    assert "maybe: the soft tier's gentle line" in figures.MEASURES["crisis"]
    assert "maybe: the soft tier's gentle line" in metrics.CRISIS._documentation
