"""The Japanese language layer: one place where typed text becomes forms we can match.

Used alike by choice matching (bot/engine.py), triage (bot/triage.py) and crisis detection
(bot/safety.py), so the three never disagree about what a message says.

Two views of a message:
  - `normalize(text)`: the surface, folded (see its docstring). Literal terms and patterns run
    on it: it keeps whatever the analyser would split oddly (slang, typos, English).
  - `Analysis.lemmas`: the message cut into words by SudachiPy, each word replaced by its
    normalised dictionary form (`normalized_form`: "was hit" written in kanji or in kana, and
    "lonely" in its three spellings, each meet one lemma), joined with spaces and wrapped in
    spaces (" l1 l2 l3 "), so that every conjugation, okurigana variant and kana spelling of a
    word meets one entry.

How SudachiPy's output is read — dialect forms rewritten before analysis, auxiliaries glued
(every negation one lemma), "must" told from "not", the parts of speech that carry meaning,
the characters that mark Chinese — is data: bot/content/common/language.ja.yaml (the examples
are there, next to each rule), compiled once per process (`default_rules`, `load_rules`).

The dictionary is `sudachidict_small`, installed as a Python package (pyproject.toml); nothing is
downloaded at run time. One tokenizer per thread (SudachiPy tokenizers keep state while they
work), created on first use from a dictionary loaded once per process.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# libyaml's safe loader when the build has it (several times faster on the big vocabulary files,
# which start-up reads), else PyYAML's own.
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DICTIONARY = "small"  # sudachidict_small: same normalised forms as core here, ~60% of its size

# -- surface normalisation ------------------------------------------------------------------
# Stretching marks, dropped so a stretched word matches its plain form: the long-vowel mark and
# the small vowels a i u e o, in both scripts.
_STRETCH = "\u30fc" + "".join(chr(c) for c in (*range(0x3041, 0x304A, 2),
                                               *range(0x30A1, 0x30AA, 2)))
_KANA = {k: k - 0x60 for k in range(0x30A1, 0x30F7)}  # katakana -> hiragana
PATTERN_FOLD: dict[int, int | None] = {**_KANA, **dict.fromkeys(map(ord, _STRETCH))}
# Apostrophes go too, so "don't" and "dont" are one word.
_TEXT_FOLD: dict[int, int | None] = {**PATTERN_FOLD,
                                     **dict.fromkeys(map(ord, "'`\u00b4\u2018\u2019"))}
# Runs of characters the fold tables change: folding only them is several times faster than
# translating the whole text.
_FOLDABLE = re.compile("[\u3041\u3043\u3045\u3047\u3049\u30a1-\u30fc'`\u00b4\u2018\u2019]+")
_PUNCT = re.compile(r"[\W_]+")
# A space not between two Latin letters or digits (written to start with the literal space).
_LONE_SPACE = re.compile(r" (?:(?![a-z0-9])|(?<![a-z0-9] ))")
_REPEAT = re.compile(r"(.)\1\1+")
ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def normalize(text: str) -> str:
    """The one surface form every term, pattern, choice word and message is matched in, so
    that the ways people type on phones (half-width kana, katakana for emphasis, stretched
    words, stray spaces and emoji) all meet the same words.

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


def fold_pattern(source: str) -> str:
    """Patterns are written naturally (katakana, full-width letters) but run on normalised text:
    fold their kana the same way. Case is left alone: regex escapes such as \\S depend on it."""
    return unicodedata.normalize("NFKC", source).translate(PATTERN_FOLD)


# -- morphological analysis -----------------------------------------------------------------
@cache
def _dictionary() -> Any:
    from sudachipy import Dictionary  # imported here: a process that never analyses pays nothing

    return Dictionary(dict=DICTIONARY)


_local = threading.local()


def _tokenizer() -> Any:
    tokenizer = getattr(_local, "tokenizer", None)
    if tokenizer is None:
        from sudachipy import SplitMode

        tokenizer = _local.tokenizer = _dictionary().tokenizer(SplitMode.C)
    return tokenizer


def warm_up() -> None:
    """Load the dictionary and the rules now (at start-up) rather than on the first resident's
    message."""
    default_rules()
    _tokenizer().tokenize("")


@dataclass(frozen=True)
class Token:
    surface: str  # normalised surface
    reading: str  # normalised reading (kana), so text typed in kana meets words in kanji
    lemma: str  # normalised dictionary form (normalized_form, folded like the surface)
    pos: str  # the first part-of-speech field, as SudachiPy names it in Japanese (noun, verb...)


_KANA_ONLY = re.compile("[\u3041-\u309f]+")
_SPLIT_TEXT = re.compile(r"[\s\u3000]+")
# What ends a sentence, full- or half-width (ideographic and full-width stops, ! and ?, a
# line break): triage reads a person word within its sentence, crisis guards look there.
SENTENCE_ENDS = "\u3002\uff0e.!\uff01?\uff1f\n"


@dataclass(frozen=True)
class Analysis:
    """A message as the matchers see it. Build with `analyze`."""

    text: str
    norm: str  # normalize(text)
    tokens: tuple[Token, ...]
    lemmas: str  # " l1 l2 l3 ": lemma forms with a space on both sides of each
    # the parts of speech that carry meaning (the rules' content_pos), for `content`
    content_pos: frozenset[str] = field(repr=False, compare=False)

    @cached_property
    def reading(self) -> str:
        """The parts typed in kana, as read aloud (folded): "futoukou desu" typed in hiragana
        reads futoukoudesu, and so meets the word futoukou (school refusal) listed in kanji.
        Words typed in kanji are left out ("|"): they meet their vocabulary by lemma, and their
        readings would only collide (jiheishou, autism, holds isho, a suicide note)."""
        return "".join(t.reading if _KANA_ONLY.fullmatch(t.surface) else "|"
                       for t in self.tokens)

    @cached_property
    def content(self) -> frozenset[str]:
        """The lemmas of the meaning-bearing words (particles and auxiliaries only glue)."""
        return frozenset(t.lemma for t in self.tokens if t.pos in self.content_pos and t.lemma)


def _lemma_form(word: str) -> str:
    return normalize(word).replace(" ", "")


# -- the rules (bot/content/common/language.ja.yaml) ---------------------------------------------
RULES_NAME = "language.ja.yaml"
RULES_FILE = Path(__file__).resolve().parent / "content" / "common" / RULES_NAME


class RulesError(Exception):
    """The analyser's rules file cannot be used; one line per problem, naming file and field.

    Not a ValueError: raised while another file's words are analysed (in a pydantic validator,
    say), it must stop the load, not be taken for a fault of those words."""


def checked_pattern(source: str) -> str:
    """A regular expression from a data file, as written; ValueError naming it when it does
    not compile (the line validate and start-up print)."""
    try:
        re.compile(source)
    except re.error as exc:
        raise ValueError(f"pattern {source!r} does not compile: {exc}") from None
    return source


class DialectRule(BaseModel):
    """A dialect form rewritten to the standard one before analysis."""

    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(min_length=1)  # a regular expression on the text as typed (NFKC)
    replace: str  # literal text

    @field_validator("pattern")
    @classmethod
    def _compile(cls, source: str) -> str:
        return checked_pattern(source)


class ObligationRule(BaseModel):
    """A negation followed by `join` glue and an `end` word means "must" (see _obligations)."""

    model_config = ConfigDict(extra="forbid")

    lemma: str = Field(min_length=1)
    join: list[str] = Field(min_length=1)
    end: list[str] = Field(min_length=1)
    alone: list[str]


class RulesFile(BaseModel):
    """language.ja.yaml: every field required, so a rule left out fails at start-up."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1)
    content_pos: list[str] = Field(min_length=1)
    auxiliary_pos: str = Field(min_length=1)
    noun_pos: list[str] = Field(min_length=1)
    particle_pos: str = Field(min_length=1)
    negation: str = Field(min_length=1)
    glue: dict[str, str] = Field(min_length=1)
    obligation: ObligationRule
    dialect: list[DialectRule]
    chinese_only: str = Field(min_length=1)

    @model_validator(mode="after")
    def _lemmas(self) -> RulesFile:
        """The two lemmas the analyser writes are words once folded (a stretch mark alone is
        not), and every negation can become the one lemma."""
        for name, word in (("negation", self.negation),
                           ("obligation.lemma", self.obligation.lemma)):
            if not _lemma_form(word):
                raise ValueError(f"{name}: {word!r} is no word once folded")
        if _lemma_form(self.negation) not in map(_lemma_form, self.glue.values()):
            raise ValueError(f"glue: no auxiliary is mapped to the negation {self.negation!r}")
        return self


@dataclass(frozen=True)
class Rules:
    """The rules compiled for the hot path: sets, one dict, precompiled patterns."""

    content_pos: frozenset[str]
    aux: str  # the part of speech whose lemmas `glue` maps
    nouns: frozenset[str]  # parts of speech of a noun as typed
    particle: str  # the part of speech of particles
    negation: str  # the one lemma of every negation
    glue: dict[str, str]  # auxiliary lemma -> replacement ("" drops it)
    obligation: str  # the lemma a "must" negation becomes
    must_join: frozenset[str]
    must_end: frozenset[str]
    must_alone: frozenset[str]
    dialect: tuple[tuple[re.Pattern[str], str], ...]  # (pattern, literal replacement), in order
    chinese_only: re.Pattern[str]

    @classmethod
    def build(cls, spec: RulesFile) -> Rules:
        def words(items: list[str]) -> frozenset[str]:
            return frozenset(map(_lemma_form, items))

        ob = spec.obligation
        # Replacements are literal text: a backslash is not a group reference.
        dialect = tuple((re.compile(r.pattern), r.replace.replace("\\", "\\\\"))
                        for r in spec.dialect)
        chars = "".join(spec.chinese_only.split())
        return cls(content_pos=frozenset(spec.content_pos), aux=spec.auxiliary_pos,
                   nouns=frozenset(spec.noun_pos), particle=spec.particle_pos,
                   negation=_lemma_form(spec.negation),
                   glue={_lemma_form(k): _lemma_form(v) for k, v in spec.glue.items()},
                   obligation=_lemma_form(ob.lemma), must_join=words(ob.join),
                   must_end=words(ob.end), must_alone=words(ob.alone), dialect=dialect,
                   chinese_only=re.compile("[" + re.escape(chars) + "]"))


def load_rules(path: Path = RULES_FILE) -> Rules:
    """Read and compile a rules file; raise RulesError naming every problem.

    Compiled once per file and version: the packs of a process share them."""
    path = Path(path)
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except FileNotFoundError:
        raise RulesError(f"{path.name}: file is missing") from None
    if key not in _COMPILED:
        _COMPILED[key] = _load_rules(path)
    return _COMPILED[key]


_COMPILED: dict[tuple[str, int], Rules] = {}


def _load_rules(path: Path) -> Rules:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
        return Rules.build(RulesFile.model_validate(data))
    except FileNotFoundError:
        raise RulesError(f"{path.name}: file is missing") from None
    except yaml.YAMLError as exc:
        raise RulesError(f"{path.name}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        raise RulesError("\n".join(_describe(path.name, e) for e in exc.errors())) from None


def _describe(filename: str, error: Any) -> str:
    """One line: file, where (dialect[3].pattern), what."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{filename}: {where.lstrip('.')}: {message}" if where else f"{filename}: {message}"


_RULES: Rules | None = None  # the process's rules, read from RULES_FILE on first use


def default_rules() -> Rules:
    """The rules every analysis uses unless told otherwise: the package's language.ja.yaml,
    as the dictionary is the package's (a pack loaded from another folder has its copy of the
    file checked by load_pack, not used)."""
    global _RULES
    if _RULES is None:
        _RULES = load_rules(RULES_FILE)
    return _RULES


def _obligations(tokens: list[Token], r: Rules) -> list[Token]:
    """A negation followed by its "must" glue and end word (see `obligation` in the rules file)
    becomes one word, `r.obligation`, and the glue after it is dropped."""
    out = list(tokens)
    for i, token in enumerate(out):
        if token.lemma != r.negation:
            continue
        j = i + 1
        while j < len(out) and out[j].lemma in r.must_join and j - i <= 2:
            j += 1
        ends = j > i + 1 and j < len(out) and out[j].lemma in r.must_end
        if not ends and token.surface not in r.must_alone:
            continue
        out[i] = Token(token.surface, token.reading, r.obligation, token.pos)
        if ends:
            k = j + 1
            while k < len(out) and not out[k].lemma:  # a dropped polite auxiliary
                k += 1
            k = k if k < len(out) and out[k].lemma == r.negation else j
            for m in range(i + 1, k + 1):
                out[m] = Token(out[m].surface, out[m].reading, "", out[m].pos)
    return out


def _standard(text: str, r: Rules) -> str:
    """The text with the dialect forms of the rules rewritten (for the analyser only)."""
    for pattern, replacement in r.dialect:
        if pattern.search(text):
            text = pattern.sub(replacement, text)
    return text


def analyze(text: str, rules: Rules | None = None) -> Analysis:
    """Cut, lemmatise and normalise a message (~0.05 ms for a sentence), by the process's
    rules (`default_rules()`) unless others are given."""
    r = rules or _RULES or default_rules()
    tokens: list[Token] = []
    if text.strip():
        aux, glue = r.aux, r.glue
        # NFKC first: SudachiPy sees full-width kana and ASCII digits, as residents mean them.
        clean = _standard(unicodedata.normalize("NFKC", text)[:2000], r)
        for part in _SPLIT_TEXT.split(clean):
            if not part:
                continue
            for m in _tokenizer().tokenize(part):
                lemma = _lemma_form(m.normalized_form())
                surface = _lemma_form(m.surface())
                if not lemma or not surface:
                    continue
                pos = m.part_of_speech()[0]
                if pos == aux and lemma in glue:
                    lemma = glue[lemma]
                tokens.append(Token(surface, _lemma_form(m.reading_form()), lemma, pos))
    tokens = _obligations(tokens, r)
    words = [t.lemma for t in tokens if t.lemma]
    lemmas = " " + " ".join(words) + " " if words else " "
    return Analysis(text=text, norm=normalize(text), tokens=tuple(tokens), lemmas=lemmas,
                    content_pos=r.content_pos)


def lemma_form(phrase: str) -> str:
    """A phrase as it appears in `Analysis.lemmas`, without the outer spaces: nagurareru (be
    hit) becomes "naguru reru" (hit + passive). Vocabulary is written naturally and converted
    with this."""
    return analyze(phrase).lemmas.strip()


# -- which language ---------------------------------------------------------------------------
_SCRIPTS = (
    ("ko", re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")),
    ("th", re.compile(r"[\u0e00-\u0e7f]")),
    ("ru", re.compile(r"[\u0400-\u04ff]")),
    ("ar", re.compile(r"[\u0600-\u06ff]")),
    ("ne", re.compile(r"[\u0900-\u097f]")),
)
_KANA_RE = re.compile(r"[\u3040-\u30ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")
# Letters with the marks Vietnamese uses (ơ ư đ and tone marks on vowels).
_VIET = re.compile(r"[ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]", re.I)


def script_language(text: str) -> str:
    """The language a message is plainly written in, by its script: "ja", "en", "zh", "ko",
    "vi", ... or "" when it cannot be told (digits, emoji, one Latin letter)."""
    if _KANA_RE.search(text):
        return "ja"
    for lang, pattern in _SCRIPTS:
        if pattern.search(text):
            return lang
    if _HAN.search(text):
        return "zh" if default_rules().chinese_only.search(text) else "ja"
    if _VIET.search(text):
        return "vi"
    if _LATIN_WORD.search(text):
        return "en"
    return ""


__all__ = [
    "ALNUM",
    "DICTIONARY",
    "RULES_FILE",
    "SAFE_LOADER",
    "SENTENCE_ENDS",
    "Analysis",
    "Rules",
    "RulesError",
    "Token",
    "analyze",
    "checked_pattern",
    "default_rules",
    "fold_pattern",
    "lemma_form",
    "load_rules",
    "normalize",
    "script_language",
    "warm_up",
]
