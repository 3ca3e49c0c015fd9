"""Crisis detection: the evaluation set, normalisation, the terms file as data, speed."""

from __future__ import annotations

import copy
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.language import analyze
from bot.safety import CRISIS_KINDS, CrisisDetector, CrisisFileError, evaluate, normalize

REPO = Path(__file__).parents[1]
CRISIS = Path(__file__).parents[1] / "bot/content/common/crisis.yaml"
EVAL = REPO / "tests" / "data" / "safety_eval.yaml"
# Written fresh for issue 9, independently of crisis.yaml: conjugations, kana, indirect wishes,
# preparation, farewells, acts, a parent hurting a sibling; hyperbole, fiction, idioms.
FRESH = REPO / "tests" / "data" / "safety_eval_fresh.yaml"


@functools.cache
def _shared_detector() -> CrisisDetector:
    return CrisisDetector.from_file(CRISIS)


@pytest.fixture(scope="module")
def detector() -> CrisisDetector:
    return _shared_detector()


@pytest.fixture(scope="module")
def report(detector):
    return evaluate(detector, EVAL, FRESH)


@pytest.fixture(scope="module")
def eval_set() -> dict:
    return yaml.safe_load(EVAL.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def crisis_data() -> dict:
    return yaml.safe_load(CRISIS.read_text(encoding="utf-8"))


# -- the evaluation set -------------------------------------------------------------------------
def test_evaluation_set_is_large_and_well_formed(eval_set):
    risk, ordinary = eval_set["risk"], eval_set["ordinary"]
    assert len(risk) >= 150
    assert len(ordinary) >= 100
    for item in risk:
        kinds = item["kind"] if isinstance(item["kind"], list) else [item["kind"]]
        assert isinstance(item["text"], str) and kinds, item
        assert set(kinds) <= set(CRISIS_KINDS), item
    assert all(isinstance(text, str) for text in ordinary)
    texts = [item["text"] for item in risk] + ordinary
    assert len(texts) == len(set(texts)), "a phrasing is listed twice"


def test_the_fresh_set_is_large_and_counted(report):
    fresh = yaml.safe_load(FRESH.read_text(encoding="utf-8"))
    assert len(fresh["risk"]) >= 160 and len(fresh["ordinary"]) >= 160
    assert report.n_risk >= 294 + len(fresh["risk"])
    assert report.n_ordinary >= 205 + len(fresh["ordinary"])


@pytest.mark.parametrize("text", ["殴られる", "なぐられてる", "殴られています", "彼にけられる",
                                  "おとうさんがいもうとをたたく", "自分の体を傷つけてしまう"])
def test_conjugations_and_kana_are_caught_on_lemmas(detector, text):
    assert detector.detect(text) is not None


@pytest.mark.parametrize("text", ["肩を叩かれた", "ネットで叩かれてる", "頭を殴られたような衝撃"])
def test_lemma_matches_keep_their_exclusions(detector, text):
    assert detector.detect(text) is None


def test_every_risk_phrasing_is_caught(report):
    assert report.misses == [], "missed:\n  " + "\n  ".join(report.misses)
    assert report.recall == 1.0


def test_few_false_positives(report):
    assert report.false_positive_rate <= 0.05, report.format()


def test_each_risk_phrasing_has_the_right_kind(report):
    assert report.wrong_kind == [], report.format()


# -- the held-out set (tests/data/safety_holdout.yaml) ------------------------------------
HOLDOUT = REPO / "tests" / "data" / "safety_holdout.yaml"


def test_held_out_phrasings_are_caught_with_their_kind(detector):
    """Written without reading crisis.yaml (dialect, indirect wishes, preparation, farewells,
    acts, a parent hurting a sibling, English; and their everyday neighbours). Before the
    held-out round: recall 73.8%, false positives 3.8%; its misses were then fixed by general
    rules, so these floors guard the fixes."""
    data = yaml.safe_load(HOLDOUT.read_text(encoding="utf-8"))
    assert len(data["risk"]) >= 80 and len(data["ordinary"]) >= 80
    seen = {r["text"] for p in (EVAL, FRESH)
            for r in yaml.safe_load(p.read_text(encoding="utf-8"))["risk"]}
    assert not seen & {r["text"] for r in data["risk"]}, "a held-out line is not new"
    report = evaluate(detector, HOLDOUT)
    assert report.recall == 1.0, report.format()
    assert report.false_positive_rate <= 0.025, report.format()
    assert report.wrong_kind == [], report.format()


# -- held-out sets b and c (tests/data/safety_holdout_b.yaml, safety_holdout_c.yaml) -----------
HOLDOUT_B = REPO / "tests" / "data" / "safety_holdout_b.yaml"
HOLDOUT_C = REPO / "tests" / "data" / "safety_holdout_c.yaml"


# Plain phrasings the blind writers happened to write exactly as the tuned sets already had them
# (caught before sets b and c existed): no leak, but not counted as new either.
COMMON_BEFORE_B_AND_C = {"生まれてこなければよかった", "I don't want to wake up tomorrow",
                         "いなくなりたい", "この世から消えたい"}


@pytest.mark.parametrize("path", [HOLDOUT_B, HOLDOUT_C], ids=["b", "c"])
def test_held_out_sets_b_and_c_are_caught_with_their_kind(detector, path):
    """Written blind on 2026-12-07 without reading crisis.yaml. Before: b 78.0% recall, 2.0%
    false positives; c 72.0% / 2.0% (74.0% / 2.0% blind after the fixes from b). Their misses
    were then fixed by class (see each file's header), so these floors guard the fixes."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert len(data["risk"]) >= 50 and len(data["ordinary"]) >= 50
    seen = {r["text"] for p in (EVAL, FRESH)
            for r in yaml.safe_load(p.read_text(encoding="utf-8"))["risk"]}
    overlap = seen & {r["text"] for r in data["risk"]}
    assert overlap <= COMMON_BEFORE_B_AND_C, f"a held-out line was copied into the tuned sets: " \
                                             f"{overlap - COMMON_BEFORE_B_AND_C}"
    report = evaluate(detector, path)
    assert report.recall == 1.0, report.format()
    assert len(report.false_positives) <= 1, report.format()
    assert report.wrong_kind == [], report.format()


@pytest.mark.parametrize(("text", "kind"), [
    ("橋の欄干の外側におる", "self_harm"), ("あたしなんかおらへん方がみんな楽やろ", "self_harm"),
    ("また太ももにカミソリで傷つけた", "self_harm"),
    ("I keep cutting again and again", "self_harm"),
    ("こんな人生もういらへん", "self_harm"), ("両親によろしく伝えといて、さようなら", "self_harm"),
    ("元妻に毎日つけまわされてる", "violence"), ("he'd kill me if I told anyone", "violence"),
    ("おとうさんがごはんくれない", "child_harm"), ("中1だけど毎日母にけられる", "child_harm"),
    ("継父が何日も帰ってこない", "child_harm"), ("もう生きていとうないです", "self_harm"),
])
def test_round_b_and_c_rules_are_families(detector, text, kind):
    """Phrasings no evaluation file holds, caught by the classes added for sets b and c."""
    found = detector.detect(text)
    assert found is not None and found.kind == kind, (text, found)


@pytest.mark.parametrize("text", [
    "清水の舞台から飛び降りる気持ちで契約した", "we keep cutting costs",
    "ガチャ爆死、来世に期待するか",
    "夫がご飯作ってくれない", "犬にごはんあげない日はない", "上司に雑用を押し付けられる",
    "柔道の試合で相手に蹴られた", "My coach will kill me if I'm late",
])
def test_round_b_and_c_neighbours_stay_quiet(detector, text):
    assert detector.detect(text) is None, text


@pytest.mark.parametrize(("text", "kind"), [
    ("もう死んでまいたいわ", "self_harm"), ("この世から消えたいねん", "self_harm"),
    ("朝なんか目が覚めないでくれたらいいのに", "self_harm"),
    ("生きるのはもうやめにする", "self_harm"),
    ("兄貴にどつかれて歯が折れた", "violence"), ("彼氏にしばかれる", "violence"),
    ("元カレが家の前で待ち伏せしてる", "violence"), ("I took far too many pills", "self_harm"),
])
def test_new_rules_are_families_not_single_sentences(detector, text, kind):
    """Each rule added for the held-out set also catches phrasings it never saw."""
    found = detector.detect(text)
    assert found is not None and found.kind == kind, text


@pytest.mark.parametrize("text", [
    "映画で主人公が殴られるシーンが怖かった", "試合で相手にボールを蹴られて転んだ",
    "子どもを叩くのはよくないと習った", "目が覚めなくて遅刻した", "仕事にけりをつけたい",
])
def test_new_exclusions_keep_everyday_talk_quiet(detector, text):
    assert detector.detect(text) is None, text


def test_report_lists_every_miss_and_false_positive(detector, tmp_path):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump({"risk": [{"text": "死にたい", "kind": "self_harm"},
                                             {"text": "今日は晴れ", "kind": "self_harm"}],
                                    "ordinary": ["消えたい", "こんにちは"]},
                                   allow_unicode=True), encoding="utf-8")
    report = evaluate(detector, path)
    assert (report.recall, report.false_positive_rate) == (0.5, 0.5)
    text = report.format()
    assert "recall:             50.0%" in text and "false positives:    50.0%" in text
    assert "missed: 今日は晴れ" in text and "false positive: 消えたい" in text


def test_cli_prints_recall_and_misses():
    proc = subprocess.run([sys.executable, "-m", "bot", "eval-safety"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recall:             100.0%" in proc.stdout
    assert "false positives:" in proc.stdout


# -- normalisation ------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "expected"), [
    ("ｼﾆﾀｲ", "しにたい"),                  # half-width kana (NFKC)
    ("ﾀﾋにたい", "たひにたい"),
    ("シニタイ", "しにたい"),                # katakana folded to hiragana
    ("ｶﾞｯｺｳ", "がっこう"),                  # half-width voiced marks compose
    ("ＯＤ", "od"),                          # full-width Latin, lower-cased
    ("１２", "12"),
    ("し に た い！", "しにたい"),            # spaces and punctuation
    ("死、に。た…い？・", "死にたい"),        # Japanese punctuation
    ("「死にたい」（泣）", "死にたい泣"),
    ("死にたい😭🙃", "死にたい"),            # emoji
    ("しにたいいいい", "しにたい"),          # 3+ repeats squeezed
    ("いい", "いい"),                        # ... doubles kept
    ("しにたーーい", "しにたい"),            # long-vowel mark dropped
    ("しにたぁい", "しにたい"),              # small vowel used as a stretch
    ("I Don't  WANT to   live!!", "i dont want to live"),  # one space between English words
    ("help!me", "help me"),
    ("OD した", "odした"),                   # no space between English and Japanese
    ("", ""),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_terms_are_normalised_like_messages(detector):
    for text in ("ｼﾆﾀｲ", "シ　ニ　タ　イ", "ＫＭＳ", "ﾘｽｶ", "ｵｰﾊﾞｰﾄﾞｰｽﾞ", "ﾀｽｹﾃ"):
        assert detector.detect(text) is not None, text


# -- boundaries -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "死ぬほど笑った", "死ぬほど忙しい", "死ぬかと思った（笑）", "笑い死ぬ", "死ぬほどおいしい",
    "暑くて死にそう", "I'm dying of laughter", "this cake is to die for", "you're killing it",
    "殺す気か（笑）", "DVについて知りたい", "お金がない", "ひきこもりの息子", "介護がつらい",
    "つらい", "わたしにたいして", "蚊に刺された", "近所の人に助けてもらった",
])
def test_everyday_words_are_not_a_crisis(detector, text):
    assert detector.detect(text) is None


def test_exclusions_cancel_only_what_they_cover(detector):
    assert detector.detect("自死遺族の会") is None
    assert detector.detect("自死遺族です。私も死にたい").kind == "self_harm"
    assert detector.detect("死ぬほど疲れた、もう死にたい").kind == "self_harm"
    assert detector.detect("生きるのがつらい").kind == "self_harm"


def test_english_terms_need_word_edges(detector):
    assert detector.detect("ODした").kind == "self_harm"
    assert detector.detect("kms").kind == "self_harm"
    for text in ("good food", "5kms run", "I ran 10 kms", "odd"):
        assert detector.detect(text) is None, text


def test_a_bare_cry_for_help_yields_to_a_named_danger(detector):
    assert detector.detect("助けて").kind == "violence"
    assert detector.detect("死にたい、助けて").kind == "self_harm"
    assert detector.detect("助けて、夫に殴られる").kind == "violence"
    assert detector.detect("死にたい。親に殴られる").kind == "child_harm"


def test_rule_is_the_id_of_the_entry_that_matched(detector, crisis_data):
    ids = {e["id"]: kind for kind, entries in crisis_data["kinds"].items() for e in entries}
    for text in ("死にたい", "夫に殴られている", "子どもを叩いてしまう", "I want to die"):
        found = detector.detect(text)
        assert ids[found.rule] == found.kind, (text, found)
    assert detector.detect("死にたい").rule == "sh_shinitai"


def test_the_fast_gate_never_hides_a_match(detector, eval_set):
    """detect() asks one combined regex first; it must agree with trying every entry."""
    texts = [item["text"] for item in eval_set["risk"]] + eval_set["ordinary"]
    texts += ["最近仕事がつらくて眠れない。" * 5 + "もう死にたい", "a" * 300, "死" * 50]
    for text in texts:
        assert detector.detect(text) == detector._scan(analyze(text)), text


# Pieces of crisis words, their everyday neighbours and normalisation traps, mixed with any text.
_PIECES = [
    "死にたい", "しに", "たい", "消え", "殴られ", "子ども", "を", "叩いて", "しまう",
    "助けて", "もらった", "自死", "遺族", "ネット", "で", "叩かれてる", "ー", "ぁ", "。",
    " ", "!", "od", "kms", "help", "me", "with", "want", "to", "die", "10", "ｼﾆﾀｲ", "😭",
    "わたし", "にたいして",
]
_MESSAGES = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=3)), max_size=25)


@settings(max_examples=300, deadline=None)
@given(_MESSAGES.map("".join))
def test_random_text_gate_agrees_and_normalize_is_idempotent(text):
    detector = _shared_detector()
    norm = normalize(text)
    assert detector.detect(text) == detector._scan(analyze(text))
    assert normalize(norm) == norm


# -- the terms file is data ------------------------------------------------------------------
def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "crisis.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def test_a_term_added_by_staff_works_without_code(tmp_path, crisis_data):
    data = copy.deepcopy(crisis_data)
    assert CrisisDetector.from_file(_write(tmp_path, data)).detect("ぴえん超えてパオン") is None
    data["kinds"]["self_harm"].append({"id": "sh_paon", "term": "ﾊﾟｵﾝ"})  # written half-width
    found = CrisisDetector.from_file(_write(tmp_path, data)).detect("ぴえん超えてパオン")
    assert found is not None and (found.kind, found.rule) == ("self_harm", "sh_paon")


def test_a_pattern_an_exclusion_and_a_vocab_word_added_by_staff(tmp_path, crisis_data):
    data = copy.deepcopy(crisis_data)
    data["kinds"]["violence"].append({"id": "vi_kanashibari", "regex": "金縛りに(あ|遭)"})
    data["exclusions"].append({"id": "ex_dream", "term": "夢で金縛りにあった"})
    data["vocab"]["child"].append("せがれ")
    detector = CrisisDetector.from_file(_write(tmp_path, data))
    assert detector.detect("毎晩金縛りにあう").rule == "vi_kanashibari"
    assert detector.detect("夢で金縛りにあった") is None
    assert detector.detect("せがれを叩いてしまう").kind == "child_harm"


@pytest.mark.parametrize(("entry", "message"), [
    ({"id": "sh_bad", "regex": "(unclosed"},
     r"kinds\.self_harm\[\d+\] \(sh_bad\): regex '\(unclosed' does not compile"),
    ({"id": "sh_both", "term": "x", "regex": "y"},
     r"kinds\.self_harm\[\d+\].*'sh_both'.*exactly one"),
    ({"id": "sh_neither"}, r"'sh_neither'.*exactly one"),
    ({"id": "sh_short", "term": "死"}, r"\(sh_short\): term '死' is 1 character"),
    ({"id": "sh_vocab", "regex": "{kid}を"}, r"\(sh_vocab\).*\{kid\}, which is not in vocab"),
    ({"id": "sh_upper", "regex": "Kill"}, r"\(sh_upper\).*lower case"),
    ({"id": "sh_empty", "regex": "x*"}, r"\(sh_empty\).*matches empty text"),
    ({"id": "sh_shinitai", "term": "しにたくて"},
     r"\(sh_shinitai\): id 'sh_shinitai' is used twice"),
    ({"id": "sh_typo", "trem": "死にたい"}, r"kinds\.self_harm\[\d+\]\.trem"),
    ({"term": "死にたい"}, r"kinds\.self_harm\[\d+\]\.id"),
])
def test_a_malformed_entry_is_rejected_by_name(tmp_path, crisis_data, entry, message):
    data = copy.deepcopy(crisis_data)
    data["kinds"]["self_harm"].append(entry)
    with pytest.raises(CrisisFileError, match=message):
        CrisisDetector.from_file(_write(tmp_path, data))


def test_an_unknown_kind_is_rejected_by_name(tmp_path, crisis_data):
    data = copy.deepcopy(crisis_data)
    data["kinds"]["sadness"] = [{"id": "sa_blue", "term": "かなしい"}]
    with pytest.raises(CrisisFileError, match=r"kinds: unknown crisis kind 'sadness'"):
        CrisisDetector.from_file(_write(tmp_path, data))


def test_a_broken_file_is_rejected(tmp_path):
    path = tmp_path / "crisis.yaml"
    path.write_text("version: 2\nkinds: [unclosed\n", encoding="utf-8")
    with pytest.raises(CrisisFileError, match="not valid YAML"):
        CrisisDetector.from_file(path)
    with pytest.raises(CrisisFileError, match="version"):
        CrisisDetector.from_file(_write(tmp_path, {"kinds": {}}))


# -- round d: an exclusion covering a rule's act; context that defuses a rule ------------------
def test_an_exclusion_on_the_act_cancels_a_wide_gap_match(tmp_path, crisis_data):
    """Without `act` an exclusion must cover the whole match; with it, covering the act ending
    the match is enough, and a later act from the same start still counts."""
    data = copy.deepcopy(crisis_data)
    data["kinds"] = {"violence": [{"id": "vi_gap", "form": "lemmas",
                                   "regex": "兄 (に|から) (?:\\S+ ){0,12}?叩く れる"}]}
    data["exclusions"] = [{"id": "ex_tap", "form": "lemmas", "regex": "肩 を 叩く れる"}]
    wide = CrisisDetector.from_file(_write(tmp_path, data))
    assert wide.detect("兄に肩を叩かれて起きた").rule == "vi_gap"  # the old, all-covering rule
    data["kinds"]["violence"][0]["act"] = "叩く れる"
    acted = CrisisDetector.from_file(_write(tmp_path, data))
    assert acted.detect("兄に肩を叩かれて起きた") is None
    assert acted.detect("兄に叩かれた").rule == "vi_gap"
    assert acted.detect("兄に肩を叩かれて、そのあと頭を叩かれた").rule == "vi_gap"


def test_unless_defuses_an_entry_wherever_the_context_stands(tmp_path, crisis_data):
    data = copy.deepcopy(crisis_data)
    data["kinds"] = {"self_harm": [{"id": "sh_bye", "regex": "さよなら", "unless": "また明日"}]}
    data["exclusions"] = []
    detector = CrisisDetector.from_file(_write(tmp_path, data))
    assert detector.detect("さよなら").rule == "sh_bye"
    assert detector.detect("また明日、さよなら") is None
    assert detector.detect("さよなら、また明日") is None


def test_unless_looks_in_the_sentence_of_the_match_unless_told_the_message(tmp_path,
                                                                          crisis_data):
    data = copy.deepcopy(crisis_data)
    data["kinds"] = {"self_harm": [{"id": "sh_cut", "regex": "手首を切", "unless": "料理"},
                                   {"id": "sh_bye", "regex": "さよなら", "unless": "退職",
                                    "unless_in": "message"}]}
    data["exclusions"] = []
    detector = CrisisDetector.from_file(_write(tmp_path, data))
    assert detector.detect("料理中に手首を切ってしまった") is None
    assert detector.detect("手首を切った。もう料理もしたくない").rule == "sh_cut"
    assert detector.detect("手首を切った。料理で手首を切ったんじゃない").rule == "sh_cut"
    assert detector.detect("今日で退職します。さよなら") is None
    assert detector.detect("さよなら").rule == "sh_bye"


@pytest.mark.parametrize("form", ["surface", "lemmas"])
def test_unless_x_can_be_lifted_by_y_in_either_form(tmp_path, crisis_data, form):
    """`^(?!.*Y).*X` — "X defuses, unless Y is also said" — also on lemmas, whose words are
    matched whole (the lemma string opens with a space, and `^` may start the pattern)."""
    data = copy.deepcopy(crisis_data)
    regex, unless = (("さよなら", "^(?!.*疲れ).*退職") if form == "surface"
                     else ("さようなら", "^(?!.*疲れる).*退職"))
    data["kinds"] = {"self_harm": [{"id": "sh_bye", "form": form, "regex": regex,
                                    "unless": unless}]}
    data["exclusions"] = []
    detector = CrisisDetector.from_file(_write(tmp_path, data))
    assert detector.detect("退職します、さよなら") is None
    assert detector.detect("退職した。もう疲れた、さよなら").rule == "sh_bye"


@pytest.mark.parametrize("field", ["act", "unless"])
def test_a_broken_act_or_unless_is_rejected_by_name(tmp_path, crisis_data, field):
    data = copy.deepcopy(crisis_data)
    data["kinds"]["self_harm"].append({"id": "sh_part", "term": "さよならだ", field: "(open"})
    with pytest.raises(CrisisFileError, match=r"\(sh_part\): regex '\(open' does not compile"):
        CrisisDetector.from_file(_write(tmp_path, data))


@pytest.mark.parametrize(("text", "kind"), [
    ("ほんまに迷惑かけたな、さいなら", "self_harm"),          # farewell + finality, Kansai
    ("さらば。今まで世話になった", "self_harm"),
    ("Goodbye all, forgive me", "self_harm"),
    ("いま踏切の内側に寝転んどる", "self_harm"),             # place + posture on lemmas
    ("鉄橋の上で座ってる", "self_harm"),
    ("自分の頭を叩いてしまう", "self_harm"),                 # acts on the body with a marker
    ("I burnt my arm on purpose", "self_harm"),
    ("生きとうなかけん", "self_harm"),                      # dialect
    ("次の人生に賭けるしかない", "self_harm"),
    ("my ex husband is waiting outside my house", "violence"),
    ("父に肩を叩かれたあと、蹴られた", "child_harm"),       # the act after an excluded tap
])
def test_round_d_rules_are_families(detector, text, kind):
    found = detector.detect(text)
    assert found is not None and found.kind == kind, (text, found)


@pytest.mark.parametrize("text", [
    "来月引っ越します、今までありがとう、ばいばい",          # a life event defuses a goodbye
    "さらば、また遊ぼう",
    "goodbye and thanks for everything, see you at school",
    "母に机を叩かれてびっくりした",                          # a struck thing, not a child
    "兄にツッコミでど突かれた",
    "景色がきれいで橋の上から吸い込まれそう",
    "I burnt myself on the stove",
    "他の人に肩を叩かれて振り向いた",
    "今日はもう終わりたい気分",
])
def test_round_d_neighbours_stay_quiet(detector, text):
    assert detector.detect(text) is None, text


# -- round f: the wide-gap rules without an act could reach across clauses ----------------------
@pytest.mark.parametrize(("text", "kind", "rule"), [
    ("腕をまたカッターで何回も切った", "self_harm", "sh_cut_part_gap"),
    ("二の腕をカミソリで何度も切る", "self_harm", "sh_cut_part_gap"),
    ("手首の内側を切った", "self_harm", "sh_cut_part_gap"),
    ("高1です。ゲームで負けて兄に殴られた", "child_harm", "ch_schoolchild_hit"),
    ("毎日叩かれてる、小6", "child_harm", "ch_schoolchild_hit_after"),
    ("母にたばこの火を腕に押し付けられた", "child_harm", "ch_parent_burns"),
    ("お母さんにお湯かけられてやけどした", "child_harm", "ch_parent_burns"),
    ("お父さんが寝てる時に体を触ってくる", "child_harm", "ch_parent_touch"),
    ("怪しい車がずっと後をついてくる", "violence", "vi_stranger_follows"),
    ("私なんか生まれたのが間違いだった", "self_harm", "sh_born_mistake"),
    ("生まれてからずっと失敗ばかり", "self_harm", "sh_born_mistake"),
    ("祖母が死んで、あとを追いたいと思う", "self_harm", "sh_follow_the_dead"),
    ("わざと足を何度も切った", "self_harm", "sh_cut_part_marked"),
])
def test_round_f_wide_gap_rules_still_catch_their_class(detector, text, kind, rule):
    found = detector.detect(text)
    assert found is not None and (found.kind, found.rule) == (kind, rule), (text, found)


@pytest.mark.parametrize("text", [
    # the part is not what is cut: another object, subject or clause comes between
    "お腹すいたからパンを切った", "腕時計のバンドを切った", "腕が痛くて電話を切った",
    "腕の毛を切った", "腕が疲れたけどロープ切った",
    # who the writer is, then a tap, a film or a comedy show: the act's exclusion cancels it
    "中学生です。先輩に肩を叩かれた", "高校生です。映画で主人公が殴られるシーンが怖かった",
    "テレビで芸人がハリセンで叩かれてて笑った。中2です",
    # ironing and bathing are not burns
    "母にアイロンかけられたシャツがしわくちゃ", "娘はママにお湯をかけられるのが嫌いで泣く",
    # caring for a parent, the writer touching
    "母が倒れて、体を触ったら冷たかった", "父が寝たきりで体を触ると痛がる",
    # a stranger's kindness; two clauses
    "道がわからなくて、知らない人が駅までついてきてくれた",
    "知らない人ばかりで、妹がついてきた",
    # three more rules with a wide gap and no act: an idiom, hyperbole, waking oneself up
    "生まれて初めて料理に失敗した", "死ぬほど好きなアイドルのあとを追いたい",
    "わざと負けた。足を叩いて気合を入れた",
])
def test_round_f_wide_gap_rules_stay_in_their_clause(detector, text):
    assert detector.detect(text) is None, (text, detector.detect(text))


# -- round f: English classes thinner than the Japanese, and the brink in Japanese ---------------
DEV_F = REPO / "tests" / "data" / "safety_dev_round_f.yaml"


def test_round_f_dev_set_is_caught_with_its_kind_and_its_neighbours_stay_quiet(detector):
    """Written before the round's rules (before: 22.2% recall, 17 of 98 neighbours flagged, 13
    of them by the wide-gap rules); the rules were then written for its classes, so this floor
    guards them. Not a blind measure."""
    data = yaml.safe_load(DEV_F.read_text(encoding="utf-8"))
    assert len(data["risk"]) >= 100 and len(data["ordinary"]) >= 90
    report = evaluate(detector, DEV_F)
    assert report.recall == 1.0, report.format()
    assert report.false_positives == [], report.format()
    assert report.wrong_kind == [], report.format()


@pytest.mark.parametrize("text", [
    # no way out, never better, no future, given up
    "honestly i see no way out", "I really can't see any other way out",
    "things will never get better for me", "nothing ever gets better, so why bother",
    "I see no future for myself", "I gave up on life a long time ago",
    "i cant carry on like this any longer",
    # method questions
    "what's the quickest way to die", "easiest and painless way to go?",
    "how many of these pills will kill me", "how much tylenol is a lethal dose",
    "which floor is high enough to not survive", "is hanging painful",
    # finality acts
    "left a note for my family. goodbye", "finished my suicide note, i'm ready",
    "rehomed my cat today, won't need her anymore", "i won't need any of it where i'm going",
    "no one will hear from me again", "before morning i'll be gone",
    # the place and the moment
    "at the top of the car park looking down", "i'm on the roof. it's so high. nobody knows",
    "on the railway tracks now. train is close", "on the cliff edge", "lying on the tracks",
    # Japanese: the brink, the next train, the elderly wish
    "屋上のフェンスの外に出てしまった", "橋の欄干の外に足を出してる", "ホームのはしっこに座ってる",
    "踏切のど真ん中に寝転んでる", "遮断機が下りてるけど中にいる", "快速来たら終わりにするわ",
    "もうはよお迎えが来たらええのに", "わしゃもう長生きしすぎたわい",
    "長生きなんかするもんじゃない",
    "いつ死んでも悔いはない", "もう十分に生きました", "天国の妻のところへ行きたい",
    "じいさんが早う迎えに来てくれんかのう、寂しい",
])
def test_round_f_rules_are_families(detector, text):
    found = detector.detect(text)
    assert found is not None and found.kind == "self_harm", (text, found)


@pytest.mark.parametrize("text", [
    "no way out but the window in this escape room", "there's no way out of this maze lol",
    "things will never get better between me and my landlord unless he fixes the heater",
    "I can't see a future with him, should I break up?", "i give up on life hacks, none work",
    "i have no hope left that the bus will come on time",
    "what's the best way to go to nara from here", "the quickest way to die your hair at home",
    "the easiest way to die in elden ring is falling",
    "how much ibuprofen would it take to help a migraine",
    "what's the lethal dose of chocolate for dogs", "does it hurt to get your ears pierced",
    "wrote my note for the landlord, it's done", "left a note on the fridge for mom, bye",
    "wrote a letter to my mom, it's done, feels good",
    "gave my old clothes to charity, won't need them", "this is goodbye to my old phone",
    "you won't see me again at that gym, it's too expensive",
    "by tomorrow I'll be gone to my parents' place",
    "i'm on the bridge, it's so cold, can you pick me up?",
    "on the roof, it's so high, the fireworks are beautiful",
    "on the tracks, there's a cat, should I call the station?",
    "one leg over the fence, climbing into the garden to get my ball",
    "屋上の柵の外にドローンが落ちた", "ベランダの手すりの外に布団を干してる",
    "次の電車来たら乗ろう",
    "電車来たら終わりにしようこの話", "ホームの端っこにいるよ、前の車両",
    "お迎えが来てほしい、子どもが熱を出した", "早くお迎え来てくれないかなー、雨すごい",
    "長生きしたくないって言う人多いよね", "いつ死んでもいいように遺言書いておいた",
    "じいちゃんは十分生きたよ", "夫が迎えに来てくれない、残業らしい",
    "主人のところに早く行きたい、単身赴任先の", "知らないおじさんがついてきて道を教えてくれた",
])
def test_round_f_neighbours_stay_quiet(detector, text):
    assert detector.detect(text) is None, (text, detector.detect(text))
