"""`python -m bot validate [PACK]`: every problem in a pack and the flows that use it, at once."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from bot.flows.schema import FLOWS_DIR, FlowError, FlowSpec, load_flow
from bot.language import RulesError
from bot.pack.loader import Pack, PackError, crisis_file, load_pack
from bot.pack.models import LANGS, I18n, Window

MAX_LABEL = 20  # LINE quick-reply label limit
CHECKS_FILE = Path(__file__).resolve().parent / "pack" / "checks.yaml"


def load_checks(path: Path = CHECKS_FILE) -> dict[str, Any]:
    """The word lists validate checks against (bot/pack/checks.yaml)."""
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _file(window: Window) -> str:
    return "hotlines.yaml" if window.kind == "hotline" else "windows.yaml"


def _found(text: str, words: list[str]) -> list[str]:
    folded = text.casefold()
    return [w for w in words if str(w).casefold() in folded]


def reach_errors(pack: Pack) -> list[str]:
    """Every window a resident can be shown must say how to reach it."""
    return [f"{_file(w)}: {w.id}: a resident can be shown this window but it has no phone, "
            f"mail, url or address" for w in pack.windows.values() if not w.reachable]


def internal_note_errors(pack: Pack, markers: list[str]) -> list[str]:
    """Resident-facing text must not carry notes meant for staff."""
    errors = []
    for w in pack.windows.values():
        fields: list[tuple[str, I18n | None]] = [
            ("name", w.name), ("summary", w.summary), ("address", w.address),
            ("hours.note", w.hours.note if w.hours else None)]
        for field, text in fields:
            if text is None:
                continue
            for lang in LANGS:
                for marker in _found(text.get(lang), markers):
                    errors.append(f"{_file(w)}: {w.id}.{field}: resident-facing {lang} text "
                                  f"carries an internal note ({marker!r}); move it to a "
                                  f"comment or the staff-only `note`")
    return errors


def neutral_errors(pack: Pack, prefixes: list[str], words: list[str]) -> list[str]:
    """Notices that reach a phone unasked must not reveal what they are about."""
    errors = []
    for lang in LANGS:
        for key, value in sorted(pack.messages[lang].items()):
            if not any(key.startswith(p) for p in prefixes):
                continue
            for word in _found(str(value), words):
                errors.append(f"messages.{lang}.yaml: {key}: a phone-safe notice must not "
                              f"contain the revealing word {word!r}")
    return errors


def crisis_errors(pack: Pack) -> list[str]:
    """Every crisis reply must have a line open at any hour (safety rule 1)."""
    kinds = sorted({k for w in pack.hotlines for k in w.crisis}
                   | {key.split(".")[2] for key in pack.messages["ja"]
                      if key.startswith("crisis.lead.")})  # every kind a reply is written for
    return [f"hotlines.yaml: crisis {kind!r} has no line with hours.always: true (a crisis "
            f"reply must always list a line open now)" for kind in kinds
            if not any(w.hours and w.hours.always for w in pack.crisis_lines(kind))]


def content_errors(pack: Pack, checks: dict[str, Any] | None = None) -> list[str]:
    """The checks of what a resident reads: reachable, no internal notes, neutral notices."""
    checks = load_checks() if checks is None else checks
    return (reach_errors(pack) + internal_note_errors(pack, checks["internal_note_markers"])
            + neutral_errors(pack, checks["neutral_messages"], checks["revealing_words"])
            + crisis_errors(pack))


def _label_errors(pack: Pack, flow: FlowSpec) -> list[str]:
    errors = []
    empty = {"categories": not pack.categories, "wards": not pack.wards.wards}
    shown = [s for s in flow.states.values()  # a state listing nothing is skipped, never shown
             if not (s.choices_from and empty[s.choices_from])]
    labels = {c.label for s in shown for c in [*s.choices, *s.extra]}
    labels |= {c.label for c in flow.commands} | {"common.prev", "common.next"}
    for key in sorted(labels):
        if not pack.has_msg(key):
            continue
        for lang in LANGS:
            if len(pack.msg(key, lang)) > MAX_LABEL:
                errors.append(f"messages.{lang}.yaml: {key}: label longer than {MAX_LABEL}")
    for kind, items in (("categories.yaml", pack.categories.values()),
                        ("wards.yaml", pack.wards.wards)):
        for item in items:
            text = item.label if hasattr(item, "label") else item.name
            for lang in LANGS:
                if len(text.get(lang)) > MAX_LABEL:
                    errors.append(f"{kind}: {item.id}: {lang} label longer than {MAX_LABEL}")
    return errors


def _triage_errors(pack: Pack) -> list[str]:
    """The common free-text vocabulary fits this pack: its categories, and the words used to
    confirm each one with the resident (triage.topic.<id>)."""
    errors = []
    for lang, vocab in pack.triage.items():
        for cat in vocab.categories:
            if cat.id not in pack.categories:
                errors.append(f"common/triage.{lang}.yaml: categories.{cat.id}: not a category "
                              f"of pack {pack.name!r}")
    for cat in pack.categories:
        if not pack.has_msg(f"triage.topic.{cat}"):
            errors.append(f"messages: triage.topic.{cat} is missing (used to confirm free text)")
    return errors


def validate(pack_name: str, flows_dir: Path = FLOWS_DIR) -> list[str]:
    errors: list[str] = []
    pack: Pack | None = None
    try:
        pack = load_pack(pack_name)
    except PackError as exc:
        errors += exc.errors
    flows = []
    for path in sorted(flows_dir.glob("*.yaml")):
        try:
            flows.append(load_flow(path))
        except FlowError as exc:
            errors += str(exc).splitlines()
    crisis = crisis_file(pack_name)
    from bot.safety import CrisisDetector, CrisisFileError

    try:
        CrisisDetector.from_file(crisis)
    except RulesError:
        pass  # crisis terms are read through the analyser, whose broken rules load_pack named
    except (CrisisFileError, OSError, ValueError, TypeError, re.error) as exc:
        errors.append(f"{crisis.parent.name}/crisis.yaml: {exc}")  # with the others, go on
    from bot import crisis_model

    try:
        crisis_model.load()  # the soft tier's weights, shared by every pack
    except PackError as exc:
        errors += exc.errors
    if pack is not None:
        errors += content_errors(pack)
        for flow in flows:
            for key in sorted(flow.message_keys()):
                if not pack.has_msg(key):
                    errors.append(f"flows/{flow.id}.yaml: message key {key!r} is not in "
                                  f"messages.ja.yaml and messages.en.yaml")
            errors += _label_errors(pack, flow)
            errors += _triage_errors(pack)
            if pack.crisis_lines("self_harm") == []:
                errors.append("hotlines.yaml: no hotline has crisis: [self_harm]")
    return errors
