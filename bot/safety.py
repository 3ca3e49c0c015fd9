"""Crisis detection on any free text, in any state (DESIGN.md, safety rule 1).

The terms live in the content pack (`crisis.yaml`) so staff can extend them without code.
Matching happens on normalised text (bot.textnorm): Japanese terms on the text with spaces and
punctuation removed; terms with Latin letters on a spaced form with word edges, so "od" finds
"OD" followed by Japanese but not "good". Exclusions (hyperbole such as "laughed to death", or
asking about the suicide-prevention window) blank out their span before terms are searched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.textnorm import canonical, normalize, normalize_words

CRISIS_KINDS = ("child_harm", "violence", "self_harm")  # checked in this order
LATIN = re.compile(r"[a-z]")


@dataclass(frozen=True)
class CrisisMatch:
    kind: str
    rule: str


class Rules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    terms: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"pattern {value!r} does not compile: {exc}") from None
        return values


class CrisisFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int
    kinds: dict[str, Rules]
    exclusions: list[str] = Field(default_factory=list)

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: dict[str, Rules]) -> dict[str, Rules]:
        unknown = set(kinds) - set(CRISIS_KINDS)
        if unknown:
            raise ValueError(f"unknown crisis kind(s) {sorted(unknown)}; use {CRISIS_KINDS}")
        return kinds

    @field_validator("exclusions")
    @classmethod
    def _exclusions_compile(cls, values: list[str]) -> list[str]:
        return Rules._compiles(values)  # type: ignore[no-any-return]


def _pattern_source(pattern: str) -> str:
    """Patterns see normalised text: fold their letters the same way (regex syntax is ASCII,
    so only the punctuation-dropping step is left out)."""
    return canonical(pattern)


@dataclass
class _Kind:
    name: str
    joined: re.Pattern[str] | None          # Japanese terms and patterns, on the joined text
    spaced: re.Pattern[str] | None          # Latin terms, on the spaced text
    names: dict[str, str] = field(default_factory=dict)


class CrisisDetector:
    """One compiled alternation per kind; detect() costs a few regex searches."""

    def __init__(self, spec: CrisisFile):
        self.version = spec.version
        self.exclusion = (re.compile("|".join(f"(?:{_pattern_source(p)})"
                                              for p in spec.exclusions))
                          if spec.exclusions else None)
        self.kinds: list[_Kind] = []
        for name in CRISIS_KINDS:
            rules = spec.kinds.get(name)
            if rules is None:
                continue
            joined, spaced = [], []
            for term in rules.terms:
                norm = normalize(term)
                if not norm:
                    continue
                if LATIN.search(norm):
                    words = normalize_words(term).split()
                    spaced.append(r"(?<![a-z0-9])" + r"\s*".join(map(re.escape, words))
                                  + r"(?![a-z])")
                else:
                    joined.append(re.escape(norm))
            joined += [f"(?:{_pattern_source(p)})" for p in rules.patterns]
            self.kinds.append(_Kind(
                name=name,
                joined=re.compile("|".join(joined)) if joined else None,
                spaced=re.compile("|".join(spaced)) if spaced else None))

    @classmethod
    def from_file(cls, path: Path) -> CrisisDetector:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            return cls(CrisisFile.model_validate(data))
        except ValidationError as exc:
            lines = [f"{Path(path).name}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                     for e in exc.errors()]
            raise ValueError("\n".join(lines)) from None

    def _blank(self, text: str) -> str:
        if self.exclusion is None:
            return text
        return self.exclusion.sub(lambda m: "\x00" * len(m.group(0)), text)

    def detect(self, text: str) -> CrisisMatch | None:
        if not text:
            return None
        joined = self._blank(normalize(text))
        spaced = self._blank(normalize_words(text))
        for kind in self.kinds:
            for regex, target in ((kind.joined, joined), (kind.spaced, spaced)):
                if regex is None:
                    continue
                found = regex.search(target)
                if found:
                    return CrisisMatch(kind=kind.name, rule=found.group(0))
        return None


@dataclass
class EvalReport:
    recall: float
    false_positive_rate: float
    misses: list[str]
    false_positives: list[str]
    wrong_kind: list[str]
    n_risk: int
    n_ordinary: int

    def format(self) -> str:
        lines = [
            f"risk phrasings:     {self.n_risk}",
            f"ordinary phrasings: {self.n_ordinary}",
            f"recall:             {self.recall:.1%}  ({self.n_risk - len(self.misses)}"
            f"/{self.n_risk})",
            f"false positives:    {self.false_positive_rate:.1%}  ({len(self.false_positives)}"
            f"/{self.n_ordinary})",
        ]
        for title, items in (("missed", self.misses), ("false positive", self.false_positives),
                             ("wrong kind", self.wrong_kind)):
            lines += [f"  {title}: {item}" for item in items]
        return "\n".join(lines)


def evaluate(detector: CrisisDetector, eval_path: Path) -> EvalReport:
    """Recall on the risk phrasings, false positives on the ordinary ones."""
    data = yaml.safe_load(Path(eval_path).read_text(encoding="utf-8"))
    risk = data["risk"]
    ordinary = data["ordinary"]
    misses, wrong = [], []
    for item in risk:
        found = detector.detect(item["text"])
        expected = item["kind"] if isinstance(item["kind"], list) else [item["kind"]]
        if found is None:
            misses.append(item["text"])
        elif found.kind not in expected:
            wrong.append(f"{item['text']} → {found.kind} (expected {'/'.join(expected)})")
    fps = [text for text in ordinary if detector.detect(text) is not None]
    return EvalReport(
        recall=1 - len(misses) / len(risk), false_positive_rate=len(fps) / len(ordinary),
        misses=misses, false_positives=fps, wrong_kind=wrong, n_risk=len(risk),
        n_ordinary=len(ordinary))
