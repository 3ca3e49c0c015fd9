"""`python -m bot validate [PACK]`: every problem in a pack and the flows that use it, at once."""

from __future__ import annotations

import re
from pathlib import Path

from bot.flows.schema import FLOWS_DIR, FlowError, FlowSpec, load_flow
from bot.pack.loader import Pack, PackError, crisis_file, load_pack
from bot.pack.models import LANGS

MAX_LABEL = 20  # LINE quick-reply label limit


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
    except (CrisisFileError, OSError, ValueError, TypeError, re.error) as exc:
        errors.append(f"{crisis.parent.name}/crisis.yaml: {exc}")  # with the others, go on
    if pack is not None:
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
