"""The schema of a flow YAML file, checked at load so a typo stops start-up, not a resident."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FLOWS_DIR = Path(__file__).resolve().parent
COMMANDS = ("restart", "stop", "help", "directory", "lang_en", "lang_ja", "lang_switch",
            "forget", "privacy", "human", "resume", "quick_exit", "reveal", "direct_on",
            "direct_off")
CommandId = Literal["restart", "stop", "help", "directory", "lang_en", "lang_ja", "lang_switch",
                    "forget", "privacy", "human", "resume", "quick_exit", "reveal", "direct_on",
                    "direct_off"]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChoiceSpec(Spec):
    value: str = Field(pattern=r"^[a-z0-9_]+$")
    label: str
    next: str | None = None
    command: CommandId | None = None
    flags: list[str] = Field(default_factory=list)
    crisis: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ChoiceSpec:
        if (self.next is None) == (self.command is None):
            raise ValueError(f"choice {self.value!r} needs exactly one of next or command")
        return self


class StateSpec(Spec):
    kind: Literal["question", "info", "results", "directory", "handoff_consent",
                  "handoff_message", "handoff_open", "triage"] = "question"
    prompt: str
    answer: str | None = None
    choices: list[ChoiceSpec] = Field(default_factory=list)
    choices_from: Literal["categories", "wards"] | None = None
    next: str | None = None
    next_by_value: dict[str, str] = Field(default_factory=dict)
    crisis_by_value: dict[str, str] = Field(default_factory=dict)
    exclude_answered: bool = False
    repeat: int | None = Field(default=None, ge=1, le=5)
    then: str | None = None
    extra: list[ChoiceSpec] = Field(default_factory=list)
    # Offered only on these channels (e.g. a LINE push needs LINE); elsewhere the flow goes on
    # to `otherwise` at once.
    channels: list[str] = Field(default_factory=list)
    otherwise: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> StateSpec:
        if self.choices and self.choices_from:
            raise ValueError("a state has either choices or choices_from, not both")
        if not self.choices and not self.choices_from:
            raise ValueError("a state needs choices or choices_from: no dead ends")
        if self.choices_from and self.kind == "question" and not self.next:
            raise ValueError("choices_from needs a next state")
        if self.kind == "question" and not self.answer:
            raise ValueError("a question needs `answer`: the session field it fills")
        if (self.repeat is None) != (self.then is None):
            raise ValueError("repeat and then go together")
        if bool(self.channels) != bool(self.otherwise):
            raise ValueError("channels and otherwise go together")
        return self

    @property
    def counts_as_question(self) -> bool:
        return self.kind == "question"


class CommandSpec(Spec):
    id: CommandId
    words: str
    label: str


class FlowSpec(Spec):
    id: str
    start: str
    results: str
    max_questions: int = Field(ge=1, le=20)
    commands: list[CommandSpec]
    states: dict[str, StateSpec]
    # States a tap may arrive in without being the current one: the question of a message we
    # sent first (the follow-up), answered days later, maybe after the session expired.
    entries: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _graph(self) -> FlowSpec:
        names = set(self.states)
        problems = []
        for ref in (self.start, self.results, *self.entries):
            if ref not in names:
                problems.append(f"unknown state {ref!r}")
        for name, state in self.states.items():
            targets = [c.next for c in [*state.choices, *state.extra] if c.next]
            targets += [t for t in (state.next, state.then, state.otherwise) if t]
            targets += list(state.next_by_value.values())
            problems += [f"{name}: next {t!r} is not a state" for t in targets if t not in names]
        if "directory" not in names:
            problems.append("a flow needs a directory state (the list-of-windows command)")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def message_keys(self) -> set[str]:
        keys = {c.words for c in self.commands} | {c.label for c in self.commands}
        for state in self.states.values():
            keys.add(state.prompt)
            keys |= {c.label for c in [*state.choices, *state.extra]}
        return keys


class FlowError(Exception):
    pass


def load_flow(path: Path) -> FlowSpec:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return FlowSpec.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise FlowError(f"{path.name}: {exc}") from exc
    except ValidationError as exc:
        lines = [f"{path.name}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                 for e in exc.errors()]
        raise FlowError("\n".join(lines)) from exc


def load_flows(directory: Path = FLOWS_DIR) -> dict[str, FlowSpec]:
    flows = {}
    for path in sorted(directory.glob("*.yaml")):
        flow = load_flow(path)
        flows[flow.id] = flow
    return flows
