"""The language layer (bot/language.py): one analysis serves crisis, triage and choices."""

from __future__ import annotations

import pytest

from bot.language import analyze, default_rules, lemma_form, normalize, script_language

NEGATION = default_rules().negation  # the rules file's (bot/content/common/language.ja.yaml)
OBLIGATION = default_rules().obligation


@pytest.mark.parametrize("variant", ["殴られる", "なぐられてる", "殴られている", "殴られました"])
def test_conjugations_and_kana_meet_one_lemma(variant):
    assert " 殴る " in analyze(variant).lemmas


@pytest.mark.parametrize("variant", ["淋しい", "寂しい", "さびしい", "さびしかった"])
def test_spellings_fold_to_one_lemma(variant):
    assert f" {lemma_form('寂しい')} " in analyze(variant).lemmas


def test_surface_normalisation_is_kept_for_literal_terms():
    found = analyze("ｼﾆﾀｲ！！")
    assert found.norm == normalize("シニタイ") == "しにたい"


def test_lemmas_are_whole_words_with_edges():
    lemmas = analyze("夫が仕事を辞めた").lemmas
    assert lemmas.startswith(" ") and lemmas.endswith(" ")
    assert " 辞める " in lemmas


def test_empty_and_blank_text():
    assert analyze("").lemmas == " "
    assert analyze("   ").tokens == ()


@pytest.mark.parametrize(("text", "lang"), [
    ("毎日ひとりでさびしい", "ja"), ("I can't read Japanese", "en"), ("我需要帮助", "zh"),
    ("도와주세요", "ko"), ("Tôi cần giúp đỡ", "vi"), ("12345", ""), ("家族", "ja"),
])
def test_script_language(text, lang):
    assert script_language(text) == lang


# -- negation, politeness and dialect meet one form (held-out round) --------------------------
@pytest.mark.parametrize("variant", ["わからない", "わかりません", "わからん", "わからへん",
                                     "分からぬ", "わかりまへん"])
def test_every_negation_is_one_lemma(variant):
    """ない, ません (ず), Kansai ん/へん and ぬ: one negation word, so 「X ない」 entries meet
    all of them."""
    assert analyze(variant).lemmas == f" {lemma_form('分かる')} {NEGATION} "


@pytest.mark.parametrize(("standard", "dialect"), [
    ("できない", "できひん"), ("来ない", "来えへん"), ("しない", "しいひん"),
    ("決まってない", "決まってへん"), ("だめ", "あかん"), ("母が怖い", "おかんが怖い"),
    ("父に言えない", "おとんに言えへん"), ("辞めた", "辞めはった"),
    ("寂しいです", "寂しいどす"), ("行きたいです", "行きとうおす"),
    ("生きていても", "生きとっても"), ("行かなければいけない", "行かなあかん"),
])
def test_kansai_and_kyoto_forms_meet_the_standard_lemmas(standard, dialect):
    assert analyze(dialect).lemmas == analyze(standard).lemmas


@pytest.mark.parametrize("text", ["あかんぼうが泣く", "私にとって大切", "ひんこんかてい",
                                  "たいへんです"])
def test_dialect_rules_leave_standard_words_alone(text):
    """The rewrite rules are narrow: 赤ん坊, にとって, 貧困 and 大変 keep their meaning."""
    assert "無い" not in analyze(text).lemmas and "駄目" not in analyze(text).lemmas


def test_the_surface_keeps_what_was_typed():
    """Only the analyser sees the rewrite: literal crisis terms still match the typed text."""
    assert analyze("しにたいねん、あかん").norm == "しにたいねんあかん"


@pytest.mark.parametrize("text", ["部屋を出ないといけない", "部屋を出なければならない",
                                  "部屋を出なきゃ", "部屋を出なくてはいけません",
                                  "部屋を出なあかん"])
def test_must_is_not_a_negation(text):
    """「出ないといけない」 is "must leave", the opposite of 「出ない」: one word, OBLIGATION."""
    assert analyze(text).lemmas == f" 部屋 を 出る {OBLIGATION} "
    assert analyze("部屋から出ない").lemmas == f" 部屋 から 出る {NEGATION} "
