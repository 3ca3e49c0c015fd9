"""Crisis detection on any free text, in any state (README, "Safety and privacy").

Terms, patterns and exclusions are data (the content pack's `crisis.yaml`), so staff can extend
them without code. Text is normalised once; then a single "gate" regex says whether any entry
could match, so an ordinary message costs one search. Only when something matches are the
entries tried one by one: that is where exclusions (hyperbole covering the match), the kind
priority and the rule id are settled.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot import logs
from bot.language import (
    ALNUM,
    SAFE_LOADER,
    SENTENCE_ENDS,
    Analysis,
    analyze,
    fold_pattern,
    lemma_form,
    normalize,
)

CRISIS_KINDS = ("self_harm", "violence", "child_harm")
# When several kinds match, the most specific danger chooses the lines offered: a child at risk,
# then danger from someone else, then self-harm. Entries marked `generic` (a bare cry for help)
# decide the kind only when no other entry matched.
PRIORITY = ("child_harm", "violence", "self_harm")

# -- normalisation: bot/language.py (one layer for crisis, triage and choices) ------------
_ALNUM = ALNUM
_fold_pattern = fold_pattern


def _term_source(norm: str) -> str:
    """A literal term as a regex. Latin words get word edges, so "od" finds "OD" followed by
    Japanese but not "good", and may be typed with or without the space between them."""
    source = " ?".join(re.escape(word) for word in norm.split(" "))
    if norm[0] in _ALNUM:
        source = "(?<![a-z0-9])" + source
    if norm[-1] in _ALNUM:
        source += "(?![a-z0-9])"
    return source


_VOCAB_REF = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _uncapture(source: str) -> str:
    """Capturing groups as non-capturing ones: the combined regex runs markedly faster."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(source):
        char = source[i]
        if char == "\\":
            out.append(source[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            j = i + 1 + (source[i + 1:i + 2] == "^")
            if source[j:j + 1] == "]":  # a "]" first in a class is a literal
                out.append(source[i:j + 1])
                i = j + 1
                continue
        elif char == "(" and source[i + 1:i + 2] != "?":
            out.append("(?:")
            i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


try:  # the regex parser, to learn which characters an entry can start with (see _gate)
    from re import _constants as _sre
    from re import _parser as _sre_parser
except ImportError:  # pragma: no cover - a Python without them: no dispatch, still correct
    _sre_parser = None


def _first_chars(source: str) -> frozenset[str] | None:
    """The characters a match of `source` can start with; None when unknown or unbounded."""
    if _sre_parser is None:
        return None
    try:
        chars, nullable = _first(_sre_parser.parse(source))
    except Exception as exc:  # an unusual construct: let the entry run everywhere
        logs.failure("safety.first_chars", exc, logging.DEBUG)
        return None
    return None if chars is None or nullable else frozenset(chars)


def _first(items: Iterable[Any]) -> tuple[set[str] | None, bool]:
    """(first characters, can be empty) of a parsed sequence; None = cannot tell."""
    out: set[str] = set()
    for op, av in items:
        if op is _sre.LITERAL:
            return out | {chr(av)}, False
        if op is _sre.IN:
            chars = _charset(av)
            return (None if chars is None else out | chars), False
        if op is _sre.AT or op is _sre.ASSERT or op is _sre.ASSERT_NOT:
            continue  # zero width: the next item consumes the first character
        if op is _sre.BRANCH:
            alternatives = [_first(alt) for alt in av[1]]
        elif op is _sre.SUBPATTERN:
            alternatives = [_first(av[-1])]
        elif op in (_sre.MAX_REPEAT, _sre.MIN_REPEAT, _sre.POSSESSIVE_REPEAT):
            chars, nullable = _first(av[2])
            alternatives = [(chars, nullable or av[0] == 0)]
        else:
            return None, False
        nullable = False
        for chars, empty in alternatives:
            if chars is None:
                return None, False
            out |= chars
            nullable |= empty
        if not nullable:
            return out, False
    return out, True


def _charset(items: Iterable[Any]) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        if op is _sre.LITERAL:
            chars.add(chr(av))
        elif op is _sre.RANGE and av[1] - av[0] <= 256:
            chars.update(map(chr, range(av[0], av[1] + 1)))
        else:  # a category (\w), a negation or a wide range
            return None
    return chars


def _gate(sources: list[str]) -> list[re.Pattern[str]]:
    """Regexes that find whether any of `sources` matches anywhere, fast.

    Most entries start with a group such as (kill|...): a plain alternation of them makes the
    regex engine try every entry at every position. Here each alternative starts with the
    characters its entries can start with, and checks the entries by a lookahead from there;
    the engine skips positions cheaply and tries only the entries that can start at each.
    Entries whose first characters cannot be told go into a second, plain regex.
    """
    by_char: dict[str, list[str]] = {}
    anywhere: list[str] = []
    for source in sources:
        chars = _first_chars(source)
        for char in sorted(chars or ()):
            by_char.setdefault(char, []).append(_uncapture(source))
        if chars is None:
            anywhere.append(_uncapture(source))
    groups: dict[tuple[str, ...], list[str]] = {}
    for char, alternatives in by_char.items():
        groups.setdefault(tuple(alternatives), []).append(char)
    branches = [_dispatch(chars, "|".join(alternatives)) for alternatives, chars in groups.items()]
    gate = [re.compile("|".join(branches))] if branches else []
    if anywhere:
        gate.append(re.compile("|".join(f"(?:{a})" for a in anywhere)))
    return gate


def _dispatch(chars: Iterable[str], source: str) -> str:
    """Match one of `chars` where `source` matches from that character on (a lookahead run
    from just before it); the regex engine scans for such characters quickly."""
    chars = sorted(chars)
    start = re.escape(chars[0]) if len(chars) == 1 else \
        "[" + "".join(map(re.escape, chars)) + "]"
    return f"{start}(?<=(?=(?:{source}))(?s:.))"


# -- the file ---------------------------------------------------------------------------------
class Exclusion(BaseModel):
    """A term or pattern that cancels a crisis match lying wholly inside it (hyperbole), or
    covering the match's `act` when its entry names one."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    term: str | None = None
    regex: str | None = None
    # "lemmas": match on the dictionary forms (bot/language.py), so that every conjugation and
    # kana spelling of a verb is one entry; "surface" (default): on the normalised text as typed.
    form: Literal["surface", "lemmas"] = "surface"

    @model_validator(mode="after")
    def _one_of(self) -> Exclusion:
        if (self.term is None) == (self.regex is None):
            raise ValueError(f"entry {self.id!r}: give either `term` or `regex` (exactly one)")
        return self


class Entry(Exclusion):
    """One crisis term or pattern. `generic`: a bare cry for help that names no danger.
    `act`: the part of a match that carries the danger (a regex in the entry's form, usually
    the verb at the end of a wide-gap pattern): an exclusion covering it cancels the match even
    when the words in the gap lie outside the exclusion ("mother tapped my shoulder to wake me")."""

    generic: bool = False
    act: str | None = None
    # `unless`: a regex (same form and vocab) for the everyday context that defuses the entry:
    # by default only in the sentence of the match ("I cut my wrist. I don't even want to cook
    # any more" is not a kitchen accident); `unless_in: message` for a context said anywhere,
    # before or after
    # ("I retire today. … Goodbye", "goodbye … see you next year").
    unless: str | None = None
    unless_in: Literal["sentence", "message"] = "sentence"


class CrisisFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    vocab: dict[str, list[str]] = Field(default_factory=dict)
    kinds: dict[str, list[Entry]]
    exclusions: list[Exclusion] = Field(default_factory=list)

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: dict[str, list[Entry]]) -> dict[str, list[Entry]]:
        for name in kinds:
            if name not in CRISIS_KINDS:
                raise ValueError(f"unknown crisis kind {name!r} (the kinds are "
                                 f"{', '.join(CRISIS_KINDS)})")
        return kinds

    @field_validator("vocab")
    @classmethod
    def _vocab_names(cls, vocab: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, words in vocab.items():
            if not _VOCAB_REF.fullmatch("{" + name + "}"):
                raise ValueError(f"vocab name {name!r}: use lower-case letters, digits and _")
            if not [w for w in words if normalize(w)]:
                raise ValueError(f"vocab {name!r} has no words")
        return vocab

    @model_validator(mode="after")
    def _entries_compile(self) -> CrisisFile:
        """Every entry is checked here, so one run names every broken entry."""
        errors: list[str] = []
        seen: set[str] = set()
        vocab = _vocab_sources(self.vocab)
        places = [(f"kinds.{kind}[{i}]", entry) for kind, entries in self.kinds.items()
                  for i, entry in enumerate(entries)]
        places += [(f"exclusions[{i}]", entry) for i, entry in enumerate(self.exclusions)]
        for where, entry in places:
            name = f"{where} ({entry.id})"
            if entry.id in seen:
                errors.append(f"{name}: id {entry.id!r} is used twice")
            seen.add(entry.id)
            try:
                _entry_source(entry, vocab)
                if isinstance(entry, Entry):
                    for part in (entry.act, entry.unless):
                        if part is not None:
                            _part_source(entry, part, vocab)
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise ValueError("\n".join(errors))
        return self


class CrisisFileError(ValueError):
    """crisis.yaml cannot be used; the message names each broken entry."""


# In a pattern on lemmas, {gap} stands for up to four words in between.
LEMMA_GAP = r"(?: \S+){0,4}"


@dataclass(frozen=True)
class Vocab:
    """The word lists as regex alternatives: on the surface, and as lemma forms."""

    surface: dict[str, str]
    lemmas: dict[str, str]


def _alternatives(forms: Iterable[str]) -> str:
    return "(?:" + "|".join(map(re.escape, sorted({f for f in forms if f},
                                                 key=lambda n: (-len(n), n)))) + ")"


def _vocab_sources(vocab: dict[str, list[str]]) -> Vocab:
    return Vocab(surface={name: _alternatives(map(normalize, words))
                          for name, words in vocab.items()},
                 lemmas={name: _alternatives(map(lemma_form, words))
                         for name, words in vocab.items()})


def _entry_source(entry: Exclusion, vocabs: Vocab) -> tuple[str, bool]:
    """(regex source over normalised text or lemmas, is it a literal term). Raises ValueError.

    On lemmas, an entry matches whole words only: the source is wrapped in word edges."""
    if entry.form == "lemmas":
        if entry.term is not None:
            form = lemma_form(entry.term)
            if not form:
                raise ValueError(f"term {entry.term!r} has no words")
            return f"(?<= ){re.escape(form)}(?= )", True
        source, _ = _regex_source(entry, {**vocabs.lemmas, "gap": LEMMA_GAP})
        # `^` may open it (`^(?!.*X).*Y`, "Y unless X"): the lemmas start with a space.
        return f"(?:(?<= )|^)(?:{source})(?= )", False
    vocab = vocabs.surface
    if entry.term is not None:
        norm = normalize(entry.term)
        if len(norm) < 2:
            raise ValueError(f"term {entry.term!r} is {len(norm)} character(s) once normalised; "
                             f"write at least two")
        return _term_source(norm), True
    return _regex_source(entry, vocab)


def _part_source(entry: Entry, regex: str | None, vocabs: Vocab) -> str | None:
    """The regex source of an entry's `act` or `unless` (same form and vocab as the entry)."""
    if regex is None:
        return None
    return _entry_source(Exclusion(id=entry.id, regex=regex, form=entry.form), vocabs)[0]


def _regex_source(entry: Exclusion, vocab: dict[str, str]) -> tuple[str, bool]:
    raw = entry.regex or ""
    if re.search(r"\(\?P|\\[1-9]", raw):
        raise ValueError(f"regex {raw!r}: named groups and back-references are not supported")
    if re.search(r"[A-Z]", re.sub(r"\\.", "", raw)):
        raise ValueError(f"regex {raw!r}: write letters in lower case (text is lower-cased)")

    def expand(found: re.Match[str]) -> str:
        if found.group(1) not in vocab:
            raise ValueError(f"regex {raw!r} uses {{{found.group(1)}}}, which is not in vocab")
        return vocab[found.group(1)]

    source = _VOCAB_REF.sub(expand, _fold_pattern(raw))
    try:
        compiled = re.compile(source)
        grouped = re.compile(f"(?:{_uncapture(source)})")
    except re.error as exc:
        raise ValueError(f"regex {raw!r} does not compile: {exc}") from None
    if grouped.groups or compiled.match(""):
        raise ValueError(f"regex {raw!r} matches empty text or has unsupported groups")
    return source, False


# -- detection --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CrisisMatch:
    kind: str
    rule: str  # the id of the entry that matched


@dataclass(frozen=True)
class _Rule:
    kind: str  # "" for an exclusion
    id: str
    regex: re.Pattern[str]
    finder: re.Pattern[str]  # finds where `regex` matches, quickly (see _dispatch)
    on: str = "surface"
    act: re.Pattern[str] | None = None  # the dangerous part of a match (Entry.act)
    unless: re.Pattern[str] | None = None  # context that defuses the entry (Entry.unless)
    anchored: re.Pattern[str] | None = None  # the entry, made to end where the text ends
    unless_in: str = "sentence"  # where `unless` is looked for (Entry.unless_in)

    @classmethod
    def build(cls, kind: str, id: str, source: str, on: str = "surface",
              act: str | None = None, unless: str | None = None,
              unless_in: str = "sentence") -> _Rule:
        first = _first_chars(source)
        finder = source if first is None else _dispatch(first, _uncapture(source))
        # the entry ending exactly at the end of a text cut just after an act (see longer())
        anchored = None if act is None else re.compile(
            f"(?:{source})" + (r"(?= \Z)" if on == "lemmas" else r"\Z"))
        return cls(kind, id, re.compile(source), re.compile(finder), on,
                   None if act is None else re.compile(act),
                   None if unless is None else re.compile(unless), anchored, unless_in)

    def longer(self, text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Matches from `start` that end on a later act ("mother tapped my shoulder, then hit me":
        the tap is excluded, the beating that follows is not), shortest first."""
        if self.act is None or self.anchored is None:
            return
        for act in self.act.finditer(text, end):
            cut = act.end() + (self.on == "lemmas")
            match = self.anchored.match(text[:cut], start)
            if match is not None:
                yield start, match.end()

    def act_spans(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """Where the act ends the match text[start:end] (empty without an act): the act is the
        last part of the match, so words in a gap before it never stand for it."""
        if self.act is None:
            return []
        return [m.span() for m in self.act.finditer(text, start, end + 1)
                if m.end() == end and m.end() > m.start()]

    def matches(self, text: str) -> Iterator[re.Match[str]]:
        """Every match, one per start position (overlapping ones included)."""
        found = self.finder.search(text)
        while found is not None:
            match = self.regex.match(text, found.start())
            if match is not None:  # always, unless the finder is wider than the regex
                yield match
            found = self.finder.search(text, found.start() + 1)


_DETECTORS: dict[tuple[str, str], CrisisDetector] = {}


class CrisisDetector:
    """Compiled once from crisis.yaml; detect() is safe to call from any thread."""

    def __init__(self, spec: CrisisFile):
        self.version = spec.version
        vocab = _vocab_sources(spec.vocab)
        sources: dict[str, list[str]] = {"surface": [], "lemmas": []}
        specific: list[_Rule] = []
        generic: list[_Rule] = []
        for kind in PRIORITY:
            for entry in spec.kinds.get(kind, []):
                source = _entry_source(entry, vocab)[0]
                sources[entry.form].append(source)
                rule = _Rule.build(kind, entry.id, source, entry.form,
                                   _part_source(entry, entry.act, vocab),
                                   _part_source(entry, entry.unless, vocab), entry.unless_in)
                (generic if entry.generic else specific).append(rule)
        self._gates = {on: _gate(found) for on, found in sources.items()}
        self._rules = (*specific, *generic)
        self._exclusions = tuple(_Rule.build("", e.id, _entry_source(e, vocab)[0], e.form)
                                 for e in spec.exclusions)

    @classmethod
    def from_file(cls, path: Path) -> CrisisDetector:
        """Compiled once per file version: the cities of one deployment share the common
        terms (detect() keeps no state, so one detector serves them all)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CrisisFileError(f"{path.name}: cannot be read: {exc}") from None
        key = (str(path.resolve()), text)
        if key not in _DETECTORS:
            if len(_DETECTORS) >= 8:  # a few versions at a time are all a process needs
                _DETECTORS.clear()
            _DETECTORS[key] = cls._parse(path, text)
        return _DETECTORS[key]

    @classmethod
    def _parse(cls, path: Path, text: str) -> CrisisDetector:
        try:
            data = yaml.load(text, Loader=SAFE_LOADER)
        except yaml.YAMLError as exc:
            raise CrisisFileError(f"{path.name}: not valid YAML: {exc}") from None
        try:
            return cls(CrisisFile.model_validate(data))
        except ValidationError as exc:
            raise CrisisFileError("\n".join(_describe(path.name, e) for e in exc.errors())) \
                from None

    def detect(self, text: str | Analysis) -> CrisisMatch | None:
        """The first entry (by kind priority, then file order) matching outside exclusions,
        on the normalised surface or on the lemmas. Takes text or its Analysis (so the engine
        analyses a message once for triage and crisis alike)."""
        if not text:
            return None
        found = text if isinstance(text, Analysis) else analyze(text)
        texts = {"surface": found.norm, "lemmas": found.lemmas}
        if not any(gate.search(texts[on]) for on, gates in self._gates.items() for gate in gates):
            return None
        return self._scan(found)

    def _scan(self, found: Analysis) -> CrisisMatch | None:
        """Entry by entry: the first match that no exclusion (on the same text) covers — all of
        it, or, for an entry with an `act`, the act ending it — of an entry whose `unless`
        context is absent from the message."""
        texts = {"surface": found.norm, "lemmas": found.lemmas}
        covers: dict[str, list[tuple[int, int]]] | None = None
        sentences = _Sentences(found)
        for rule in self._rules:
            if rule.unless is not None and rule.unless_in == "message" \
                    and rule.unless.search(texts[rule.on]):
                continue
            for match in rule.matches(texts[rule.on]):
                if covers is None:
                    covers = {on: [] for on in texts}
                    for ex in self._exclusions:
                        covers[ex.on] += [m.span() for m in ex.matches(texts[ex.on])]
                text = texts[rule.on]
                for start, end in (match.span(), *rule.longer(text, *match.span())):
                    spans = [(start, end), *rule.act_spans(text, start, end)]
                    if any(a <= x and y <= b for a, b in covers[rule.on] for x, y in spans):
                        continue
                    if rule.unless is not None and rule.unless_in == "sentence" and all(
                            rule.unless.search(s) for s in sentences.around(rule.on,
                                                                            text[start:end])):
                        continue
                    return CrisisMatch(kind=rule.kind, rule=rule.id)
        return None


_SENTENCE_END = re.compile(f"[{re.escape(SENTENCE_ENDS)}]+")


class _Sentences:
    """A message's sentences, each normalised and lemmatised like the whole (the normalised
    text has lost its punctuation, so the sentence of a match is found by its words). Built
    only when a sentence-scoped `unless` is asked about — a match, the rare path."""

    def __init__(self, found: Analysis):
        self._found = found
        self._parts: dict[str, list[str]] = {}

    def around(self, on: str, matched: str) -> list[str]:
        """The sentences holding `matched` (in the form `on`: a context defuses only if every
        one of them has it); the whole message when none does (the match spans sentences —
        the context then counts wherever it is, as with `unless_in: message`)."""
        if on not in self._parts:
            raw = [s for s in _SENTENCE_END.split(self._found.text) if s.strip()]
            self._parts[on] = ([normalize(s) for s in raw] if on == "surface" else
                               [analyze(s).lemmas for s in raw])
        words = matched.strip()
        inside = [s for s in self._parts[on] if words and words in s]
        return inside or [self._found.norm if on == "surface" else self._found.lemmas]


def _describe(filename: str, error: Any) -> str:
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    message = str(error["msg"]).removeprefix("Value error, ")
    prefix = f"{filename}: {loc}: " if loc else f"{filename}: "
    return "\n".join(prefix + line for line in message.splitlines())


# -- evaluation -------------------------------------------------------------------------------
@dataclass
class EvalReport:
    recall: float
    false_positive_rate: float
    misses: list[str]
    false_positives: list[str]
    n_risk: int
    n_ordinary: int
    wrong_kind: list[str] = field(default_factory=list)  # "text -> found (expected ...)"
    rules: dict[str, str] = field(default_factory=dict)  # false positive -> "kind: rule id"

    def format(self) -> str:
        """Plain report for developers: the figures, then every miss and false positive."""
        caught = self.n_risk - len(self.misses)
        lines = [
            f"risk phrasings:     {self.n_risk}",
            f"ordinary phrasings: {self.n_ordinary}",
            f"recall:             {self.recall:.1%}  ({caught}/{self.n_risk})",
            f"false positives:    {self.false_positive_rate:.1%}  "
            f"({len(self.false_positives)}/{self.n_ordinary})",
        ]
        for title, items in (("missed", self.misses), ("false positive", self.false_positives),
                             ("wrong kind", self.wrong_kind)):
            for item in items:
                rule = f"  [{self.rules[item]}]" if item in self.rules else ""
                lines.append(f"  {title}: {item}{rule}")
        return "\n".join(lines)


def evaluate(detector: CrisisDetector, *eval_paths: Path) -> EvalReport:
    """Recall on the `risk` phrasings (and whether the kind is right), false positives on the
    `ordinary` ones, over one or more evaluation files. A risk item's `kind` may be a list of
    acceptable kinds; an ordinary item is a string or {text: ...}."""
    risk: list[dict[str, Any]] = []
    ordinary: list[str] = []
    for eval_path in eval_paths:
        data = yaml.load(Path(eval_path).read_text(encoding="utf-8"), Loader=SAFE_LOADER)
        risk += data["risk"]
        ordinary += [o["text"] if isinstance(o, dict) else o for o in data["ordinary"]]
    misses: list[str] = []
    wrong: list[str] = []
    for item in risk:
        expected = item["kind"] if isinstance(item["kind"], list) else [item["kind"]]
        unknown = set(expected) - set(CRISIS_KINDS)
        if unknown:
            raise ValueError(f"{item['text']!r} expects unknown kind(s) {unknown}")
        found = detector.detect(str(item["text"]))
        if found is None:
            misses.append(str(item["text"]))
        elif found.kind not in expected:
            wrong.append(f"{item['text']} -> {found.kind} [{found.rule}] "
                         f"(expected {'/'.join(expected)})")
    false_positives: list[str] = []
    rules: dict[str, str] = {}
    for text in map(str, ordinary):
        found = detector.detect(text)
        if found is not None:
            false_positives.append(text)
            rules[text] = f"{found.kind}: {found.rule}"
    return EvalReport(
        recall=1 - len(misses) / len(risk) if risk else 1.0,
        false_positive_rate=len(false_positives) / len(ordinary) if ordinary else 0.0,
        misses=misses, false_positives=false_positives, n_risk=len(risk),
        n_ordinary=len(ordinary), wrong_kind=wrong, rules=rules)
