"""The analyser's rules are data (bot/content/common/language.ja.yaml): the file is what the
analyser runs on, and a rule that is missing or broken stops validation and start-up with a line
naming the file and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bot import language
from bot.config import Settings
from bot.language import (
    RULES_FILE,
    Rules,
    RulesError,
    analyze,
    default_rules,
    load_rules,
    script_language,
)
from bot.pack import PackError, load_pack
from bot.pack.loader import COMMON
from bot.validate import validate
from tests.pack_helpers import edit_yaml

SENTENCES = ["部屋を出なあかん", "おかんが怖い", "寂しいどす", "生きとっても", "わからへん",
             "毎日ひとりでさびしい", "部屋を出なきゃ", "あかんぼうが泣く", "我需要帮助"]


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    path = tmp_path / "language.ja.yaml"
    shutil.copy(RULES_FILE, path)
    return path


def edited(path: Path, change: Callable[[Any], None]) -> Rules:
    edit_yaml(path, change)
    return load_rules(path)


def _without_dialect(replacement: str) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        data["dialect"] = [r for r in data["dialect"] if r["replace"] != replacement]
    return change


# -- the file is what the analyser uses ---------------------------------------------------------
def test_the_process_rules_are_the_package_file_compiled_once():
    assert default_rules() is load_rules(RULES_FILE) is default_rules()


def test_a_copy_of_the_file_analyses_alike(rules_copy):
    copy = load_rules(rules_copy)
    assert copy is not default_rules()
    for text in SENTENCES:
        assert analyze(text, copy) == analyze(text)
        assert analyze(text, copy).content == analyze(text).content


def test_a_dialect_rule_removed_from_the_file_no_longer_applies(rules_copy):
    assert analyze("あかん").lemmas == analyze("だめ").lemmas
    rules = edited(rules_copy, _without_dialect("だめ"))
    assert analyze("あかん", rules).lemmas != analyze("だめ", rules).lemmas


def test_a_dialect_rule_added_to_the_file_applies(rules_copy):
    rules = edited(rules_copy, lambda d: d["dialect"].append(
        {"pattern": "ほげほげ", "replace": "寂しい"}))
    assert analyze("ほげほげ", rules).lemmas == analyze("寂しい").lemmas
    assert analyze("ほげほげ").lemmas != analyze("寂しい").lemmas
    assert analyze("ほげほげ", rules).norm == "ほげほげ"  # the surface keeps what was typed


def test_a_replacement_is_literal_text(rules_copy):
    rules = edited(rules_copy, lambda d: d["dialect"].append(
        {"pattern": "(ほげ)ほげ", "replace": "\\1"}))
    assert analyze("ほげほげ", rules).lemmas != analyze("ほげ").lemmas  # no group reference


def test_glue_comes_from_the_file(rules_copy):
    assert analyze("寂しいです").lemmas == analyze("寂しい").lemmas
    rules = edited(rules_copy, lambda d: d["glue"].pop("です"))
    assert analyze("寂しいです", rules).lemmas != analyze("寂しい", rules).lemmas


def test_the_negation_lemma_comes_from_the_file(rules_copy):
    def rename(data: Any) -> None:
        data["negation"] = "否定"
        data["glue"] = {k: "否定" if v == "無い" else v for k, v in data["glue"].items()}

    rules = edited(rules_copy, rename)
    assert analyze("わからへん", rules).lemmas.endswith(" 否定 ")
    assert analyze("部屋を出なきゃ", rules).lemmas == analyze("部屋を出なきゃ").lemmas  # must


def test_obligation_comes_from_the_file(rules_copy):
    standard = default_rules()
    assert analyze("部屋を出なきゃ").lemmas == f" 部屋 を 出る {standard.obligation} "
    rules = edited(rules_copy, lambda d: d["obligation"].update(lemma="義務"))
    assert analyze("部屋を出なきゃ", rules).lemmas == " 部屋 を 出る 義務 "
    rules = edited(rules_copy, lambda d: d["obligation"].update(alone=[]))
    assert analyze("部屋を出なきゃ", rules).lemmas.endswith(f" {standard.negation} ")
    rules = edited(rules_copy, lambda d: d["obligation"].update(end=["駄目"]))
    assert f" {standard.negation} " in analyze("部屋を出ないといけない", rules).lemmas


def test_content_parts_of_speech_come_from_the_file(rules_copy):
    found = analyze("部屋を出る")
    rules = edited(rules_copy, lambda d: d.update(content_pos=["名詞"]))
    assert analyze("部屋を出る", rules).content == {"部屋"} < found.content


def test_the_process_rules_are_used_when_none_are_given(rules_copy, monkeypatch):
    """analyze() and script_language() read the process's rules (monkeypatch restores them)."""
    assert script_language("我需要帮助") == "zh"
    rules = edited(rules_copy, lambda d: d.update(chinese_only="你"))
    monkeypatch.setattr(language, "_RULES", rules)
    assert script_language("我需要帮助") == "ja"
    assert script_language("你好") == "zh"
    rules = edited(rules_copy, lambda d: d["glue"].pop("です"))
    monkeypatch.setattr(language, "_RULES", rules)
    assert analyze("寂しいです").lemmas == analyze("寂しいです", rules).lemmas != " 寂しい "


# -- a broken rule is named -------------------------------------------------------------------
BROKEN = [
    (lambda d: d["dialect"][0].update(pattern="(あかん"),
     "dialect[0].pattern: pattern '(あかん' does not compile"),
    (lambda d: d.pop("obligation"), "obligation: Field required"),
    (lambda d: d["obligation"].pop("end"), "obligation.end: Field required"),
    (lambda d: d.update(content_pos=[]), "content_pos: List should have at least 1 item"),
    (lambda d: d.update(negation="否定"), "glue: no auxiliary is mapped to the negation '否定'"),
    (lambda d: d["obligation"].update(lemma="ー"), "obligation.lemma: 'ー' is no word once folded"),
    (lambda d: d.update(dialects=[]), "dialects: Extra inputs are not permitted"),
    (lambda d: d["dialect"].append({"pattern": "x"}), "dialect[15].replace: Field required"),
]


@pytest.mark.parametrize(("change", "problem"), BROKEN, ids=[p for _, p in BROKEN])
def test_validate_names_a_broken_rule(pack_copy, change, problem):
    edit_yaml(pack_copy.parent / COMMON / "language.ja.yaml", change)
    errors = validate(str(pack_copy))
    assert len(errors) == 1 and errors[0].startswith(f"common/language.ja.yaml: {problem}")
    with pytest.raises(PackError) as info:  # what start-up does with the pack
        load_pack(pack_copy)
    assert info.value.errors == errors


def test_a_pack_root_without_a_copy_uses_the_analysers_rules(pack_copy):
    (pack_copy.parent / COMMON / "language.ja.yaml").unlink()
    assert validate(str(pack_copy)) == []


def test_a_copy_that_differs_from_the_rules_in_use_is_named(pack_copy):
    """A pack root's own copy is not what the analyser runs on: an edit that validates would
    change nothing, so it is an error, not a silent no-op."""
    edit_yaml(pack_copy.parent / COMMON / "language.ja.yaml",
              lambda d: d["dialect"].pop(0))
    errors = validate(str(pack_copy))
    assert len(errors) == 1
    assert errors[0].startswith("common/language.ja.yaml: differs from the rules the analyser")


def test_load_rules_raises_one_line_per_problem(rules_copy):
    edit_yaml(rules_copy, lambda d: (d.pop("glue"), d["dialect"][1].update(pattern="[")))
    with pytest.raises(RulesError) as info:
        load_rules(rules_copy)
    assert str(info.value).splitlines() == [
        "language.ja.yaml: glue: Field required",
        "language.ja.yaml: dialect[1].pattern: pattern '[' does not compile: unterminated "
        "character set at position 0"]


def test_broken_process_rules_stop_start_up_with_one_line(tmp_path, monkeypatch):
    """The rules the analyser runs on are broken: the pack does not load (start-up stops with
    the line), and validate names it once (not again as a fault of the crisis terms, which are
    read through the analyser)."""
    broken = tmp_path / COMMON / "language.ja.yaml"
    broken.parent.mkdir()
    shutil.copy(RULES_FILE, broken)
    edit_yaml(broken, lambda d: d["dialect"][2].update(pattern="(?<=x+)y"))
    monkeypatch.setattr(language, "RULES_FILE", broken)
    monkeypatch.setattr(language, "_RULES", None)
    line = ("common/language.ja.yaml: dialect[2].pattern: pattern '(?<=x+)y' does not compile: "
            "look-behind requires fixed-width pattern")
    with pytest.raises(PackError) as info:
        load_pack("kyoto")
    assert info.value.errors == [line]
    assert validate("kyoto") == [line]
    from server import create_app

    with pytest.raises(PackError) as info:
        create_app(Settings.from_env({}), start_workers=False)
    assert info.value.errors == [line]
