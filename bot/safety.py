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
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot import logs

CRISIS_KINDS = ("self_harm", "violence", "child_harm")
# When several kinds match, the most specific danger chooses the lines offered: a child at risk,
# then danger from someone else, then self-harm. Entries marked `generic` (a bare cry for help)
# decide the kind only when no other entry matched.
PRIORITY = ("child_harm", "violence", "self_harm")

# -- normalisation --------------------------------------------------------------------------
# Stretching marks, dropped so a stretched word matches its plain form: the long-vowel mark and
# the small vowels a i u e o, in both scripts.
_STRETCH = "\u30fc" + "".join(chr(c) for c in (*range(0x3041, 0x304A, 2),
                                               *range(0x30A1, 0x30AA, 2)))
_KANA = {k: k - 0x60 for k in range(0x30A1, 0x30F7)}  # katakana -> hiragana
_PATTERN_FOLD: dict[int, int | None] = {**_KANA, **dict.fromkeys(map(ord, _STRETCH))}
# Apostrophes go too, so "don't" and "dont" are one word.
_TEXT_FOLD: dict[int, int | None] = {**_PATTERN_FOLD,
                                     **dict.fromkeys(map(ord, "'`\u00b4\u2018\u2019"))}
# Runs of characters the fold tables change: folding only them is several times faster than
# translating the whole text.
_FOLDABLE = re.compile("[\u3041\u3043\u3045\u3047\u3049\u30a1-\u30fc'`\u00b4\u2018\u2019]+")
_PUNCT = re.compile(r"[\W_]+")
# A space not between two Latin letters or digits (written to start with the literal space).
_LONE_SPACE = re.compile(r" (?:(?![a-z0-9])|(?<![a-z0-9] ))")
_REPEAT = re.compile(r"(.)\1\1+")
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def normalize(text: str) -> str:
    """The one form every term, pattern and message is matched in, so that the ways people
    type on phones (half-width kana, katakana for emphasis, stretched words, stray spaces and
    emoji) all meet the same terms.

    NFKC (half-width kana to full width, full-width letters and digits to ASCII); lower case;
    katakana to hiragana; the long-vowel mark and the small vowels a i u e o dropped, in both
    scripts (a stretched word is the plain word); apostrophes dropped; spaces, punctuation and
    emoji dropped, except one space between two Latin words or numbers, which keeps English
    word edges; a character repeated three or more times squeezed to one (doubles stay).
    """
    folded = _FOLDABLE.sub(_fold_run, unicodedata.normalize("NFKC", text).lower())
    return _REPEAT.sub(r"\1", _LONE_SPACE.sub("", _PUNCT.sub(" ", folded)))


def _fold_run(found: re.Match[str]) -> str:
    return found.group().translate(_TEXT_FOLD)


def _fold_pattern(source: str) -> str:
    """Patterns are written naturally (katakana, full-width letters) but run on normalised text:
    fold their kana the same way. Case is left alone: regex escapes such as \\S depend on it."""
    return unicodedata.normalize("NFKC", source).translate(_PATTERN_FOLD)


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
    """A term or pattern that cancels a crisis match lying wholly inside it (hyperbole)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    term: str | None = None
    regex: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Exclusion:
        if (self.term is None) == (self.regex is None):
            raise ValueError(f"entry {self.id!r}: give either `term` or `regex` (exactly one)")
        return self


class Entry(Exclusion):
    """One crisis term or pattern. `generic`: a bare cry for help that names no danger."""

    generic: bool = False


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
            except ValueError as exc:
                errors.append(f"{name}: {exc}")
        if errors:
            raise ValueError("\n".join(errors))
        return self


class CrisisFileError(ValueError):
    """crisis.yaml cannot be used; the message names each broken entry."""


def _vocab_sources(vocab: dict[str, list[str]]) -> dict[str, str]:
    sources = {}
    for name, words in vocab.items():
        norms = sorted({n for n in map(normalize, words) if n}, key=lambda n: (-len(n), n))
        sources[name] = "(?:" + "|".join(map(re.escape, norms)) + ")"
    return sources


def _entry_source(entry: Exclusion, vocab: dict[str, str]) -> tuple[str, bool]:
    """(regex source over normalised text, is it a literal term). Raises ValueError."""
    if entry.term is not None:
        norm = normalize(entry.term)
        if len(norm) < 2:
            raise ValueError(f"term {entry.term!r} is {len(norm)} character(s) once normalised; "
                             f"write at least two")
        return _term_source(norm), True
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

    @classmethod
    def build(cls, kind: str, id: str, source: str) -> _Rule:
        first = _first_chars(source)
        finder = source if first is None else _dispatch(first, _uncapture(source))
        return cls(kind, id, re.compile(source), re.compile(finder))

    def matches(self, text: str) -> Iterator[re.Match[str]]:
        """Every match, one per start position (overlapping ones included)."""
        found = self.finder.search(text)
        while found is not None:
            match = self.regex.match(text, found.start())
            if match is not None:  # always, unless the finder is wider than the regex
                yield match
            found = self.finder.search(text, found.start() + 1)


class CrisisDetector:
    """Compiled once from crisis.yaml; detect() is safe to call from any thread."""

    def __init__(self, spec: CrisisFile):
        self.version = spec.version
        vocab = _vocab_sources(spec.vocab)
        sources: list[str] = []
        specific: list[_Rule] = []
        generic: list[_Rule] = []
        for kind in PRIORITY:
            for entry in spec.kinds.get(kind, []):
                source = _entry_source(entry, vocab)[0]
                sources.append(source)
                rule = _Rule.build(kind, entry.id, source)
                (generic if entry.generic else specific).append(rule)
        self._gate = _gate(sources)
        self._rules = (*specific, *generic)
        self._exclusions = tuple(_Rule.build("", e.id, _entry_source(e, vocab)[0])
                                 for e in spec.exclusions)

    @classmethod
    def from_file(cls, path: Path) -> CrisisDetector:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise CrisisFileError(f"{path.name}: not valid YAML: {exc}") from None
        try:
            return cls(CrisisFile.model_validate(data))
        except ValidationError as exc:
            raise CrisisFileError("\n".join(_describe(path.name, e) for e in exc.errors())) \
                from None

    def detect(self, text: str) -> CrisisMatch | None:
        """The first entry (by kind priority, then file order) matching outside exclusions."""
        if not text:
            return None
        norm = normalize(text)
        if not any(gate.search(norm) for gate in self._gate):
            return None
        return self._scan(norm)

    def _scan(self, norm: str) -> CrisisMatch | None:
        """Entry by entry: the first match that no exclusion covers."""
        covers: list[tuple[int, int]] | None = None
        for rule in self._rules:
            for found in rule.matches(norm):
                if covers is None:
                    covers = [m.span() for ex in self._exclusions for m in ex.matches(norm)]
                start, end = found.span()
                if not any(a <= start and end <= b for a, b in covers):
                    return CrisisMatch(kind=rule.kind, rule=rule.id)
        return None


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


def evaluate(detector: CrisisDetector, eval_path: Path) -> EvalReport:
    """Recall on the `risk` phrasings (and whether the kind is right), false positives on the
    `ordinary` ones. A risk item's `kind` may be a list of acceptable kinds."""
    data = yaml.safe_load(Path(eval_path).read_text(encoding="utf-8"))
    risk, ordinary = data["risk"], data["ordinary"]
    misses: list[str] = []
    wrong: list[str] = []
    for item in risk:
        expected = item["kind"] if isinstance(item["kind"], list) else [item["kind"]]
        unknown = set(expected) - set(CRISIS_KINDS)
        if unknown:
            raise ValueError(f"{eval_path}: {item['text']!r} expects unknown kind(s) {unknown}")
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
