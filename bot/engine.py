"""The dialogue engine: one pure step, `(session, incoming, now) -> (session, replies)`.

Each flow is compiled once, at start-up, into a `transitions` Machine whose edges carry the
flow's conditions; per message we attach a tiny model holding only the state, trigger, and
detach (the transitions FAQ's "one machine, many models"). No I/O happens here: storage,
clocks and platforms are the callers' business, which keeps every path testable.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache, partial
from typing import Any, Literal, Protocol

from transitions import EventData, Machine

from bot import crisis_model
from bot.cards import card
from bot.flows.schema import ChoiceSpec, FlowSpec, StateSpec
from bot.handoff.models import CaseRequest
from bot.language import Analysis, analyze, normalize, script_language
from bot.pack.hours import is_open, next_opening
from bot.pack.loader import Pack
from bot.pack.matching import Answers, fits, match, rank
from bot.pack.models import LANGS, Lang, Window
from bot.replies import WRONG_PREFIX, Card, Cards, Choice, Question, Reply, Text
from bot.session import Session
from bot.triage import Result, other_language_category, triage

CMD_PREFIX = "cmd:"
PAGE_PREFIX = "page:"
MAX_CHOICES = 13  # LINE's quick-reply limit; the web follows the same rule
MAX_CARDS = 10
RATE_LIMIT = 20  # messages a minute per person before the gentle flood note
CASE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud on the phone
HANDOFF_STATES = ("handoff_consent", "handoff_message", "handoff_open")
DECLINED = {"skip", "outside", "info"}
TRIAGE = "triage"  # the state where understood free text is confirmed
# Where free text is read for a worry: questions, the welcome, the results, the triage itself.
LISTENING = ("question", "info", "results", "triage")
FOREIGN_NOTES = ("zh", "ko", "vi", "th", "ru", "ne", "ar")
SYNONYM_GROUP = {"categories": "cat", "wards": "ward"}
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
CACHE_SIZE = 4096  # entries per memo table of one engine (options, questions, cards, matches)


class Detector(Protocol):
    def detect(self, text: str | Analysis) -> Any: ...


@dataclass(frozen=True)
class Incoming:
    """A tap (a choice value), free text, or a platform event (first_contact, sticker, media).

    Two kinds never come from a resident's channel, only from the staff side: "staff" (a staff
    answer to relay, `value` its text) and the events "case_closed" / "case_expired". `lang`
    is the language to answer in when the person has no session any more.
    """

    kind: Literal["tap", "text", "event", "staff"]
    value: str = ""
    state: str | None = None
    lang: Lang | None = None

    @property
    def from_staff(self) -> bool:
        """Sent by staff for the person, not by the person (not counted as their doing)."""
        return self.kind == "staff" or (self.kind == "event"
                                        and self.value in ("case_closed", "case_expired"))


@dataclass
class Step:
    """The outcome of one message. `session` None means: delete what is stored.

    The typed signals are what callers act on (bot.service.Conversations.process); `events`
    are labels for metrics and logs only, never a reason to do something:
    `handoff` asks the caller to open a staff case; `relay` is text for the open case's thread;
    `urgent` marks the open case urgent (crisis words in it); `forget` deletes everything that
    leads back to the person (their case's address and text), beyond the session;
    `resumed` says the answer shows a conversation already under way (the page was reopened).
    """

    session: Session | None
    replies: list[Reply]
    events: list[str] = field(default_factory=list)
    handoff: CaseRequest | None = None
    relay: str | None = None
    urgent: bool = False
    forget: bool = False
    resumed: bool = False
    reveal: bool = False  # show what the neutral notices stood for (bot.phonesafe)
    unseen: list[tuple[str, str]] = field(default_factory=list)  # what a notice stands for
    quick_exit: bool = False  # the web page may leave for a neutral site and clear itself
    # Not an output: the one analysis of the typed text (`_step`), read again by `_maybe`.
    found: Analysis | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Option:
    """A choice as offered in one state: its tap value, its label and what it leads to."""

    value: str
    label: str
    spec: ChoiceSpec | None = None
    command: str | None = None
    page: int | None = None


class Conversation:
    """The transitions model: it carries only the state (STYLE.md, transitions)."""

    state: str


@dataclass(frozen=True)
class Mover:
    """What of a session the flow's conditions may read: its channel and how many concerns it
    holds. `_move` memoises the machine's answer by these (and the value), so a condition that
    read anything else would fail loudly here rather than be answered from memory wrongly."""

    channel: str | None
    concerns: tuple[str, ...]


def _value_is(value: str) -> Callable[[EventData], bool]:
    return lambda event: event.kwargs["value"] == value


def _value_in(values: frozenset[str]) -> Callable[[EventData], bool]:
    return lambda event: event.kwargs["value"] in values


def _channel_not_in(channels: list[str]) -> Callable[[EventData], bool]:
    return lambda event: event.kwargs["session"].channel not in channels


def _below(limit: int) -> Callable[[EventData], bool]:
    return lambda event: len(event.kwargs["session"].concerns) - 1 < limit


# A reply's parts as a channel sends them: LINE, the strictest, sends at most 5 messages per
# reply and merges neighbouring texts (bot/channels/line_render.py). The soft tier's line is
# added only where the reply stays within this, so it never pushes anything out.
MAX_PARTS = 5


def _parts(replies: list[Reply]) -> int:
    """Messages the replies make at most: a run of texts is one, each card group and question
    one."""
    parts = 0
    for i, r in enumerate(replies):
        if isinstance(r, Text):
            parts += not (i and isinstance(replies[i - 1], Text))
        elif not isinstance(r, Cards) or r.cards:
            parts += 1
    return parts


class Engine:
    """Compiled flows plus the content pack and crisis detector they speak from."""

    def __init__(self, flow: FlowSpec, pack: Pack, detector: Detector,
                 rate_limit: int = RATE_LIMIT, handoff: bool = False):
        self.flow = flow
        self.rate_limit = rate_limit
        self.handoff = handoff
        self.pack = pack
        self.detector = detector
        # The soft tier (PackError when its file is missing or broken); None turns it off.
        self.soft: crisis_model.CrisisModel | None = crisis_model.load()
        self.items = {
            "categories": [(c.id, c.label) for c in pack.categories.values()],
            "wards": [(w.id, w.name) for w in pack.wards.wards],
        }
        self.labels = {kind: dict(items) for kind, items in self.items.items()}
        self.machine = self._compile()
        self.command_words = self._command_words()
        # Pure functions of this engine's flow and pack, asked again on every message: memoised
        # per engine (so per pack), bounded; functools.lru_cache is safe across threads.
        self._option_list = lru_cache(maxsize=CACHE_SIZE)(self._options_of)
        self._question = lru_cache(maxsize=CACHE_SIZE)(self._question_of)
        self._card_at = lru_cache(maxsize=CACHE_SIZE)(self._card_of)
        self._match = lru_cache(maxsize=CACHE_SIZE)(partial(match, pack))
        self._destination = lru_cache(maxsize=CACHE_SIZE)(self._destination_of)
        self._words = lru_cache(maxsize=CACHE_SIZE)(self._words_of)
        start = flow.states[flow.start]
        # Where a confirmed worry continues when it was written before any question.
        self.first_question = next((c.next for c in start.choices if c.next), flow.start)

    # -- compile (once) ------------------------------------------------------------------
    def _compile(self) -> Machine:
        spec = self.flow
        machine = Machine(model=None, states=list(spec.states), initial=spec.start,
                          auto_transitions=False, send_event=True)
        for name, state in spec.states.items():
            for choice in [*state.choices, *state.extra]:
                if choice.next:
                    machine.add_transition("answer", name, choice.next,
                                           conditions=[_value_is(choice.value)])
            if self.skips(state):
                machine.add_transition("skip", name, state.next)
            elif state.channels and state.otherwise:
                machine.add_transition("skip", name, state.otherwise,
                                       conditions=[_channel_not_in(state.channels)])
            if state.choices_from and state.next:
                for value, dest in state.next_by_value.items():
                    machine.add_transition("answer", name, dest, conditions=[_value_is(value)])
                values = frozenset(v for v, _ in self.items[state.choices_from])
                if state.repeat and state.then:
                    machine.add_transition("answer", name, state.next,
                                           conditions=[_value_in(values), _below(state.repeat)])
                    machine.add_transition("answer", name, state.then,
                                           conditions=[_value_in(values)])
                else:
                    machine.add_transition("answer", name, state.next,
                                           conditions=[_value_in(values)])
        machine.add_transition("restart", "*", spec.start)
        machine.add_transition("open_directory", "*", "directory")
        if "handoff_consent" in spec.states:
            machine.add_transition("ask_consent", "*", "handoff_consent")
        if TRIAGE in spec.states:
            machine.add_transition("listen", "*", TRIAGE)
        returns = ("directory", *(h for h in (*HANDOFF_STATES, TRIAGE) if h in spec.states))
        for name in spec.states:
            for source in returns:
                machine.add_transition("resume", source, name, conditions=[_value_is(name)])
        return machine

    def skips(self, state: StateSpec) -> bool:
        """A question whose choices come from an empty list (the ward question of a city
        without wards) is not asked: the flow goes on to its next state."""
        return bool(state.choices_from and state.next and not self.items[state.choices_from])

    def _command_words(self) -> dict[str, str]:
        words: dict[str, str] = {}
        for command in self.flow.commands:
            for lang in LANGS:
                for word in self.pack.msg(command.words, lang):
                    words[normalize(str(word))] = command.id
        return words

    def _move(self, session: Session, trigger: str, value: str | None = None) -> bool:
        """Fire a trigger of the shared machine for this session's state.

        We call the machine's Event with a model that carries only the state, instead of
        add_model/remove_model: attaching binds convenience methods for every state (~0.25 ms
        a message here, against ~20 µs for the trigger itself). Same Machine, same edges and
        conditions; no per-message Machine, no model left attached. The flow has no callbacks,
        so where a trigger leads is a pure function of the state, the value and what the
        conditions read (`Mover`): memoised per engine (`_destination`).
        """
        dest = self._destination(trigger, session.state, value, session.channel,
                                 len(session.concerns))
        if dest is not None:
            session.enter(dest)
        return dest is not None

    def _destination_of(self, trigger: str, state: str, value: str | None,
                        channel: str | None, concerns: int) -> str | None:
        """Where the machine takes `trigger` from `state`; None when it does not move."""
        model = Conversation()
        model.state = state
        kwargs = {} if value is None else {"value": value}
        moved = self.machine.events[trigger].trigger(
            model, session=Mover(channel=channel, concerns=("",) * concerns), **kwargs)
        return model.state if moved else None

    # -- helpers -------------------------------------------------------------------------
    def t(self, key: str, session: Session) -> str:
        return self.pack.msg(key, session.lang)

    def new_session(self, lang: Lang = "ja", case: str | None = None) -> Session:
        """A fresh conversation; an open staff case survives the restart and stop commands."""
        return Session(flow=self.flow.id, state=self.flow.start, lang=lang, case=case,
                       history=[self.flow.start])

    def options(self, session: Session, state_name: str | None = None,
                reserve: int = 0) -> list[Option]:
        """The choices offered in a state, in display order, paged to LINE's 13.

        `reserve` keeps room for choices added on top (the offer of a person after a crisis).
        """
        name = state_name or session.state
        state = self.flow.states[name]
        guess = session.guess or {}
        if state.kind == TRIAGE and guess.get("mode") in ("confirm", "pick"):
            return self._triage_options(session, state, guess)
        return list(self._option_list(
            name, session.lang, session.page if name == session.state else 0,
            frozenset(session.concerns) if state.exclude_answered else None,
            bool(session.resume), session.direct, reserve))

    def _options_of(self, name: str, lang: Lang, page: int, answered: frozenset[str] | None,
                    resume: bool, direct: bool, reserve: int) -> tuple[Option, ...]:
        """`options` from the few things of a session it depends on: a pure function of the
        flow and the pack, memoised per engine (`_option_list`)."""
        state = self.flow.states[name]
        opts: list[Option] = []
        if state.choices_from:
            items = self.items[state.choices_from]
            if answered is not None:
                items = [(v, lab) for v, lab in items if v not in answered]
            size = self._page_size(state, len(items), reserve)
            last_page = max(0, (len(items) - 1) // size) if size else 0
            page = min(page, last_page)
            start = page * size
            opts += [Option(v, lab.get(lang)) for v, lab in items[start:start + size]]
            if page > 0:
                opts.append(Option(f"{PAGE_PREFIX}{page - 1}", self.pack.msg("common.prev", lang),
                                   page=page - 1))
            if start + size < len(items):
                opts.append(Option(f"{PAGE_PREFIX}{page + 1}", self.pack.msg("common.next", lang),
                                   page=page + 1))
        for choice in [*state.choices, *state.extra]:
            if state.kind == TRIAGE:
                break  # the full category list: its own yes/no/other are for the guesses
            if choice.command == "resume" and not resume:
                continue
            if choice.command == "direct_on" and direct:
                opts.append(self._command_option("direct_off", lang))
                continue
            value = f"{CMD_PREFIX}{choice.command}" if choice.command else choice.value
            opts.append(Option(value, self.pack.msg(choice.label, lang), spec=choice,
                               command=choice.command))
        return tuple(opts)

    @staticmethod
    def _page_size(state: StateSpec, n_items: int, reserve: int = 0) -> int:
        """All items when they fit in 13 with the fixed choices; else pages with ◀ ▶."""
        fixed = reserve if state.kind == TRIAGE else len(state.choices) + len(state.extra) + reserve
        return n_items if n_items + fixed <= MAX_CHOICES else MAX_CHOICES - fixed - 2

    def ask(self, session: Session) -> Question:
        """The current state's question. After a crisis it also offers a person, on every
        question, with room kept on the page for that choice.

        Outside the triage state (whose prompt and choices come from the guess) the question
        depends on a few fields of the session only: memoised per engine, the same frozen
        Question for everyone at that point (`_question`)."""
        state = self.flow.states[session.state]
        if state.kind == TRIAGE:
            return self._ask(session)
        return self._question(
            session.state, session.lang, session.page,
            frozenset(session.concerns) if state.exclude_answered else None,
            bool(session.resume), session.direct, bool(session.crisis), session.unseen)

    def _question_of(self, state: str, lang: Lang, page: int, answered: frozenset[str] | None,
                     resume: bool, direct: bool, crisis: bool, unseen: bool) -> Question:
        session = Session(flow=self.flow.id, state=state, lang=lang, page=page,
                          concerns=sorted(answered or ()), resume=state if resume else None,
                          direct=direct, crisis="any" if crisis else None, unseen=unseen)
        return self._ask(session)

    def _ask(self, session: Session) -> Question:
        extra = []
        if session.crisis:
            human = self.command_option("human", session)
            extra = [human] if all(o.command != "human" for o in self.options(session)) else []
        if session.unseen:  # a neutral notice is waiting to be opened (bot.phonesafe)
            extra.append(Option(f"{CMD_PREFIX}reveal", self.t("notice.open", session),
                                command="reveal"))
        opts = self.options(session, reserve=len(extra)) + extra
        state = self.flow.states[session.state]
        text = self._triage_prompt(session) if state.kind == TRIAGE else self.t(state.prompt,
                                                                                  session)
        return Question(text=text, state=session.state,
                        choices=[Choice(label=o.label, value=o.value) for o in opts])

    def entry_question(self, state: str, lang: Lang) -> Question:
        """The question of an entry state, for a message we send first (the follow-up)."""
        session = self.new_session(lang)
        session.enter(state)
        return self.ask(session)

    def command_option(self, command: str, session: Session) -> Option:
        return self._command_option(command, session.lang)

    def _command_option(self, command: str, lang: Lang) -> Option:
        spec = next(c for c in self.flow.commands if c.id == command)
        return Option(f"{CMD_PREFIX}{command}", self.pack.msg(spec.label, lang), command=command)

    def answers(self, session: Session) -> Answers:
        def get(key: str) -> str | None:
            value = session.answers.get(key)
            return None if value in DECLINED else value
        return Answers(whose=get("whose"), age=get("age"), concerns=tuple(session.concerns),
                       flags=frozenset(session.flags), ward=get("ward"), contact=get("contact"))

    def cards(self, title: str, windows: list[Window], session: Session, now: datetime,
              urgent: bool = False, live: bool = False) -> Cards:
        return Cards(title=self.t(title, session), urgent=urgent,
                     cards=[self._card(w, session.lang, now, live) for w in windows[:MAX_CARDS]])

    def _card(self, window: Window, lang: Lang, now: datetime, live: bool) -> Card:
        """`bot.cards.card`, memoised per engine. Opening hours start and end on whole minutes
        (Asia/Tokyo is a whole number of hours from UTC), so whether a window is open and when
        it opens next are the same all through one minute: a card is keyed by that minute
        (or by nothing, without hours or open around the clock) and stays exact."""
        if now.tzinfo is None or self.pack.windows.get(window.id) is not window:
            return card(self.pack, window, lang, now, live=live)
        hours = window.hours
        minute = None if hours is None or hours.always else (now - EPOCH) // MINUTE
        return self._card_at(window.id, lang, live, minute)

    def _card_of(self, window_id: str, lang: Lang, live: bool, minute: int | None) -> Card:
        at = EPOCH if minute is None else EPOCH + minute * MINUTE
        return card(self.pack, self.pack.windows[window_id], lang, at, live=live)

    # -- the step ------------------------------------------------------------------------
    def step(self, session: Session | None, incoming: Incoming, now: datetime,
             channel: str | None = None) -> Step:
        """`_step`, then the soft tier's gentle line when typed words call for it (`_maybe`)."""
        out = self._step(session, incoming, now, channel)
        if incoming.kind == "text" and not incoming.from_staff:
            self._maybe(out, now)
        return out

    def _step(self, session: Session | None, incoming: Incoming, now: datetime,
              channel: str | None = None) -> Step:
        """One message of one person: the new session, the replies and the signals.

        Args:
            session: what is stored for this person (None: a stranger, or forgotten).
            incoming: the tap, text or event; kind "staff" and the case_* events come from
                the staff side only (see Incoming).
            now: the time the message is answered at (opening hours, rate limit).
            channel: where the message came from ("web", "line"); some states are offered
                on one channel only (a LINE push needs LINE).

        Returns:
            A Step. Pure: nothing is stored or sent here, and `session` is not modified
            (a clone is returned), so a caller may run the same step again after a failed
            delivery. Only the case number of a handoff is drawn at random.

        Raises:
            Nothing for any input a channel can produce; a bug raises as usual.

        Ordering: the caller must hold the person's lock and give each message of that person
        in the order it was received; the step reads and returns the whole session.
        """
        if incoming.from_staff:
            return self._from_staff(session, incoming)
        is_new = session is None
        session = self.new_session() if session is None else session.clone()
        if channel:
            session.channel = channel
        if (incoming.kind == "tap" and incoming.state in self.flow.entries
                and incoming.state != session.state):
            # The answer to a question we sent first (the follow-up): take it where it belongs.
            session.enter(incoming.state)
            is_new = False
        text = incoming.value if incoming.kind == "text" else ""
        # One analysis of the text serves crisis detection, triage, choice matching and the soft
        # tier (`_maybe`, through the Step).
        found = analyze(text) if text else None
        out = Step(session=session, replies=[], found=found)
        crisis = self.detector.detect(found) if found is not None else None
        if crisis is not None:
            self._crisis(out, crisis.kind, now)
        elif self._flooded(session, now):
            if session.rate_count == self.rate_limit + 1:
                out.replies += [Text(text=self.t("flood.note", session)), self.ask(session)]
            out.events.append("flooded")
            return out
        if incoming.kind == "event":
            return self._event(out, incoming, now, is_new)
        command = self._command_of(incoming)
        if command:
            return self._command(out, command, now)
        if incoming.kind == "tap" and incoming.value.startswith(WRONG_PREFIX):
            return self._wrong_number(out, incoming.value[len(WRONG_PREFIX):])
        if text and session.case:
            return self._relay(out, text, crisis is not None)
        if text and self.flow.states[session.state].kind == "handoff_message":
            option = self._understand(session, text)
            if option is None or crisis is not None:
                return self._open_case(out, text, now)
        if is_new and crisis is None and not (incoming.kind == "tap"
                                              and incoming.state == session.state):
            # A stranger's first words: a worry they name is confirmed at once; otherwise the
            # welcome. A tap on the welcome's own choices (after the forget command, or an expired
            # session) is simply taken.
            if found is not None and TRIAGE in self.flow.states:
                heard = self._listen(out, found, now)
                if heard is not None:
                    return heard
            out.replies.append(self.ask(session))
            return out
        if incoming.kind == "tap":
            if incoming.value.startswith(PAGE_PREFIX) and incoming.state in (None, session.state):
                return self._page(out, incoming.value)
            if incoming.state is not None and incoming.state != session.state:
                out.events.append("stale")
                return self._reask(out, "common.stale", crisis is not None)
            option = next((o for o in self.options(session) if o.value == incoming.value), None)
        elif crisis is not None:
            option = None
        else:
            # A plain answer (a label, a synonym, a number) is taken; a sentence naming a worry
            # is confirmed (bot/triage.py); a word inside a sentence still answers.
            option = self._understand(session, text, exact=True)
            if option is None and found is not None and self._listening(session):
                heard = self._listen(out, found, now)
                if heard is not None:
                    heard.events.append("text:understood")
                    return heard
                option = self._understand(session, text)
            elif option is None:
                option = self._understand(session, text)
            out.events.append("text:understood" if option else "text:not_understood")
        if option is None:
            if text and not crisis and self.flow.states[session.state].kind == "info" \
                    and TRIAGE in self.flow.states:
                return self._offer(out, "none", [], {})
            return self._reask(out, "common.not_understood", crisis is not None)
        if option.page is not None:
            return self._page(out, option.value)
        if option.command:
            return self._command(out, option.command, now)
        return self._choose(out, option, now)

    def _wrong_number(self, out: Step, window_id: str) -> Step:
        """A card's number did not work or was wrong: thank them, tell staff (the service
        reads the event), and let them go on where they were."""
        session = out.session
        assert session is not None
        if window_id not in self.pack.windows:
            return self._reask(out, "common.not_understood", False)
        out.events.append(f"wrong_number:{window_id}")
        out.replies.append(Text(text=self.t("wrong_number.thanks", session)))
        out.replies.append(self.ask(session))
        return out

    def _flooded(self, session: Session, now: datetime) -> bool:
        """Count this message; past the limit, say so once, then stay quiet for the minute.

        Never consulted for a crisis message: those are always answered in full.
        """
        minute = int(now.timestamp() // 60)
        if session.rate_minute != minute:
            session.rate_minute, session.rate_count = minute, 0
        session.rate_count += 1
        return session.rate_count > self.rate_limit

    def _command_of(self, incoming: Incoming) -> str | None:
        if incoming.kind == "tap" and incoming.value.startswith(CMD_PREFIX):
            command = incoming.value[len(CMD_PREFIX):]
            known = {c.id for c in self.flow.commands} | {"lang_switch", "resume", "reveal"}
            return command if command in known else None
        if incoming.kind == "text":
            return self.command_words.get(normalize(incoming.value))
        return None

    def _understand(self, session: Session, text: str, exact: bool = False) -> Option | None:
        """Free text → a choice, only when it clearly means one; else None (ask again).
        `exact`: only the whole text as a label, synonym or number."""
        opts = self.options(session)
        norm = normalize(text)
        if norm.isdigit() and 1 <= int(norm) <= len(opts):
            return opts[int(norm) - 1]
        exact_hits: set[int] = set()
        contains: set[int] = set()
        for i, opt in enumerate(opts):
            for word in self._words_for(session, opt):
                if word and norm == word:
                    exact_hits.add(i)
                elif len(word) >= 2 and word in norm:
                    contains.add(i)
        # Two choices claiming the same words means the text is not clear: ask again.
        found = exact_hits if exact else exact_hits or contains
        return opts[found.pop()] if len(found) == 1 else None

    # -- free text understood (bot/triage.py) ------------------------------------------------
    def _listening(self, session: Session) -> bool:
        return TRIAGE in self.flow.states and \
            self.flow.states[session.state].kind in LISTENING

    def _listen(self, out: Step, found: Analysis, now: datetime) -> Step | None:
        """Read free text for a worry. A step when it says something we act on: a note in the
        resident's language, a confirmation, a choice among a few; None to carry on as before."""
        session = out.session
        assert session is not None
        written = script_language(found.text)
        if written in FOREIGN_NOTES:
            # A note in their language; then English, which more residents from abroad read
            # than Japanese, offering the foreign residents' windows (unless only a greeting).
            out.events.append("lang_note")
            out.replies.append(Text(text=self.t(f"triage.lang.{written}", session)))
            session.lang = "en"
            category = other_language_category(found, self.pack)
            if category is not None:
                return self._offer(out, "confirm", [category], {})
            out.replies.append(self.ask(session))
            return out
        if written in LANGS and written != session.lang:
            session.lang = written  # typed in English (or Japanese): answer in it
        result: Result = triage(found, session.lang, self.pack)
        top = result.top if result.top in self.pack.categories else None
        state = self.flow.states[session.state]
        if top is not None and state.kind == "question" and state.choices_from == "categories":
            option = next((o for o in self.options(session) if o.value == top), None)
            if option is not None:  # the category question, answered in a sentence
                return self._choose(out, option, now)
        slots = {k: v for k, v in result.slots.items() if k not in result.implicit}
        if top is not None:
            return self._offer(out, "confirm", [top], slots)
        several = [c for c in result.plausible if c in self.pack.categories]
        if len(several) >= 2:
            return self._offer(out, "pick", several, slots)
        return None

    def _offer(self, out: Step, mode: str, cats: list[str], slots: dict[str, str]) -> Step:
        """Go to the triage state: confirm one worry, pick among a few, or among all."""
        session = out.session
        assert session is not None
        back = (session.guess or {}).get("back") if session.state == TRIAGE else session.state
        session.guess = {"mode": mode, "cats": cats, "slots": slots, "back": back}
        self._move(session, "listen")
        out.events.append(f"triage:{mode}")
        out.replies.append(self.ask(session))
        return out

    def _triage_options(self, session: Session, state: StateSpec,
                        guess: dict[str, Any]) -> list[Option]:
        fixed = {c.value: c for c in state.extra}

        def option(value: str) -> Option:
            return Option(value, self.t(fixed[value].label, session), spec=fixed[value])

        if guess["mode"] == "confirm":
            return [option("yes"), option("no")]
        return [Option(c, self.labels["categories"][c].get(session.lang))
                for c in guess.get("cats", []) if c in self.labels["categories"]] + \
            [option("other")]

    def _triage_prompt(self, session: Session) -> str:
        guess = session.guess or {}
        mode = guess.get("mode", "all")
        if mode == "confirm":
            whose = guess.get("slots", {}).get("whose", "any")
            what = self.t(f"triage.topic.{guess['cats'][0]}", session)
            return self.t(f"triage.confirm.{whose}", session).format(what=what)
        key = {"pick": "triage.several", "none": "triage.none"}.get(mode, "triage.which")
        return self.t(key, session)

    def _triage_choose(self, out: Step, value: str, now: datetime) -> Step:
        session = out.session
        assert session is not None
        guess = session.guess or {}
        if value in ("no", "other"):
            slots = {} if value == "no" else guess.get("slots", {})
            session.guess = {**guess, "mode": "all", "cats": [], "slots": slots}
            out.replies.append(self.ask(session))
            return out
        category = (guess.get("cats") or [None])[0] if value == "yes" else value
        if category not in self.pack.categories:
            return self._reask(out, "common.not_understood", False)
        return self._accept(out, category, guess.get("slots", {}), guess.get("back"), now)

    def _accept(self, out: Step, category: str, slots: dict[str, str], back: str | None,
                now: datetime) -> Step:
        """The resident confirmed the worry: record it and every answer the text gave, and go
        back to the questions, skipping the answered ones."""
        session = out.session
        assert session is not None
        session.guess = None
        if back in self.flow.states and self.flow.states[back].kind == "results":
            # A new worry after the results: a new consultation, keeping language and case.
            fresh = self.new_session(session.lang, case=session.case)
            fresh.rate_minute, fresh.rate_count = session.rate_minute, session.rate_count
            fresh.crisis, fresh.state, fresh.history = session.crisis, session.state, \
                session.history
            fresh.soft = session.soft
            out.session = session = fresh
        if category not in session.concerns:
            session.concerns = [*session.concerns, category]
        skip = {"concerns"}
        for key, value in slots.items():
            if key == "ward" and self.pack.ward(value) is None:
                continue
            if key not in session.answers:
                session.answers[key] = value
                skip.add(key)
        session.skip = sorted(skip)
        out.events.append(f"triage:accept:{category}")
        for state in self.flow.states.values():
            crisis = state.crisis_by_value.get(category) if state.answer == "concerns" else None
            if crisis and session.crisis != crisis:
                self._crisis(out, crisis, now)
        states = self.flow.states
        target = back if back in states and states[back].kind == "question" else \
            self.first_question
        if target == back:
            session.asked = max(0, session.asked - 1)  # the same question, counted once
        self._move(session, "resume", value=target)
        return self._entered(out, now)

    def _skip_answered(self, out: Step, now: datetime) -> None:
        """Pass the questions whose answer the resident's own words gave (session.skip)."""
        session = out.session
        assert session is not None
        for _ in range(len(self.flow.states)):
            state = self.flow.states[session.state]
            if state.kind != "question" or state.repeat or state.answer not in session.skip:
                return
            session.skip = [k for k in session.skip if k != state.answer]
            value = (session.concerns[0] if session.concerns else None) \
                if state.answer == "concerns" else session.answers.get(state.answer or "")
            if value is None:
                return
            spec = next((c for c in state.choices if c.value == value), None)
            if spec is not None:
                session.add_flags(spec.flags)
            crisis = (spec.crisis if spec else None) or state.crisis_by_value.get(value)
            if crisis and session.crisis != crisis:
                self._crisis(out, crisis, now)
            if not self._move(session, "answer", value=value):
                return

    def _words_for(self, session: Session, opt: Option) -> tuple[str, ...]:
        """The label in every language plus the pack's synonyms (`syn.<label key>`),
        normalised: memoised per engine (`_words`), as normalising them all again for every
        typed answer was most of the engine's work on it."""
        return self._words(session.state, opt.value, opt.label,
                           opt.spec.label if opt.spec is not None else None, opt.page)

    def _words_of(self, state_name: str, value: str, label: str, spec_label: str | None,
                  page: int | None) -> tuple[str, ...]:
        state = self.flow.states[state_name]
        words = [label]
        if spec_label is not None:
            words += [self.pack.msg(spec_label, lang) for lang in LANGS]
            syn_key = f"syn.{spec_label}"
        elif state.choices_from and page is None:
            item = self.labels[state.choices_from][value]
            words += [item.get(lang) for lang in LANGS]
            syn_key = f"syn.{SYNONYM_GROUP[state.choices_from]}.{value}"
        else:
            return tuple(normalize(w) for w in words)
        if self.pack.has_msg(syn_key):
            words += [str(w) for lang in LANGS for w in self.pack.msg(syn_key, lang)]
        return tuple(normalize(w) for w in words)

    def _reask(self, out: Step, key: str, after_crisis: bool) -> Step:
        session = out.session
        assert session is not None
        if not after_crisis:
            out.replies.append(Text(text=self.t(key, session)))
        out.replies.append(self.ask(session))
        return out

    def _page(self, out: Step, value: str) -> Step:
        session = out.session
        assert session is not None
        state = self.flow.states[session.state]
        items = self.items.get(state.choices_from or "", [])
        try:
            page = int(value[len(PAGE_PREFIX):])
        except ValueError:
            page = -1
        reserve = 1 if session.crisis else 0
        if not items or not 0 <= page * self._page_size(state, len(items), reserve) < len(items):
            return self._reask(out, "common.not_understood", False)
        session.page = page
        out.replies.append(self.ask(session))
        return out

    def _choose(self, out: Step, option: Option, now: datetime) -> Step:
        session = out.session
        assert session is not None
        state = self.flow.states[session.state]
        value = option.value
        if state.kind == "directory":
            return self._directory_category(out, value, now)
        if state.kind == TRIAGE:
            return self._triage_choose(out, value, now)
        if state.kind == "handoff_message" and option.spec and option.spec.next:
            return self._open_case(out, None, now)
        if state.answer == "concerns":
            if value in self.pack.categories and value not in session.concerns:
                session.concerns = [*session.concerns, value]
        elif state.answer:
            session.answers[state.answer] = value
        if option.spec is not None:
            session.add_flags(option.spec.flags)
        crisis = (option.spec.crisis if option.spec else None) or state.crisis_by_value.get(value)
        if crisis and session.crisis != crisis:
            self._crisis(out, crisis, now)
        if not self._move(session, "answer", value=value):
            return self._reask(out, "common.not_understood", False)
        return self._entered(out, now)

    def _entered(self, out: Step, now: datetime) -> Step:
        session = out.session
        assert session is not None
        self._skip_answered(out, now)
        state: StateSpec = self.flow.states[session.state]
        if (self.skips(state) or state.channels) and self._move(session, "skip"):
            return self._entered(out, now)
        if state.kind == "question":
            session.asked += 1
        if state.kind == "results":
            out.replies += self._results(session, now)
            out.events.append("results")
        out.replies.append(self.ask(session))
        return out

    def _results(self, session: Session, now: datetime) -> list[Reply]:
        found = self._match(self.answers(session))
        replies: list[Reply] = [Text(text=self.t("results.intro", session))]
        seen: set[str] = set()

        def once(windows: list[Window]) -> list[Window]:
            """No window twice in one answer, whichever group named it first."""
            fresh = [w for w in windows if w.id not in seen]
            seen.update(w.id for w in fresh)
            return fresh

        urgent = once([m.window for m in found.hotlines if m.urgent])
        if urgent:
            replies.append(self.cards("results.urgent", urgent, session, now, urgent=True))
        windows = once([m.window for m in found.windows]
                       + ([found.centre] if found.centre is not None else []))
        if windows:
            replies.append(self.cards("results.windows", windows, session, now))
        hotlines = once([m.window for m in found.hotlines if not m.urgent])
        if hotlines:
            replies.append(self.cards("results.hotlines", hotlines, session, now))
        if not windows and not hotlines and not urgent:
            replies.append(self.cards("results.hotlines", once(self.general_lines(4)),
                                      session, now))
        if self.answers(session).contact == "chat":
            replies += self._chat_preference(session, now, once)
        return replies

    def _chat_preference(self, session: Session, now: datetime,
                         once: Callable[[list[Window]], list[Window]]) -> list[Reply]:
        """They asked to talk in this chat: say honestly whether and when a person answers,
        and out of office hours which lines answer now."""
        if not (self.handoff and "handoff_consent" in self.flow.states):
            return [Text(text=self.t("results.chat_no_staff", session))]
        replies: list[Reply] = [Text(text=self.t("results.chat_staff", session).format(
            human=self.t("cmd.human", session), when=self._staff_when(session, now)))]
        if not is_open(self.pack.info.office_hours, now):
            lines = once(self.always_open_lines(session))
            if lines:
                replies.append(self.cards("crisis.title", lines, session, now))
        return replies

    def _crisis(self, out: Step, kind: str, now: datetime) -> None:
        """Safety rule 1: the crisis lines first, in this same reply, no tap needed."""
        session = out.session
        assert session is not None
        session.crisis = kind
        lines = self.crisis_lines(kind, now)
        out.replies.append(Text(text=self.t(f"crisis.lead.{kind}", session), urgent=True))
        out.replies.append(self.cards("crisis.title", lines, session, now, urgent=True,
                                      live=True))
        out.replies.append(Text(text=self.t("crisis.after", session), urgent=True))
        out.events.append(f"crisis:{kind}")

    def _maybe(self, out: Step, now: datetime) -> None:
        """The soft tier (bot/crisis_model.py): the rules found nothing in typed words
        (`out.found`, the step's own analysis) that the model finds close to those of people at
        risk. The normal reply stands; one gentle line and at most two 24-hour lines open now go
        just before its question — once a session, never after a crisis reply nor on a flood
        notice, and only when the reply stays within MAX_PARTS.

        In an open case ("handoff:relay") the line is still added (the resident may be writing
        at night, with staff away) and the relay is marked urgent, as a rule hit marks it
        (`_relay`), so staff see it too."""
        session = out.session
        if (self.soft is None or session is None or out.found is None or session.crisis
                or session.soft or not out.replies or not isinstance(out.replies[-1], Question)
                or "flooded" in out.events
                or any(e.startswith("crisis:") for e in out.events)
                or not self.soft.flags(out.found)):
            return
        lines = [w for w in self.crisis_lines("self_harm", now)
                 if w.hours is not None and w.hours.always and not w.only_when][:2]
        added: list[Reply] = [Text(text=self.t("crisis.maybe", session))]
        if lines:
            added.append(self.cards("crisis.title", lines, session, now, live=True))
        replies = [*out.replies[:-1], *added, out.replies[-1]]
        if _parts(replies) > MAX_PARTS:
            return
        out.replies = replies
        session.soft = True
        out.events.append("crisis:maybe")
        if "handoff:relay" in out.events and not out.urgent:
            out.urgent = True
            out.events.append("handoff:urgent")

    def crisis_lines(self, kind: str, now: datetime) -> list[Window]:
        """The crisis lines by the clock: those open now first (the 24-hour lines always are),
        then those closed now, which the cards mark with when they open. A line whose hours
        are unknown (it connects to a local office with its own hours) is left out: nobody in
        crisis should dial a number that may not answer."""
        lines = [w for w in self.pack.crisis_lines(kind) if w.hours is not None]
        return sorted(lines, key=lambda w: not is_open(w.hours, now))  # stable: keeps rank

    def _event(self, out: Step, incoming: Incoming, now: datetime, is_new: bool) -> Step:
        session = out.session
        assert session is not None
        if incoming.value == "first_contact" or (incoming.value == "open" and is_new):
            fresh = self.new_session(incoming.lang or session.lang)
            out.session = fresh
            out.replies.append(self.ask(fresh))
            return out
        if incoming.value == "open":
            # The page was opened again (reload, back, a new tab): show where the person is,
            # rendered from the session alone; the results are computed again from the answers.
            if incoming.lang:
                session.lang = incoming.lang
            out.resumed = session.state != self.flow.start
            if self.flow.states[session.state].kind == "results":
                out.replies += self._results(session, now)
            out.replies.append(self.ask(session))
            return out
        if incoming.value in ("sticker", "media"):
            out.replies.append(Text(text=self.t(f"event.{incoming.value}", session)))
            out.replies.append(self.ask(session))
            return out
        out.replies.append(self.ask(session))
        return out

    def _command(self, out: Step, command: str, now: datetime) -> Step:
        session = out.session
        assert session is not None
        out.events.append(f"command:{command}")
        if command == "restart":
            fresh = self.new_session(session.lang, case=session.case)
            out.session = fresh
            out.replies.append(self.ask(fresh))
        elif command == "stop":
            fresh = self.new_session(session.lang, case=session.case)
            out.session = fresh
            out.replies.append(Text(text=self.t("stop.body", fresh)))
            out.replies.append(Question(
                text=self.t("stop.next", fresh), state=fresh.state,
                choices=[Choice(label=o.label, value=o.value) for o in (
                    self.command_option("restart", fresh),
                    self.command_option("directory", fresh))]))
        elif command == "forget":
            fresh = self.new_session(session.lang)
            out.session = None
            out.forget = True
            out.replies.append(Text(text=self.t("forget.done", fresh)))
            if self.handoff:  # honest about what this cannot delete
                out.replies.append(Text(text=self.t("forget_staff.kept", fresh)))
            out.replies.append(self.ask(fresh))
        elif command == "quick_exit":
            # Like the forget command, at once and for everything: the caller deletes the
            # session and the open case's address (`forget`); the reply says how to clear the phone.
            fresh = self.new_session(session.lang)
            out.session = None
            out.forget = out.quick_exit = True
            out.replies.append(Text(text=self.t("quick_exit.done", fresh)))
            out.replies.append(Question(
                text=self.t("quick_exit.next", fresh), state=fresh.state,
                choices=[Choice(label=o.label, value=o.value)
                         for o in (self.command_option("restart", fresh),)]))
        elif command == "reveal":
            # The service puts the waiting staff messages before this (bot.phonesafe.reveal).
            out.reveal = True
            out.replies.append(self.ask(session))
        elif command in ("direct_on", "direct_off"):
            session.direct = command == "direct_on"
            out.replies.append(Text(text=self.t(f"phonesafe.{command}_done", session)))
            out.replies.append(self.ask(session))
        elif command in ("help", "privacy"):
            out.replies.append(Text(text=self.t(f"{command}.body", session)))
            out.replies.append(self.ask(session))
        elif command in ("lang_en", "lang_ja", "lang_switch"):
            if command == "lang_switch":
                session.lang = "en" if session.lang == "ja" else "ja"
            else:
                session.lang = "en" if command == "lang_en" else "ja"
            out.replies.append(self.ask(session))
        elif command == "directory":
            if session.state != "directory":
                session.resume = session.state
                self._move(session, "open_directory")
            out.replies.append(self.ask(session))
        elif command == "resume":
            target = session.resume or self.flow.start
            if session.state == "directory" or session.state in HANDOFF_STATES:
                self._move(session, "resume", value=target)
            session.resume = None
            out.replies.append(self.ask(session))
        elif command == "human":
            if session.case:
                out.replies.append(Text(text=self.t("handoff.relayed", session)))
                out.replies.append(self.ask(session))
            elif self.handoff and "handoff_consent" in self.flow.states:
                if session.state not in HANDOFF_STATES:
                    session.resume = session.state
                self._move(session, "ask_consent")
                out.replies += self._when_staff_answer(session, now, "handoff.consent")
                out.replies.append(self.ask(session))
            else:
                out.replies += self._human(session, now)
                out.replies.append(self.ask(session))
        return out

    def _human(self, session: Session, now: datetime) -> list[Reply]:
        """Until staff handoff is wired, say how to reach a person by phone (never a dead end)."""
        found = self._match(self.answers(session), max_windows=3, max_hotlines=2)
        windows = ([found.centre] if found.centre else []) + [m.window for m in found.windows]
        if not windows:
            windows = self.general_lines(3)
        return [Text(text=self.t("human.phone", session)),
                self.cards("human.title", windows, session, now)]

    def always_open_lines(self, session: Session | None = None) -> list[Window]:
        """The 24-hour lines (110/119 aside): for nights, holidays and outages; given a
        session, only those whose audience admits the person (no children's line for an
        adult)."""
        answers = self.answers(session) if session is not None else Answers()
        return sorted((w for w in self.pack.hotlines if w.hours and w.hours.always
                       and not w.only_when and fits(w, answers)), key=lambda w: (-w.rank, w.id))

    def general_lines(self, limit: int) -> list[Window]:
        """Lines for anyone, whatever the worry: when nothing more specific fits."""
        return [m.window for m in rank(self.pack, Answers(concerns=("loneliness",)),
                                       "hotline", limit)]

    def _directory_category(self, out: Step, category: str, now: datetime) -> Step:
        session = out.session
        assert session is not None
        windows = sorted((w for w in self.pack.windows.values()
                          if category in w.categories and not w.only_when and not w.ward),
                         key=lambda w: (w.kind != "hotline", -w.rank, w.id))
        out.replies.append(self.cards("directory.title", windows, session, now))
        out.replies.append(self.ask(session))
        return out

    # -- handoff to staff ----------------------------------------------------------------------
    def _when_staff_answer(self, session: Session, now: datetime, lead: str,
                           **fields: str) -> list[Reply]:
        """When staff will answer (office hours, Japanese holidays); at night, the 24h lines."""
        when = self._staff_when(session, now)
        text = Text(text=self.t(lead, session).format(when=when, **fields))
        if is_open(self.pack.info.office_hours, now):
            return [text]
        return [text, self.cards("crisis.title", self.always_open_lines(session),
                                   session, now)]

    def _staff_when(self, session: Session, now: datetime) -> str:
        """"Today", or the next opening of the office, in the person's language."""
        office = self.pack.info.office_hours
        if is_open(office, now):
            return self.t("handoff.when_open", session)
        opening = next_opening(office, now)
        if opening is None:  # no opening in the next two weeks: the 24h lines only
            return ""
        weekday = self.t(f"hours.day.{opening.strftime('%a').lower()}", session)
        day = self.t("handoff.date", session).format(
            month=opening.month, day=opening.day, weekday=weekday)
        return self.t("handoff.when_closed", session).format(
            day=day, time=f"{opening.hour}:{opening.minute:02d}")

    def _open_case(self, out: Step, message: str | None, now: datetime) -> Step:
        session = out.session
        assert session is not None
        number = self.case_number()
        out.handoff = CaseRequest(
            number=number, lang=session.lang, categories=list(session.concerns),
            summary=self.staff_summary(session), ward=self.answers(session).ward,
            urgent=bool(session.crisis) or "danger_now" in session.flags, message=message)
        session.case = number
        session.resume = None
        self._move(session, "answer", value="send")
        out.events.append("handoff:open")
        out.replies += self._when_staff_answer(session, now, "handoff.receipt", number=number)
        out.replies.append(self.ask(session))
        return out

    def case_number(self, seed: bytes | None = None) -> str:
        """A short number a person can read out on the phone, e.g. K-4F7Q.

        Random, or derived from `seed` (at least 4 bytes) so that a retried message gets the
        same number again (bot.service)."""
        if seed is None:
            chars = [secrets.choice(CASE_ALPHABET) for _ in range(4)]
        else:
            chars = [CASE_ALPHABET[b % len(CASE_ALPHABET)] for b in seed[:4]]
        return f"{self.pack.info.case_prefix}-" + "".join(chars)

    def staff_summary(self, session: Session) -> list[tuple[str, str]]:
        """The answers as staff read them (Japanese): (question, answer) pairs."""
        lines: list[tuple[str, str]] = []
        for state in self.flow.states.values():
            if state.kind != "question" or not state.answer:
                continue
            question = str(self.pack.msg(state.prompt, "ja")).splitlines()[0]
            if state.answer == "concerns":
                if state.choices_from and not state.repeat and session.concerns:
                    labels = [self.pack.categories[c].label.ja for c in session.concerns
                              if c in self.pack.categories]
                    lines.append((question, self.pack.msg("common.list_separator", "ja")
                                  .join(labels)))
                continue
            value = session.answers.get(state.answer)
            if value is None:
                continue
            if state.choices_from:
                label = self.labels[state.choices_from].get(value)
                text = label.ja if label else str(self.pack.msg(
                    next(c.label for c in state.extra if c.value == value), "ja"))
            else:
                text = str(self.pack.msg(
                    next(c.label for c in state.choices if c.value == value), "ja"))
            lines.append((question, text))
        return lines

    def _relay(self, out: Step, text: str, crisis: bool) -> Step:
        """In an open case, what the resident writes goes to staff (after any crisis reply)."""
        session = out.session
        assert session is not None
        out.relay = text
        out.events.append("handoff:relay")
        if crisis:
            out.urgent = True
            out.events.append("handoff:urgent")
        out.replies.append(Text(text=self.t("handoff.relayed", session)))
        out.replies.append(self.ask(session))
        return out

    def _from_staff(self, session: Session | None, incoming: Incoming) -> Step:
        """A staff answer, or the case closed or expired: said to the resident, with a way on.

        A staff answer changes nothing stored (a person without a session keeps none); the
        end of a case gives a fresh session (the rate count kept).
        """
        current = session.clone() if session is not None else self.new_session(
            incoming.lang or "ja")
        if incoming.kind == "staff":
            if current.direct:
                return Step(session=session.clone() if session is not None else None,
                            replies=self.staff_reply(current, incoming.value),
                            events=["handoff:staff"])
            # Phone-safe (issue 11): a neutral notice; the text waits for its open button
            # (`notice.open`).
            current.unseen = True
            return Step(session=current if session is not None else None,
                        replies=self.notice(current), events=["handoff:staff", "notice"],
                        unseen=[("staff", incoming.value)])
        expired = incoming.value == "case_expired"
        fresh, replies = self.close_case(current, expired=expired)
        step = Step(session=fresh, replies=replies, events=[f"handoff:{incoming.value}"])
        if not current.direct:
            fresh.unseen = True
            step.replies, step.unseen = self.notice(fresh), [
                ("expired" if expired else "closed", "")]
            step.events.append("notice")
        return step
    def case_refused(self, step: Step, now: datetime) -> None:
        """Too many cases from one address: no case; the phone windows instead, after any
        crisis reply — never a dead end."""
        session = step.session
        assert session is not None
        session.case = None
        urgent = [r for r in step.replies if getattr(r, "urgent", False)]
        step.handoff = None
        step.replies = [*urgent, Text(text=self.t("handoff_limit.refused", session)),
                        *self._human(session, now), self.ask(session)]
        step.events = [e for e in step.events if e != "handoff:open"] + ["handoff:refused"]

    def staff_reply(self, session: Session, text: str) -> list[Reply]:
        """A staff answer, as the resident sees it: prefixed, with a way on."""
        return [Text(text=self.t("handoff.staff_prefix", session) + text), self.ask(session)]

    def notice(self, session: Session) -> list[Reply]:
        """The neutral notice that stands for a staff message on the phone (issue 11): nothing
        an onlooker could read into; tapping its open button shows the content, by reply."""
        return [Question(text=self.t("notice.text", session), state=session.state,
                         choices=[Choice(label=self.t("notice.open", session),
                                         value=f"{CMD_PREFIX}reveal")])]

    def revealed(self, session: Session, items: list[tuple[str, str]]) -> list[Reply]:
        """What neutral notices stood for, in order: staff messages, the end of the case."""
        replies: list[Reply] = []
        for kind, text in items:
            if kind == "staff":
                replies.append(Text(text=self.t("handoff.staff_prefix", session) + text))
            elif kind in ("closed", "expired"):
                replies.append(Text(text=self.t(f"handoff.{kind}", session)))
        if not replies:
            replies.append(Text(text=self.t("notice.none", session)))
        return replies

    def close_case(self, session: Session,
                   expired: bool = False) -> tuple[Session, list[Reply]]:
        """Staff resolved the case (or it expired unanswered): tell the resident, and how to
        start again. The expiry notice may arrive days later on a shared phone, so its wording
        says nothing of what the conversation was about."""
        fresh = self.new_session(session.lang)
        fresh.rate_minute, fresh.rate_count = session.rate_minute, session.rate_count
        fresh.direct, fresh.unseen = session.direct, session.unseen
        replies: list[Reply] = [
            Text(text=self.t("handoff.expired" if expired else "handoff.closed", fresh)),
            Question(text=self.t("stop.next", fresh), state=fresh.state,
                     choices=[Choice(label=o.label, value=o.value) for o in (
                         self.command_option("restart", fresh),
                         self.command_option("directory", fresh))])]
        return fresh, replies

    # -- degraded mode (Redis unreachable) -------------------------------------------------
    def degraded_step(self, incoming: Incoming, now: datetime,
                      notice: str = "degraded.notice") -> Step:
        """Answer without any stored state: crisis lines, 24-hour lines and the directory.

        The directory still works because a tap carries the state it belongs to. `notice` says
        why (Redis down, or too many new conversations from one address).
        """
        session = self.new_session()
        if incoming.kind == "tap" and incoming.state == "directory":
            session.enter("directory")
            step = self.step(session, incoming, now)
        else:
            step = Step(session=session, replies=[])
            text = incoming.value if incoming.kind == "text" else ""
            crisis = self.detector.detect(text) if text else None
            if crisis is not None:
                self._crisis(step, crisis.kind, now)
            session.enter("directory")
            step.replies.append(Text(text=self.t(notice, session)))
            step.replies.append(self.cards("crisis.title", self.always_open_lines(), session,
                                           now))
            step.replies.append(self.ask(session))
        step.events.append("degraded")
        step.session = None
        return step
