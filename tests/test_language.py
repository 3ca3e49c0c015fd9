"""The language layer (bot/language.py): one analysis serves crisis, triage and choices."""

from __future__ import annotations

import pytest

from bot.language import analyze, lemma_form, normalize, script_language


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
