"""Every path of the handbook flow reaches results within the flow's question budget."""

from __future__ import annotations

from collections import deque

from bot.engine import Incoming
from bot.replies import Question
from tests.conftest import WEEKDAY_MORNING, Walker

COMMAND_PREFIX = "cmd:"


def _question(step):
    return [r for r in step.replies if isinstance(r, Question)][-1]


def test_every_path_reaches_results_within_ten_questions(engine):
    """Breadth-first over the flow, one representative tap per distinct next state."""
    start = engine.step(None, Incoming("tap", "start", "welcome"), WEEKDAY_MORNING)
    queue = deque([(start.session, _question(start))])
    seen: set[tuple] = set()
    finished = 0
    max_asked = 0
    visited: set[str] = set()
    while queue:
        session, question = queue.popleft()
        visited.add(question.state)
        if question.state == "results":
            finished += 1
            max_asked = max(max_asked, session.asked)
            continue
        by_destination: dict[tuple, tuple] = {}
        for choice in question.choices:
            if choice.value.startswith(COMMAND_PREFIX):
                continue
            step = engine.step(session, Incoming("tap", choice.value, question.state),
                               WEEKDAY_MORNING)
            nxt = _question(step)
            key = (nxt.state, step.session.page, len(step.session.concerns))
            by_destination.setdefault(key, (step.session, nxt))
        assert by_destination, f"{question.state}: no way forward"
        for (state, page, n), (s, q) in by_destination.items():
            sig = (state, page, n, s.asked)
            if sig not in seen:
                seen.add(sig)
                queue.append((s, q))
        assert len(seen) < 5000, "the flow loops"
    questions = {n for n, s in engine.flow.states.items()
                 if s.kind == "question" and not engine.skips(s)}
    assert questions <= visited, f"never reached: {questions - visited}"
    assert finished > 0
    assert max_asked <= engine.flow.max_questions == 10


def test_the_longest_path_is_exactly_within_budget(kyoto_engine):
    """hikikomori (two follow-ups) + three more worries + ward page 2 + contact."""
    walker = Walker(kyoto_engine)
    walker.start()
    for value in ("start", "family", "40_64", "hikikomori", "long", "open",
                  "disability", "poverty", "elderly", "page:1"):
        walker.tap(value)
    walker.tap(walker.question.choices[0].value)
    walker.tap("visit")
    assert walker.question.state == "results"
    assert walker.session.asked == 10
