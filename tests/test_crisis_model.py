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
SOFT_EN = ["I want it all to be over tonight", "I want to be gone"]
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


def test_the_blind_set_is_never_trained_on(shipped):
    assert "safety_holdout_d.yaml" in shipped["excluded"]
    assert "safety_holdout_d.yaml" not in shipped["files"]
    assert HOLDOUT_D.name not in [f.name for f in crisis_model.training_files()]
    with pytest.raises(ValueError):
        crisis_model.examples([HOLDOUT_D])


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

    model = crisis_model.load()
    assert model is not None
    detector = CrisisDetector.from_file(crisis_file("kyoto"))
    risk, ordinary = crisis_model.safety_lines(HOLDOUT_D)
    caught = sum(detector.detect(analyze(t)) is not None or model.flags(analyze(t))
                 for t in risk)
    flagged = sum(detector.detect(analyze(t)) is not None or model.flags(analyze(t))
                  for t in ordinary)
    assert caught >= FLOOR_D * len(risk), caught
    assert flagged <= FP_CEILING_D * len(ordinary), flagged


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
    out = Step(session=session, replies=list(full))
    engine._maybe(out, SOFT_JA[0], WEEKDAY_MORNING)
    assert out.replies == full and "crisis:maybe" not in out.events and not session.soft
    roomy = Step(session=engine.new_session(), replies=[Text(text="a"), engine.ask(session)])
    engine._maybe(roomy, SOFT_JA[0], WEEKDAY_MORNING)
    assert "crisis:maybe" in roomy.events and len(roomy.replies) == 4


def test_figures_count_the_gentle_line_as_its_own_kind(engine):
    from bot.figures import tally

    step = engine.step(None, Incoming("text", SOFT_JA[0]), WEEKDAY_MORNING)
    counts = tally("web", None, step, Incoming("text", SOFT_JA[0]))
    assert counts["crisis", "maybe"] == 1
    assert not any(k == "crisis" and v != "maybe" for k, v in counts)
