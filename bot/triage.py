"""Triage: free text → the support categories it is about, with evidence, and the answers it
already gives (whose worry, age band, how long, ward, preferred channel).

Deterministic and explainable: every point of a score comes from a vocabulary entry a city can
read and edit (bot/content/common/triage.<lang>.yaml), and `python -m bot explain` prints them.
The engine calls `triage(text, lang, pack)`; this module does no I/O after loading.

How a category scores:
  - `words`: words written naturally; one matches when its dictionary form appears as whole
    words among the message's lemmas (so every conjugation and spelling meets it), or when its
    normalised surface appears in the message. Entries are `word` (weight 1) or `word: weight`.
  - `patterns`: regular expressions on the normalised surface (weight 2 unless `word: weight`).
  - `negative`: words that cancel the category (a topic mentioned in passing).
  - `examples`: sentences; a message sharing their rarer content words earns a small bonus
    (up to 1 point), so an unlisted phrasing of a listed situation still counts.

  - `context` (and `context_patterns`): words that tell something only about a worry already
    named (knees, the rubbish; a mood watched; a bridge, a tent; giving things away). They add
    their points only when a word or pattern of the category, or an age hint, has matched, or
    when two of them of SIGN points or more are found in different words.
  - One span, one vote: entries of a category whose matches overlap (shinpen-seiri typed as
    one word and as two; "give away my" and "give * away"; a word and the longer phrase
    holding it) count once, with the highest weight among them.

English has no analyser here (SudachiPy is Japanese): an English entry is a regex on the
normalised surface. Every word of four letters or more takes the regular endings (simple suffix
rules: -s -es -ed -ing, a doubled last consonant, y → ies/ied, a dropped e), the irregular forms
listed in triage.en.yaml `inflections` (lose → lost), and `*` stands for up to two words
("kicked * out" finds "kicked me out"). Every word ends at a word end ("die" is not "diet");
a word is a prefix only when written with `~` ("lonel~" finds loneliness). A rule-based
stemmer was preferred over a lemmatising library: the vocabulary is stems and phrases, and
this keeps the package free of model data.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.language import (
    SAFE_LOADER,
    SENTENCE_ENDS,
    Analysis,
    analyze,
    checked_pattern,
    default_rules,
    normalize,
    script_language,
)

if TYPE_CHECKING:
    from bot.pack.loader import Pack

COMMON_DIR = Path(__file__).resolve().parent / "content" / "common"
LANGS = ("ja", "en")
CONFIDENT = 1.5  # the least score that names a category on its own
RATIO = 1.15  # ... and by how much it must lead the next one
PLAUSIBLE = 1.5  # the least score for a category offered among two or three
EXAMPLE_BONUS = 2.0
SIGN = 1.5  # the least weight of a context entry that, with another, stands on its own

Weighted = str | dict[str, float]


def _weighted(items: list[Weighted], default: float) -> list[tuple[str, float]]:
    out = []
    for item in items:
        if isinstance(item, dict):
            out += [(str(k), float(v)) for k, v in item.items()]
        else:
            out.append((str(item), default))
    return out


class CategoryVocab(BaseModel):
    model_config = ConfigDict(extra="forbid")

    words: list[Weighted] = Field(default_factory=list)
    patterns: list[Weighted] = Field(default_factory=list)
    negative: list[str] = Field(default_factory=list)
    # Context: words (and patterns) that say something only about a worry already named. They
    # add their points only when a word or pattern above (or an age hint) has matched: knees
    # and the rubbish need an old person, a bridge needs no home, a mood needs a partner.
    context: list[Weighted] = Field(default_factory=list)
    context_patterns: list[Weighted] = Field(default_factory=list)
    examples: list[str] = Field(default_factory=list)

    @field_validator("patterns", "context_patterns")
    @classmethod
    def _compile(cls, patterns: list[Weighted]) -> list[Weighted]:
        for source, _ in _weighted(patterns, 2.0):
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(f"pattern {source!r} does not compile: {exc}") from None
        return patterns


class SlotVocab(BaseModel):
    """Words (or patterns, for age and duration) that give an answer: value → list."""

    model_config = ConfigDict(extra="forbid")

    whose: dict[str, list[str]] = Field(default_factory=dict)
    # Regular expressions on the normalised text that give whose, for what words cannot say
    # ("my 15 year old").
    whose_patterns: dict[str, list[str]] = Field(default_factory=dict)
    # Words after a person word that say the person is missing, not the one of concern
    # ("no friends", "tomodachi ga inai"): such a mention does not make it someone else's worry.
    absent: list[str] = Field(default_factory=list)
    # The writer's own parents (and teachers): in `child_categories` a message naming only these
    # is the child's own worry ("my parents don't care where I am").
    parents: list[str] = Field(default_factory=list)
    child_categories: list[str] = Field(default_factory=list)
    # A partner (boyfriend, girlfriend) named in one of `self_categories` is the one causing the
    # worry (his control, his vanishing), not a friend of concern.
    partners: list[str] = Field(default_factory=list)
    # Words after a family word that make it the actor, not the person of concern ("by my
    # husband", "from my husband").
    agent_particles: list[str] = Field(default_factory=list)
    # Particles after a family word that make it the actor only when a passive or receiving verb
    # (`passive`, as lemmas) follows in the same sentence: "hit by the husband", "the husband
    # won't hand it over" (the writer's worry) but "whatever I say to my son", "I can't talk
    # with my son" (the son is of concern).
    dative_particles: list[str] = Field(default_factory=list)
    passive: list[str] = Field(default_factory=list)
    # After one of `reach_particles` ("to": with), a family member other than the writer's parents
    # followed in the sentence by one of `reach` (lemmas: talk, contact) is someone the writer
    # cannot reach, the one of concern ("no talk with my son"); otherwise `to` is company, the
    # writer's own worry ("leave home with my child", "can't talk with my parents").
    reach_particles: list[str] = Field(default_factory=list)
    reach: list[str] = Field(default_factory=list)
    # Verbs that, made passive after "ni", tell what the family member did to themselves or went
    # away from, and the writer only suffered (the son shutting himself in, quitting his job:
    # the son is of concern), unlike acts done to the writer (being hit, being told). Written as
    # words.
    adversative: list[str] = Field(default_factory=list)
    # Places after "<person> no" (staying at a friend's house): the person names where, not
    # whom, the worry is about (friends and other non-family words only: the son's room is
    # still the son's).
    places: list[str] = Field(default_factory=list)
    place_particles: list[str] = Field(default_factory=list)
    # English: words that may stand between "my" and a person word ("my little brother").
    en_between: list[str] = Field(default_factory=list)
    # English: words before a person word ("by my parents", "with my mother") that make the
    # person the actor or the writer's company, not the one of concern; and objects that, a few
    # words after the person, show the person acting on the writer ("my wife is leaving me").
    en_agent_before: list[str] = Field(default_factory=list)
    en_agent_object: list[str] = Field(default_factory=list)
    self_categories: list[str] = Field(default_factory=list)
    # Words (lemmas) after "<family> no" (the mother's care, the brother's looking-after), and
    # English words before a person word ("look after my mum"), that make the family member
    # the one the writer cares for: in `child_categories` a young carer's own worry.
    cared: list[str] = Field(default_factory=list)
    cared_kin: list[str] = Field(default_factory=list)
    en_cared_before: list[str] = Field(default_factory=list)
    # A daughter (or a son's wife) named as the subject (followed by one of `subject_particles`,
    # or in English by one of `en_subject_after`) in one of `self_categories` is the one of
    # concern, told by her parent ("my daughter is pregnant", "the daughter is hit by her
    # husband"): the family's worry, not the writer's own.
    kin: list[str] = Field(default_factory=list)
    subject_particles: list[str] = Field(default_factory=list)
    en_subject_after: list[str] = Field(default_factory=list)
    age: dict[str, list[str]] = Field(default_factory=dict)
    # A pattern that, found in the text an age pattern matched, says the age was given in
    # numbers: that age wins over one inferred from a word (see _age).
    exact_age: str = ""
    hiki_duration: dict[str, list[str]] = Field(default_factory=dict)
    contact: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("exact_age")
    @classmethod
    def _compile(cls, source: str) -> str:
        return checked_pattern(source)


class TriageFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    categories: dict[str, CategoryVocab]
    # Whole messages that name no worry (hello, "test"): nothing is confirmed for them.
    greetings: list[str] = Field(default_factory=list)
    # The category of a message written in a language the bot does not speak (Chinese, Korean...):
    # the resident is offered it, in English, after a note in their language.
    other_language: str | None = None
    # A category that, once named on its own evidence (CONFIDENT), goes before these ones: its
    # windows handle them too (an ex-offender's job and housing: the resettlement window).
    leads: dict[str, list[str]] = Field(default_factory=dict)
    # An age read from the text adds to a category: age band → {category: points}.
    age_hints: dict[str, dict[str, float]] = Field(default_factory=dict)
    slots: SlotVocab = Field(default_factory=SlotVocab)
    # Lemmas too common to say anything about a worry (be, do, thing, I, ...). The lists of all
    # languages apply together: a message in one language may carry words of the other.
    stopwords: list[str] = Field(default_factory=list)
    # Lemmas that may stand between a word and its negation in an entry "X <negation>"
    # (particles, the glue of a negated verb), so that the negation belongs to the word.
    negation_gap: list[str] = Field(default_factory=list)
    # English irregular forms (lemma → forms) that an entry's word also matches: "lose my job"
    # finds "lost my job". Regular endings need no entry (see _en_word).
    inflections: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("inflections")
    @classmethod
    def _normalised(cls, table: dict[str, list[str]]) -> dict[str, list[str]]:
        """Keys and forms as the matcher sees words (lower case, apostrophes dropped: see
        normalize), so that "Lose" or "can't" written here still meet the text's words."""
        out: dict[str, list[str]] = {}
        for key, forms in table.items():
            word = normalize(key)
            if not word or " " in word:
                raise ValueError(f"inflections: {key!r} is not one word")
            kept = out.setdefault(word, [])
            kept += [f for f in map(normalize, forms) if f and f not in kept]
        return out


class TriageError(ValueError):
    """A triage vocabulary file cannot be used; the message names file and field."""


# -- compiled -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Cue:
    """One vocabulary entry, compiled for speed: most words are one lemma (a set lookup) and a
    surface and reading found by substring; only phrases and patterns need a regex."""

    text: str  # as written (shown by explain)
    weight: float
    first: str = ""  # the first lemma: the entry can match only when the message has it
    lemma: re.Pattern[str] | None = None  # on Analysis.lemmas, for phrases of several words
    surface: str = ""  # a substring of Analysis.norm
    reading: str = ""  # a substring of Analysis.reading (text typed in kana)
    regex: re.Pattern[str] | None = None  # patterns, and English words, on Analysis.norm
    gate: str = ""  # English: text every match holds (its first word's stem), checked first

    def spans(self, found: Analysis, lemmas: frozenset[str],
              at: _Offsets) -> list[tuple[int, int]]:
        """Where the entry matches, as character spans of Analysis.norm (empty: no match)."""
        out: list[tuple[int, int]] = []
        if self.first and self.first in lemmas:
            if self.lemma is None:
                out += [at.tokens[i] for i, t in enumerate(found.tokens) if t.lemma == self.first]
            else:
                for m in self.lemma.finditer(found.lemmas):
                    a = found.lemmas.count(" ", 0, m.start()) - 1
                    b = found.lemmas.count(" ", 0, m.end()) - 1
                    if 0 <= a <= b < len(at.lemma_tokens):
                        out.append((at.tokens[at.lemma_tokens[a]][0],
                                    at.tokens[at.lemma_tokens[b]][1]))
        if self.surface:
            out += _occurrences(found.norm, self.surface)
        if self.reading:
            for a, b in _occurrences(found.reading, self.reading):
                first, last = at.reading[a], at.reading[b - 1]
                out.append((at.tokens[first][0], at.tokens[last][1]))
        if self.regex is not None:
            out += [m.span() for m in self.regex.finditer(found.norm)]
        return out

    def find(self, found: Analysis, lemmas: frozenset[str]) -> bool:
        if self.gate and self.gate not in found.norm:
            return False
        if self.first and self.first in lemmas and (
                self.lemma is None or self.lemma.search(found.lemmas)):
            return True
        if self.surface and self.surface in found.norm:
            return True
        if self.reading and self.reading in found.reading:
            return True
        return bool(self.regex and self.regex.search(found.norm))


@dataclass(frozen=True)
class _Offsets:
    """Where each token lies in Analysis.norm, so that entries matched on lemmas, readings and
    the surface can be told apart or found to cover the same words."""

    tokens: list[tuple[int, int]]  # token → its span in norm
    lemma_tokens: list[int]  # the n-th word of Analysis.lemmas → its token
    reading: list[int]  # a character of Analysis.reading → its token

    @classmethod
    def of(cls, found: Analysis) -> _Offsets:
        spans, pos = [], 0
        for t in found.tokens:
            i = found.norm.find(t.surface, pos) if t.surface else -1
            if i < 0:
                spans.append((pos, pos + 1))
                continue
            spans.append((i, max(i + len(t.surface), i + 1)))
            pos = i + len(t.surface)
        reading = []
        for k, t in enumerate(found.tokens):
            reading += [k] * (len(t.reading) if _KANA.fullmatch(t.surface) else 1)
        return cls(spans, [k for k, t in enumerate(found.tokens) if t.lemma], reading)


_KANA = re.compile("[\u3041-\u309f]+")


def _occurrences(text: str, part: str) -> list[tuple[int, int]]:
    out, i = [], text.find(part)
    while i >= 0:
        out.append((i, i + len(part)))
        i = text.find(part, i + 1)
    return out


def _merged(matches: list[tuple[_Cue, list[tuple[int, int]]]]) -> list[list[_Cue]]:
    """Entries of one category that cover the same words (overlapping spans) form one group:
    a phrase counts once however many entries find it ("give away my" and "give * away";
    shinpen-seiri typed as one word and as two)."""
    matches = [(c, sp or [(-1 - k, -1 - k)]) for k, (c, sp) in enumerate(matches)]
    group = list(range(len(matches)))

    def root(i: int) -> int:
        while group[i] != i:
            i = group[i]
        return i

    for i, (_, a) in enumerate(matches):
        for j in range(i):
            if any(x < d and c < y for x, y in a for c, d in matches[j][1]):
                group[root(i)] = root(j)
    out: dict[int, list[_Cue]] = {}
    for i, (cue, _) in enumerate(matches):
        out.setdefault(root(i), []).append(cue)
    return list(out.values())


_ANY_GAP = r" (?:\S+ ){0,2}"


def _neg_gap(lemmas: list[str]) -> str:
    """Up to three of these lemmas between a word and its negation (TriageFile.negation_gap);
    without a list, any two words, as between the other words of an entry."""
    if not lemmas:
        return _ANY_GAP
    return r" (?:(?:" + "|".join(map(re.escape, lemmas)) + r") ){0,3}"


_EN_GLUE = frozenset({"this", "that", "with", "from", "your", "them", "they", "what", "when",
                      "into", "onto", "than", "then", "there", "their"})
_EN_VOWELS = frozenset("aeiou")
EN_GAP = "*"  # in an English entry: up to two words of any kind
EN_STEM = "~"  # after an English word: a prefix, any ending ("lonel~")
_EN_ANY = r"(?:[a-z0-9]+ ){0,2}"


def _en_word(w: str, irregular: dict[str, list[str]]) -> str:
    """A regex for an English word and its regular endings (simple suffix rules, no
    dictionary): talk → talks/talked/talking, stop → stopped/stopping, cry → cries/cried,
    leave → leaving; plus its irregular forms (leave → left). Short and glue words stay as
    written."""
    forms = [re.escape(f) for f in irregular.get(w, [])]
    if len(w) < 4 or not w.isalpha() or w in _EN_GLUE:
        return f"(?:{'|'.join([re.escape(w), *forms])})" if forms else re.escape(w)
    alts = [f"{re.escape(w)}(?:s|es|ed|d|ing)?"]
    if w.endswith("e"):
        alts.append(re.escape(w[:-1]) + "ing")
    if w.endswith("y") and w[-2] not in _EN_VOWELS:
        alts.append(re.escape(w[:-1]) + "(?:ies|ied)")
    if w[-1] not in _EN_VOWELS and w[-1] not in "wxy" and w[-2] in _EN_VOWELS \
            and w[-3] not in _EN_VOWELS:
        alts.append(re.escape(w + w[-1]) + "(?:ed|ing)")  # stop → stopped, stopping
    return "(?:" + "|".join([*alts, *forms]) + ")"


def _en_gate(words: list[str], irregular: dict[str, list[str]]) -> str:
    """The text every form of an entry's first word starts with (talk: talk; leave, left: le),
    so that most entries are passed over by a substring test, not a regex (863 of them)."""
    if not words or words[0] == EN_GAP:
        return ""
    first = words[0].rstrip(EN_STEM)
    forms = [first, *irregular.get(first, [])]
    if len(first) >= 4 and first.isalpha():
        forms.append(first[:-1])  # a dropped e, y → ies
    gate = forms[0]
    for form in forms[1:]:
        while not form.startswith(gate):
            gate = gate[:-1]
    return gate if len(gate) >= 2 else ""


def _en_inflected(words: list[str], irregular: dict[str, list[str]] | None = None) -> str:
    """An English phrase whose every word may take its endings: "talk to anyone" finds
    "talking to anyone", "leave the house" finds "left the house". Every word, the last too,
    ends at a word end (with `_word_cue`'s right edge): "die" is not "diet", "tax" not "taxi".
    Only a word written with a `~` (EN_STEM) is a prefix and takes any ending: "lonel~" finds
    lonely and loneliness. A word of three letters at the end also takes -s/-es (tax, taxes).
    Words may be written together ("day care" finds daycare), but not around a `*` gap
    ("give * away" is not "giveaway")."""
    table = irregular or {}
    out = ""
    for i, w in enumerate(words):
        if w == EN_GAP:
            out = out.removesuffix(" ?") + (" " if out else "") + _EN_ANY
            continue
        last = i == len(words) - 1
        if w.endswith(EN_STEM):
            part = re.escape(w[:-1]) + "[a-z0-9]*"
        elif last and len(w) == 3 and w.isalpha() and w not in table:
            part = re.escape(w) + "(?:s|es)?"
        else:
            part = _en_word(w, table)
        out += part + ("" if last else " ?")
    return out


def _word_cue(word: str, weight: float, lang: str, whole: bool = False,
              neg_gap: str = _ANY_GAP, irregular: dict[str, list[str]] | None = None) -> _Cue:
    norm = normalize(word)
    if lang == "en":  # English: a word start, any ending (debt, debts; lonely, loneliness)
        words = []
        for part in word.split():
            if part == EN_GAP:
                words.append(EN_GAP)
                continue
            stem = part.endswith(EN_STEM)
            ws = [w for w in normalize(part.rstrip(EN_STEM)).split(" ") if w]
            if stem and ws:
                ws[-1] += EN_STEM
            words += ws
        if all(w == EN_GAP for w in words):
            raise TriageError(f"entry {word!r} has no word: it would match every text")
        body = re.escape(normalize(word.replace(EN_STEM, ""))).replace(r"\ ", " ?") if whole \
            else _en_inflected(words, irregular)
        edge = r"(?<![a-z0-9])" + body
        return _Cue(word, weight, regex=re.compile(edge + r"(?![a-z0-9])"),
                    gate=_en_gate(words, irregular or {}))
    analysed = [analyze(part) for part in word.split()]
    parts = [a.lemmas.strip() for a in analysed if a.lemmas.strip()]
    if not parts:
        return _Cue(word, weight, surface=norm)
    first = parts[0].split(" ")[0]
    if len(parts) > 1 or " " in parts[0]:
        # Words written apart may have up to two words between them ("hand raise" finds "raised
        # a hand against"). Before the negation (every negation is one lemma: the analyser's
        # rules) only `negation_gap` may come between: "no job" finds "have no job" but not
        # "cannot go to the job" — the negation must belong to the word.
        negation = default_rules().negation
        form = re.escape(parts[0])
        for part in parts[1:]:
            gap = neg_gap if part == negation else _ANY_GAP
            form += gap + re.escape(part)
        # A compound the analyser splits in two (seishin-ka, psychiatry: seishin + ka) keeps
        # its reading, for kana typing.
        reading = "".join(t.reading for t in analysed[0].tokens) \
            if len(parts) == 1 and " " not in word else ""
        return _Cue(word, weight, first=first, lemma=re.compile(f"(?<= ){form}(?= )"),
                    surface=norm if len(parts) == 1 and len(norm) >= 2 else "",
                    reading=reading if len(reading) >= 3 else "")
    # One word: its lemma; the surface as well, for what the analyser cuts differently (slang,
    # compounds); the reading for text typed in kana. A single character, or a reading under
    # three, would be found everywhere, so those count only as lemmas.
    reading = "".join(t.reading for t in analysed[0].tokens)  # as read aloud, whole
    return _Cue(word, weight, first=first, surface=norm if len(norm) >= 2 else "",
                reading=reading if len(reading) >= 3 else "")


def _one_vote(cues: list[_Cue]) -> list[_Cue]:
    """One word, one vote: entries that are the same word once analysed ("alone" in its three
    spellings is one lemma; a word listed twice) count once, with the highest weight given.
    Otherwise a word listed in several spellings outweighs a rarer, more telling one."""
    best: dict[tuple[str, str], _Cue] = {}
    out: list[_Cue] = []
    for cue in cues:
        if cue.first:
            key = (cue.first, cue.lemma.pattern if cue.lemma is not None else "")
        elif cue.regex is not None:
            key = ("", cue.regex.pattern)
        else:
            out.append(cue)
            continue
        if key not in best or cue.weight > best[key].weight:
            best[key] = cue
    return [*best.values(), *out]


def _pattern_cue(source: str, weight: float) -> _Cue:
    from bot.language import fold_pattern

    return _Cue(source, weight, regex=re.compile(fold_pattern(source)))


@dataclass
class _Category:
    id: str
    cues: list[_Cue]
    negative: list[_Cue]
    context: list[_Cue]
    examples: list[tuple[frozenset[str], float]]  # content lemmas, their total weight


def _ends_with_word(words: list[str]) -> re.Pattern[str] | None:
    """A pattern for a text window that ends in one of `words` and a space ("looked after by "),
    None for no words."""
    if not words:
        return None
    return re.compile(r"(?:^|\s)(?:" + "|".join(map(re.escape, words)) + r") $")


@dataclass
class Vocab:
    """One language's triage vocabulary, compiled."""

    lang: str
    categories: list[_Category]
    whose: list[tuple[str, _Cue]]
    agent_particles: frozenset[str]
    dative_particles: frozenset[str]
    passive: frozenset[str]
    reach_particles: frozenset[str]
    reach: frozenset[str]
    adversative: frozenset[str]
    places: frozenset[str]
    place_particles: frozenset[str]
    en_agent_before: re.Pattern[str] | None
    en_agent_object: re.Pattern[str] | None
    absent: list[_Cue]
    parents: frozenset[str]
    partners: frozenset[str]
    child_categories: frozenset[str]
    self_categories: frozenset[str]
    cared: frozenset[str]
    cared_kin: frozenset[str]
    en_cared_before: re.Pattern[str] | None
    kin: frozenset[str]
    subject_particles: frozenset[str]
    en_subject_after: re.Pattern[str] | None
    age: list[tuple[str, _Cue]]
    exact_age: re.Pattern[str] | None
    hiki_duration: list[tuple[str, _Cue]]
    contact: list[tuple[str, _Cue]]
    idf: dict[str, float] = field(default_factory=dict)
    greetings: frozenset[str] = frozenset()
    other_language: str | None = None
    age_hints: dict[str, dict[str, float]] = field(default_factory=dict)
    stop: frozenset[str] = frozenset()
    leads: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, spec: TriageFile, lang: str, stop: frozenset[str]) -> Vocab:
        cats = []
        docs: list[frozenset[str]] = []
        gap = _neg_gap(spec.negation_gap)

        def word(w: str, x: float, whole: bool = False) -> _Cue:
            return _word_cue(w, x, lang, whole, gap, spec.inflections)

        for cid, cv in spec.categories.items():
            cues = _one_vote([word(w, x) for w, x in _weighted(cv.words, 1.0)])
            cues += [_pattern_cue(p, x) for p, x in _weighted(cv.patterns, 2.0)]
            context = _one_vote([word(w, x) for w, x in _weighted(cv.context, 1.0)])
            context += [_pattern_cue(p, x) for p, x in _weighted(cv.context_patterns, 2.0)]
            examples = [_content(analyze(e), stop) for e in cv.examples]
            docs += examples
            cats.append(_Category(cid, cues, [word(w, 0) for w in cv.negative], context,
                                  [(ex, 0.0) for ex in examples]))
        df: dict[str, int] = {}
        for doc in docs:
            for lemma in doc:
                df[lemma] = df.get(lemma, 0) + 1
        idf = {lemma: math.log((1 + len(docs)) / (1 + n)) + 1 for lemma, n in df.items()}
        for cat in cats:
            cat.examples = [(ex, max(1.0, sum(idf.get(x, 1.0) for x in ex)))
                            for ex, _ in cat.examples]
        slots = spec.slots

        def values(table: dict[str, list[str]], patterns: bool) -> list[tuple[str, _Cue]]:
            return [(value, _pattern_cue(w, 1) if patterns else word(w, 1, True))
                    for value, words in table.items() for w in words]

        whose = values(slots.whose, False)
        if lang == "en":
            nouns = sorted({w.split()[-1] for ws in slots.whose.values() for w in ws
                            if len(w.split()) > 1})
            whose = [(value, _en_person(w, slots.en_between, nouns)) for value, words in
                     slots.whose.items() for w in words]
        return cls(lang=lang, categories=cats,
                   whose=whose + values(slots.whose_patterns, True),
                   agent_particles=frozenset(map(normalize, slots.agent_particles)),
                   dative_particles=frozenset(map(normalize, slots.dative_particles)),
                   passive=frozenset(slots.passive),
                   reach_particles=frozenset(map(normalize, slots.reach_particles)),
                   reach=frozenset(slots.reach),
                   adversative=frozenset(_last_lemma(w) for w in slots.adversative),
                   places=frozenset(_last_lemma(w) for w in slots.places)
                   | frozenset(map(normalize, slots.places)),  # a word the analyser reads alone
                   place_particles=frozenset(map(normalize, slots.place_particles)),
                   en_agent_before=_ends_with_word(slots.en_agent_before),
                   en_agent_object=re.compile(r"^(?: [a-z0-9]+){0,4}? (?:" + "|".join(
                       map(re.escape, slots.en_agent_object)) + r")(?![a-z0-9])")
                   if slots.en_agent_object else None,
                   absent=[_absent_cue(w) for w in slots.absent],
                   parents=frozenset(map(normalize, slots.parents)),
                   partners=frozenset(map(normalize, slots.partners)),
                   child_categories=frozenset(slots.child_categories),
                   self_categories=frozenset(slots.self_categories),
                   cared=frozenset(slots.cared),
                   cared_kin=frozenset(map(normalize, slots.cared_kin)),
                   en_cared_before=_ends_with_word(slots.en_cared_before),
                   kin=frozenset(map(normalize, slots.kin)),
                   subject_particles=frozenset(map(normalize, slots.subject_particles)),
                   en_subject_after=re.compile(r"^ (?:" + "|".join(
                       map(re.escape, slots.en_subject_after)) + r")(?![a-z0-9])")
                   if slots.en_subject_after else None,
                   age=values(slots.age, True),
                   exact_age=re.compile(slots.exact_age) if slots.exact_age else None,
                   hiki_duration=values(slots.hiki_duration, True),
                   contact=values(slots.contact, True), idf=idf,
                   greetings=frozenset(map(normalize, spec.greetings)),
                   other_language=spec.other_language,
                   age_hints=spec.age_hints, stop=stop, leads=spec.leads)


def _en_person(word: str, between: list[str], nouns: list[str]) -> _Cue:
    """An English `whose` entry: whole words; one of several words also as a possessive before
    another person word ("my friend's kid": the apostrophe is dropped, so "my friends kid"),
    and after "my"/"our" one of `between` may come ("my little brother")."""
    words = normalize(word).split(" ")
    body = " ".join(map(re.escape, words))
    if len(words) > 1:
        if words[0] in ("my", "our") and between:
            body = words[0] + " (?:(?:" + "|".join(map(re.escape, between)) + ") )?" + \
                " ".join(map(re.escape, words[1:]))
        body += "(?:s(?= (?:" + "|".join(map(re.escape, nouns)) + ")(?![a-z0-9])))?"
    return _Cue(word, 1, regex=re.compile(r"(?<![a-z0-9])" + body + r"(?![a-z0-9])"))


def _last_lemma(word: str) -> str:
    """The dictionary form of the last word of `word` ("dete iku" → "iku")."""
    words = analyze(word).lemmas.split()
    return words[-1] if words else normalize(word)


def _absent_cue(phrase: str) -> _Cue:
    """An `absent` entry: the lemmas that follow a person word, compared as a sequence (a
    regex on the lemmas after the word, see _absent); English entries are typed as is."""
    if script_language(phrase) == "en":
        return _Cue(phrase, 0, regex=re.compile(r"^ ?" + re.escape(normalize(phrase))))
    form = analyze(phrase).lemmas.strip()
    return _Cue(phrase, 0, lemma=re.compile(r"^ " + re.escape(form) + " "))


def _content(found: Analysis, stop: frozenset[str]) -> frozenset[str]:
    return frozenset(found.content - stop)


def load_vocab(directory: Path = COMMON_DIR) -> dict[str, Vocab]:
    """Read and compile triage.<lang>.yaml; raise TriageError naming every problem.

    Compiled once per directory and file version: every city of a deployment shares it."""
    stamp = tuple((p.name, p.stat().st_mtime_ns) for p in sorted(Path(directory).glob(
        "triage.*.yaml")))
    key = (str(Path(directory).resolve()), stamp)
    if key not in _COMPILED:
        _COMPILED[key] = _load_vocab(Path(directory))
    return _COMPILED[key]


_COMPILED: dict[tuple[str, tuple[tuple[str, int], ...]], dict[str, Vocab]] = {}


def _load_vocab(directory: Path) -> dict[str, Vocab]:
    specs: dict[str, TriageFile] = {}
    errors: list[str] = []
    for lang in LANGS:
        path = directory / f"triage.{lang}.yaml"
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
            specs[lang] = TriageFile.model_validate(data)
        except FileNotFoundError:
            errors.append(f"{path.name}: file is missing")
        except yaml.YAMLError as exc:
            errors.append(f"{path.name}: not valid YAML: {exc}")
        except ValidationError as exc:
            errors += [f"{path.name}: {'.'.join(map(str, e['loc']))}: {e['msg']}"
                       for e in exc.errors()]
    if errors:
        raise TriageError("\n".join(errors))
    stop = frozenset(normalize(w) for spec in specs.values() for w in spec.stopwords)
    out: dict[str, Vocab] = {}
    for lang, spec in specs.items():
        try:
            out[lang] = Vocab.build(spec, lang, stop)
        except TriageError as exc:
            errors.append(f"triage.{lang}.yaml: {exc}")
    if errors:
        raise TriageError("\n".join(errors))
    return out


# -- the function -------------------------------------------------------------------------------
@dataclass
class Result:
    """What the text is about, best first, and why; `slots` are answers the text gives."""

    lang: str  # the language the text is written in ("" when it cannot be told)
    scores: list[tuple[str, float]]  # every category with a positive score, best first
    evidence: dict[str, list[str]]  # category → the vocabulary entries that matched
    slots: dict[str, str]
    implicit: frozenset[str] = frozenset()  # slots assumed, not read (whose → self)

    @property
    def top(self) -> str | None:
        """The category the text clearly names, or None."""
        if not self.scores or self.scores[0][1] < CONFIDENT:
            return None
        if len(self.scores) > 1 and self.scores[0][1] < RATIO * self.scores[1][1]:
            return None
        return self.scores[0][0]

    @property
    def plausible(self) -> list[str]:
        """Two or three categories that fit about as well, when no single one is clear."""
        if self.top is not None:
            return [self.top]
        best = self.scores[0][1] if self.scores else 0
        return [c for c, s in self.scores[:3] if s >= PLAUSIBLE and s * 2 >= best]


def triage(text: str | Analysis, lang: str, pack: Pack | None = None,
           vocab: dict[str, Vocab] | None = None) -> Result:
    """Score the categories for `text` and read the slots it fills.

    `lang` is the conversation's language; text plainly written in the other one is read with
    that language's vocabulary. Vocabulary comes from the pack (or `vocab`, for tests)."""
    found = text if isinstance(text, Analysis) else analyze(text)
    tables = vocab if vocab is not None else (pack.triage if pack is not None else {})
    written = script_language(found.text)
    use = written if written in tables else lang if lang in tables else "ja"
    table = tables[use]
    scores: dict[str, float] = {}
    evidence: dict[str, list[str]] = {}
    content = _content(found, table.stop)
    lemmas = frozenset(t.lemma for t in found.tokens)
    if is_greeting(found, table):
        return Result(lang=written, scores=[], evidence={}, slots={})
    slots = _slots(found, table, pack, lemmas)
    hints = table.age_hints.get(slots.get("age", ""), {})
    at = _Offsets.of(found)
    for cat in table.categories:
        if any(neg.find(found, lemmas) for neg in cat.negative):
            continue
        score = 0.0
        hits: list[str] = []
        if cat.id in hints:
            score += hints[cat.id]
            hits.append(f"age {slots['age']} (+{hints[cat.id]:g})")
        matches = [(cue, cue.spans(found, lemmas, at)) for cue in cat.cues
                   if cue.find(found, lemmas)]
        context = [(cue, cue.spans(found, lemmas, at)) for cue in cat.context
                   if cue.find(found, lemmas)]
        # context counts beside a word of the category, or two context signs (entries of
        # SIGN points or more) in different words (knees and the rubbish; giving things away
        # and "I won't need them"): a room and drawn curtains are not yet a shut-in
        signs = [g for g in _merged(context) if max(c.weight for c in g) >= SIGN]
        if matches or cat.id in hints or len(signs) >= 2:
            matches += context
        for same in _merged(matches):
            best = max(same, key=lambda c: c.weight)
            score += best.weight
            hits.append(f"{best.text} (+{best.weight:g})")
            hits += [f"{c.text} (same words)" for c in same if c is not best]
        if cat.examples and content:
            best = max(sum(table.idf.get(x, 1.0) for x in content & ex) / total
                       for ex, total in cat.examples)
            if best > 0:
                bonus = round(EXAMPLE_BONUS * best, 2)
                score += bonus
                hits.append(f"examples (+{bonus:g})")
        if score > 0:
            scores[cat.id] = round(score, 2)
            evidence[cat.id] = hits
    _lead(scores, evidence, table.leads)
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    if ranked and slots.get("whose") in ("family", "friend"):
        whose = _whose(found, table, lemmas, ranked[0][0])  # a child's parents, a partner
        if whose:
            slots["whose"] = whose
    if ranked and ranked[0][0] in table.self_categories and slots.get("whose") == "family" \
            and not _both_parents(found, table, lemmas) and not _kin_subject(found, table, lemmas):
        slots["whose"] = "self"  # "my husband's abuse", "my child and I": the writer's own
    implicit: frozenset[str] = frozenset()
    if ranked and "whose" not in slots:  # a worry told with no one else named: the writer's
        slots["whose"] = "self"
        implicit = frozenset({"whose"})
    return Result(lang=written, scores=ranked, evidence=evidence, slots=slots,
                  implicit=implicit)


def _lead(scores: dict[str, float], evidence: dict[str, list[str]],
          leads: dict[str, list[str]]) -> None:
    """`leads`: a category named on its own evidence goes just before the categories it
    leads, so that it is the one confirmed (the points added are shown as evidence)."""
    for cat, behind in leads.items():
        own = scores.get(cat, 0.0)
        if own < CONFIDENT:
            continue
        above = max((scores.get(b, 0.0) for b in behind), default=0.0)
        if own < RATIO * above:
            lifted = round(RATIO * above + 0.01, 2)
            evidence[cat].append(f"leads {', '.join(behind)} (+{lifted - own:g})")
            scores[cat] = lifted


def is_greeting(found: Analysis, table: Vocab) -> bool:
    return found.norm in table.greetings or found.norm.replace(" ", "") in table.greetings


def other_language_category(found: Analysis, pack: Pack) -> str | None:
    """For text in a language the bot does not speak: the category to offer (foreign
    residents), unless the text is only a greeting."""
    table = pack.triage.get("ja")
    if table is None or table.other_language not in pack.categories or is_greeting(found, table):
        return None
    return table.other_language


def _slots(found: Analysis, table: Vocab, pack: Pack | None,
           lemmas: frozenset[str]) -> dict[str, str]:
    slots: dict[str, str] = {}
    whose = _whose(found, table, lemmas)
    if whose:
        slots["whose"] = whose
    age = _age(found, table)
    if age:
        slots["age"] = age
    for name, cues in (("hiki_duration", table.hiki_duration), ("contact", table.contact)):
        value = next((v for v, cue in cues if cue.find(found, lemmas)), None)
        if value:
            slots[name] = value
    ward = _ward(found, pack)
    if ward:
        slots["ward"] = ward
    return slots


def _age(found: Analysis, table: Vocab) -> str | None:
    """The age band the text gives. An age said in numbers (the vocabulary's `exact_age`) wins
    over one inferred from a word (high school, grandmother): "out of school since junior high,
    and now I am 20" is 18-39."""
    inferred = None
    for value, cue in table.age:
        hit = cue.regex.search(found.norm) if cue.regex is not None else None
        if hit is None:
            continue
        if table.exact_age is not None and table.exact_age.search(hit.group()):
            return value
        inferred = inferred or value
    return inferred


def _whose(found: Analysis, table: Vocab, lemmas: frozenset[str],
           top: str | None = None) -> str | None:
    """Whose worry: someone else named as the subject ("my son is", "my mother's") wins over
    the writer; a family word followed by an agent particle (`agent_particles`) is the one
    doing it ("I am hit by my husband": the writer's worry); a person said to be missing
    (`absent`: "no friends") is nobody's worry; in `child_categories` the writer's own parents
    do not make it theirs."""
    others: list[str] = []
    mine = False
    for value, cue in table.whose:
        if not cue.find(found, lemmas) or not _as_word(found, cue, lemmas):
            continue
        name = normalize(cue.text)
        own = ((top in table.child_categories and (
            name in table.parents or (name in table.cared_kin and _cared_for(found, cue, table))))
               or (top in table.self_categories and name in table.partners))
        if value == "self" or own or _absent(found, cue, table.absent):
            mine = True
        elif not _only_agent(found, cue, table, value == "family"):
            others.append(value)
        elif value == "family":  # "hit by my husband": someone at home hurts the writer
            mine = True
    if others:
        return others[0]
    return "self" if mine else None


def _cared_for(found: Analysis, cue: _Cue, table: Vocab) -> bool:
    """Every mention of the family word is the one the writer cares for: followed by the
    particle no and a word of `cared` (the mother's care), or in English preceded by one of
    `en_cared_before` ("look after my mum")."""
    if cue.regex is not None:
        if table.en_cared_before is None:
            return False
        before = table.en_cared_before
        return _every_mention(found, cue, lambda m: bool(
            before.search(found.norm[max(0, m.start() - 20):m.start()])))
    if not table.cared or not cue.first:
        return False
    tokens = found.tokens
    particle = default_rules().particle
    seen = False
    for i, token in enumerate(tokens):
        if token.lemma != cue.first:
            continue
        seen = True
        j = i + 1  # past the rest of the word and its suffixes (grand-ma, brother-s)
        while j < min(len(tokens), i + 4) and tokens[j].pos != particle:
            j += 1
        if j + 1 >= len(tokens) or tokens[j].surface not in table.place_particles or \
                tokens[j + 1].lemma not in table.cared:
            return False
    return seen


def _only_agent(found: Analysis, cue: _Cue, table: Vocab, family: bool) -> bool:
    """Every mention of the person word marks it as the one acting on the writer or with the
    writer: followed by an agent particle (kara, to), or, for a family word, by a dative one
    (ni) with a passive or receiving verb later in the sentence ("hit by the husband"). For a
    family word, "whatever I say to my son" and "no talk with my son" (`reach`): the son is of
    concern. Other people ("give things to a friend") keep every particle as the writer's own
    doing."""
    if cue.regex is not None:
        return _en_agent(found, cue, table)
    if not table.agent_particles and not table.dative_particles:
        return False
    tokens = found.tokens
    seen = False
    for i, token in enumerate(tokens):
        if cue.first and token.lemma == cue.first:
            seen = True
            after = tokens[i + 1].surface if i + 1 < len(tokens) else ""
            rest = tokens[i + 2:]
            if not family and after in table.place_particles and rest and \
                    rest[0].lemma in table.places:
                continue  # "at a friend's house": a place
            if after in table.agent_particles or (after in table.dative_particles and not family):
                if family and after in table.reach_particles and \
                        normalize(cue.text) not in table.parents and \
                        _follows(rest, table.reach):
                    return False
                continue
            if after not in table.dative_particles or not _done_to_writer(rest, table):
                return False
    return seen


def _done_to_writer(tokens: list[Any], table: Vocab) -> bool:
    """After "<family> ni": a passive or receiving verb before the sentence ends, made of a
    verb that acts on someone (being hit, being told, not being handed), not of one the family
    member does to themselves or by going away (shutting in, quitting, leaving: `adversative`)."""
    for k, token in enumerate(tokens):
        if token.surface and token.surface[0] in _SENTENCE_END:
            return False
        if token.lemma in table.passive:
            return not (k > 0 and tokens[k - 1].lemma in table.adversative)
    return False


def _en_agent(found: Analysis, cue: _Cue, table: Vocab) -> bool:
    """English: every mention of the person word is the actor or the writer's company: after
    "by", "with", "from" (`en_agent_before`), or followed within a few words by "me"
    (`en_agent_object`: "my wife is leaving me")."""
    if cue.regex is None or (table.en_agent_before is None and table.en_agent_object is None):
        return False
    return _every_mention(found, cue, lambda m: bool(
        (table.en_agent_before is not None
         and table.en_agent_before.search(found.norm[max(0, m.start() - 12):m.start()]))
        or (table.en_agent_object is not None
            and table.en_agent_object.search(found.norm[m.end():m.end() + 40]))))


def _every_mention(found: Analysis, cue: _Cue, test: Callable[[re.Match[str]], bool]) -> bool:
    """English: the person word is mentioned, and every mention passes `test`."""
    hits = list(cue.regex.finditer(found.norm)) if cue.regex is not None else []
    return bool(hits) and all(test(m) for m in hits)


_SENTENCE_END = frozenset(SENTENCE_ENDS)


def _follows(tokens: list[Any], wanted: frozenset[str]) -> bool:
    """One of these lemmas (a passive verb, a word of talk) before the sentence ends."""
    for token in tokens:
        if token.surface and token.surface[0] in _SENTENCE_END:
            return False
        if token.lemma in wanted:
            return True
    return False


def _both_parents(found: Analysis, table: Vocab, lemmas: frozenset[str]) -> bool:
    """Two different parents named, neither as the one acting on the writer ("father hits
    mother", "my dad screams at my mum"): a child telling of one parent hurting the other —
    the family's worry, not the writer's own, even in `self_categories`."""
    named = {normalize(cue.text) for value, cue in table.whose
             if value == "family" and normalize(cue.text) in table.parents
             and cue.find(found, lemmas) and _as_word(found, cue, lemmas)
             and not _only_agent(found, cue, table, True)}
    return len(named) >= 2


def _kin_subject(found: Analysis, table: Vocab, lemmas: frozenset[str]) -> bool:
    """One of `kin` (a daughter) named as the subject of the sentence: the one of concern."""
    for value, cue in table.whose:
        if value != "family" or normalize(cue.text) not in table.kin or \
                not cue.find(found, lemmas) or not _as_word(found, cue, lemmas):
            continue
        if cue.regex is not None:
            if table.en_subject_after is not None and any(
                    table.en_subject_after.search(found.norm[m.end():m.end() + 12])
                    for m in cue.regex.finditer(found.norm)):
                return True
            continue
        tokens = found.tokens
        if any(t.lemma == cue.first and i + 1 < len(tokens)
               and tokens[i + 1].surface in table.subject_particles
               for i, t in enumerate(tokens)):
            return True
    return False


def _as_word(found: Analysis, cue: _Cue, lemmas: frozenset[str]) -> bool:
    """A person word found only by its reading must be a noun as typed: "shimai" inside
    "yatte shimai sou" is the verb shimau, not the word for sisters."""
    if not cue.reading or (cue.first and cue.first in lemmas) or (
            cue.surface and cue.surface in found.norm):
        return True
    nouns = default_rules().nouns
    return any(t.pos in nouns and cue.reading in t.reading for t in found.tokens)


def _absent(found: Analysis, cue: _Cue, absent: list[_Cue]) -> bool:
    """Every mention of the person word is followed, as its first or second word after the
    particles, by one of `absent` ("no friends", "not a single acquaintance"): the person
    is missing."""
    if not absent:
        return False
    if cue.regex is not None:  # English: the text right after the word
        ends = [m.end() for m in cue.regex.finditer(found.norm)]
        return bool(ends) and all(
            any(a.regex is not None and a.regex.search(found.norm[end:end + 30])
                for a in absent) for end in ends)
    tokens = found.tokens
    particle = default_rules().particle
    seen = False
    for i, token in enumerate(tokens):
        if not cue.first or token.lemma != cue.first:
            continue
        seen = True
        # the next words, particles left out: the absence must come first or second
        after = [t.lemma for t in tokens[i + 1:i + 8] if t.lemma and t.pos != particle][:5]
        window = [" " + " ".join(after[k:]) + " " for k in range(min(len(after), 2))]
        if not any(a.lemma is not None and a.lemma.search(w) for a in absent for w in window):
            return False
    return seen


def _ward(found: Analysis, pack: Pack | None) -> str | None:
    """A ward (or branch office area) named in the text, from the pack's wards.yaml names read
    as its `suffixes` say."""
    if pack is None:
        return None
    names = _WARD_NAMES.get(pack.root)
    if names is None:
        names = _WARD_NAMES[pack.root] = _ward_names(pack)
    for name, ward_id in names:
        if name in found.norm:
            return ward_id
    return None


_WARD_NAMES: dict[Path, list[tuple[str, str]]] = {}


def _ward_names(pack: Pack) -> list[tuple[str, str]]:
    """(normalised name, ward id): branch areas first (Fukakusa before Fushimi Ward), then
    wards with and without the ward suffix, then the pack's ward synonyms; a name of one
    character (Kita Ward's, without its suffix) is too little. The suffixes are the pack's
    (wards.yaml `suffixes`)."""
    branches, heads = [], []
    suffixes = pack.wards.suffixes
    ward_suffix = suffixes.ward if suffixes is not None else ""
    branch_name = re.compile(r"(\S+?)" + re.escape(suffixes.branch)) \
        if suffixes is not None and suffixes.branch else None
    for ward in pack.wards.wards:
        names = [ward.name.en.removesuffix(" Ward")]
        key = f"syn.ward.{ward.id}"
        if pack.has_msg(key):
            names += [str(w) for w in pack.msg(key, "ja")]
        branch = branch_name.search(ward.name.ja) if branch_name is not None else None
        if branch:
            branches.append((branch.group(1), ward.id))
            branches.append((branch.group(1).split("(")[0], ward.id))
        head = re.split(r"[\uff08( ]", ward.name.ja)[0]  # up to a bracket (either width) or space
        heads += [(head, ward.id), (head.removesuffix(ward_suffix), ward.id)]
        heads += [(n, ward.id) for n in names]
    out = []
    for name, ward_id in [*branches, *heads]:
        norm = normalize(name)
        if len(norm) >= 2 and (norm, ward_id) not in out:
            out.append((norm, ward_id))
    return out


def explain(text: str, pack: Pack, detector: Any, lang: str = "ja") -> str:
    """What the bot understands of `text`, for staff: forms, matches, slots, crisis verdict."""
    found = analyze(text)
    result = triage(found, lang, pack)
    crisis = detector.detect(found)
    lines = [f"normalised: {found.norm}",
             f"lemmas:     {found.lemmas.strip()}",
             f"written in: {result.lang or '?'}"]
    if result.scores:
        lines.append("categories:")
        for cid, score in result.scores:
            lines.append(f"  {cid:<15} {score:5.2f}  " + ", ".join(result.evidence[cid]))
    else:
        lines.append("categories: none")
    verdict = ("confident: " + result.top if result.top else
               "several: " + ", ".join(result.plausible) if result.plausible else "nothing fits")
    lines.append(f"decision:   {verdict}")
    lines.append("slots:      " + (", ".join(f"{k}={v}" for k, v in result.slots.items())
                                   or "none"))
    lines.append("crisis:     " + (f"{crisis.kind} ({crisis.rule})" if crisis else "no"))
    return "\n".join(lines)
