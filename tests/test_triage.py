"""Free text understood: the triage function, and the dialogue around it (confirm in one tap,
fill the answers the text gave, skip their questions)."""

from __future__ import annotations

import shutil

import pytest

from bot.engine import Incoming
from bot.pack import load_pack
from bot.replies import Cards, Question, Text
from bot.triage import TriageError, load_vocab, triage
from bot.validate import validate
from tests.conftest import WEEKDAY_MORNING, Walker
from tests.pack_helpers import edit_yaml


# -- the function -----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "category"), [
    ("夫が仕事を辞めてから何年も家にこもっている", "hikikomori"),
    ("毎日ひとりでさびしい", "loneliness"),
    ("水道代が払えない", "poverty"),
    ("I can't read Japanese", "foreign"),
    ("80代の母の介護に疲れました", "elderly"),
])
def test_the_issue_sentences_name_their_category(pack, text, category):
    assert triage(text, "ja", pack).top == category


def test_text_typed_in_kana_meets_words_written_in_kanji(pack):
    assert triage("ふとうこうです", "ja", pack).top == "children_youth"
    assert triage("かいごにつかれた", "ja", pack).top == "elderly"
    # readings are compared only where the resident typed kana: 自閉症 (じへいしょう) does not
    # hold 遺書 (いしょ)
    assert "suicide" not in dict(triage("自閉症の子を預けられるところがない", "ja", pack).scores)


def test_nothing_is_named_in_a_greeting(pack):
    result = triage("こんにちは", "ja", pack)
    assert result.top is None and result.plausible == []


def test_evidence_names_the_vocabulary_entries(pack):
    result = triage("息子がひきこもっている", "ja", pack)
    assert any("引きこもる" in hit or "ひきこもり" in hit for hit in result.evidence["hikikomori"])


@pytest.mark.parametrize(("text", "slots"), [
    ("40代の息子が10年以上ひきこもっています", {"whose": "family", "age": "40_64",
                                               "hiki_duration": "long"}),
    ("中学生の娘が学校に行けない", {"whose": "family", "age": "u18"}),
    ("80代の父の介護", {"whose": "family", "age": "65_plus"}),
    ("高校に行けていない", {"age": "u18"}),
    ("半年ほど部屋から出てこない", {"hiki_duration": "long"}),
    ("伏見区に住んでいて、電話で相談したい", {"ward": "fushimi", "contact": "phone"}),
    ("夫に殴られる", {"whose": "self"}),
    ("友人がお金に困っている", {"whose": "friend"}),
])
def test_slots_read_from_the_text(pack, text, slots):
    if "ward" in slots and pack.ward(slots["ward"]) is None:  # a city without that ward
        slots = {k: v for k, v in slots.items() if k != "ward"}
    found = triage(text, "ja", pack).slots
    assert {k: found.get(k) for k in slots} == slots


@pytest.mark.parametrize(("text", "lang", "category"), [
    # English words take their endings and irregular forms; `*` stands for a word or two
    ("I lost my job and can't cover the bills", "en", "poverty"),
    ("My partner keeps checking my phone and decided who I'm allowed to see", "en", "dv_abuse"),
    ("My parents kicked me out last night and I have nowhere to sleep", "en", "homeless"),
    ("He has been shut in his bedroom for three years", "en", "hikikomori"),
    # a category that leads: probation before the job it makes hard to find
    ("保護観察中の息子が仕事を探しているが見つからない", "ja", "reoffending"),
    ("I'm on parole and no one will give me a job", "en", "reoffending"),
    # a widowed parent with the child named: single_parent, not children_youth
    ("妻が亡くなって、中学生の息子と二人です", "ja", "single_parent"),
    # walking on eggshells, the phone checked
    ("夫の顔色をうかがって毎日びくびくしている", "ja", "dv_abuse"),
    # round 6: a child's in-game spending; 男手ひとつ; ワンオペ育児 (a two-parent home: the
    # parenting window, or women when the partner is named as not helping)
    ("小4の息子がゲームに課金しまくってる", "ja", "children_youth"),
    ("おとこでひとつで娘を育ててます", "ja", "single_parent"),
    ("ワンオペ育児がしんどい", "ja", "children_youth"),
    ("ワンオペ育児で、夫はなんにも手伝ってくれない", "ja", "women"),
    # silence and money as punishment; intimate images as a threat; a put-down quoted
    ("夫に口答えしたら何日も口をきいてもらえない", "ja", "dv_abuse"),
    ("He says he'll post my private photos if I leave him", "en", "dv_abuse"),
    ("She tells me I'd be nothing without her", "en", "dv_abuse"),
    # out only at night; days without a word; the body failing at chores; a tent
    ("夜しかそとに出られない", "ja", "hikikomori"),
    ("I haven't been out of my flat in months", "en", "hikikomori"),
    ("一日中ひとことも話さない日がある", "ja", "loneliness"),
    ("膝が悪くてごみ出しが大変", "ja", "elderly"),
    ("I live in a tent under the bridge", "en", "homeless"),
])
def test_classes_of_wording_reach_their_category(pack, text, lang, category):
    assert triage(text, lang, pack).top == category


@pytest.mark.parametrize(("text", "lang", "whose"), [
    ("友達がひとりもいない", "ja", "self"),  # a person missing is nobody's worry
    ("知り合いが誰もおらん", "ja", "self"),
    ("友達がお金に困っている", "ja", "friend"),
    ("高1やけど、親に進路を反対されてる", "ja", "self"),  # a child's own parents
    ("息子が学校に行けなくなった", "ja", "family"),
    ("彼氏にスマホを毎日チェックされる", "ja", "self"),  # the partner is the one doing it
    ("もうやってしまいそう", "ja", "self"),  # しまい (the verb) is not 姉妹 (sisters)
    ("My 15 year old won't go to school", "en", "family"),
    ("My best friend hasn't answered her phone for days", "en", "friend"),
    ("Single mum here and my son needs new shoes", "en", "self"),
    # round 6: に/と after a family word make it the actor only with a passive verb (に) or as
    # company (と); the son spoken to, or not reached, is the one of concern
    ("娘に何を話しかけても返事がない", "ja", "family"),
    ("娘と連絡が取れなくなった", "ja", "family"),
    ("夫に怒鳴られる", "ja", "self"),
    ("少年院を出てから親と話せていない", "ja", "self"),  # the writer's own parents
    ("夫から逃げて子どもと家を出たい", "ja", "self"),  # と as company
    # a child telling of one parent hurting the other: the family's worry
    ("父が母を殴るのを見てしまう", "ja", "family"),
    ("My dad shouts at my mum every night", "en", "family"),
    ("My dad hits me", "en", "self"),
    # round 8: a young carer's worry is the carer's own; an adult carer's, or a grandparent
    # minding a grandchild, stays the family's
    ("兄の世話があって高校の宿題ができない", "ja", "self"),
    ("I'm 13 and I take care of my grandpa after school every day", "en", "self"),
    ("父の介護に疲れました", "ja", "family"),
    ("孫の面倒を見ているけど学校に行きたがらない", "ja", "family"),
    # a friend's house is a place; family words of the home and of Kansai
    ("友達ん家に泊めてもらっている", "ja", "self"),
    ("うちの人がお酒をやめられない", "ja", "family"),
    # a daughter as the subject in a self category: her parent writes
    ("娘が夫から殴られているようです", "ja", "family"),
    ("My daughter is pregnant at 16 and scared", "en", "family"),
    ("夫が家事を全部押し付けてくる", "ja", "self"),
])
def test_whose_worry_is_read_from_the_text(pack, text, lang, whose):
    assert triage(text, lang, pack).slots.get("whose") == whose


@pytest.mark.parametrize(("text", "lang"), [
    # papers, offices and letters say nothing of a foreign resident on their own
    ("区役所に出す書類の書き方を知りたい", "ja"),
    ("市役所からの手紙が難しくて読めない", "ja"),
    ("I have to bring some documents to the ward office tomorrow", "en"),
    ("How do I renew my passport?", "en"),
    ("I look after my neighbour's plants", "en"),
    ("夜のお店で友達と飲んだ", "ja"),
    ("メールが一件も来ていないか確認したい", "ja"),
    ("My sister pushed me to try the new ramen place", "en"),  # (the crisis tier reads violence)
])
def test_everyday_papers_and_errands_name_no_category(pack, text, lang):
    assert triage(text, lang, pack).top is None


@pytest.mark.parametrize(("text", "lang", "category"), [
    ("I don't read Japanese and the ward office sent me documents", "en", "foreign"),
    ("在留カードの書類を区役所に出したい", "ja", "foreign"),
    ("ベトナムから工場の仕事で来ています", "ja", "foreign"),
    ("高2です。母の介護で学校を休みがちです", "ja", "children_youth"),
    ("バイト先の店長に体を触られる", "ja", "women"),
    ("知らない人に盗撮された", "ja", "women"),
    ("盗撮で捕まったことがあり、またしてしまいそう", "ja", "reoffending"),
    ("元彼に裸の写真をばらまくと脅されている", "ja", "dv_abuse"),
    ("離婚したいけど収入がないので出ていけない", "ja", "women"),
    ("父が亡くなり、母をひとりにしておくのが心配", "ja", "elderly"),
    ("母ひとりで子どもを育ててきました", "ja", "single_parent"),
    ("LINEの通知が一件も来ないまま一日が終わる", "ja", "loneliness"),
    ("おやすみって言い合える人がほしい", "ja", "loneliness"),
    ("My grown son pushes me and takes my pension", "en", "dv_abuse"),
])
def test_round_8_classes_reach_their_category(pack, text, lang, category):
    assert triage(text, lang, pack).top == category


def test_a_message_naming_no_single_category_is_no_dead_end(walker: Walker, pack):
    """Two categories as close as each other are offered, with something else; an English
    message that names none gets the categories to choose from."""
    walker.text("My son is autistic and his school is not helping")
    q = walker.question
    assert q.state == "triage" and len(q.choices) >= 2
    walker.start()
    walker.text("hmm, not sure")
    q = walker.question
    assert q.state == "triage" and {c.value for c in q.choices} == set(pack.categories)


def test_vocabulary_errors_name_the_file_and_field(tmp_path):
    (tmp_path / "triage.ja.yaml").write_text(
        "version: 1\ncategories:\n  poverty:\n    patterns: ['(']\n", encoding="utf-8")
    (tmp_path / "triage.en.yaml").write_text("version: 1\ncategories: {}\n", encoding="utf-8")
    with pytest.raises(TriageError, match=r"triage\.ja\.yaml: categories\.poverty\.patterns"):
        load_vocab(tmp_path)


def test_wards_are_named_as_the_packs_suffixes_say(pack_copy):
    """wards.yaml `suffixes`: a ward is found without its ward suffix, a branch area by the
    word before the branch suffix; change them and the same text names no ward."""
    assert [triage(t, "ja", load_pack(pack_copy)).slots.get("ward")
            for t in ("伏見に住んでいます", "深草に住んでいます", "伏見区に住んでいます")] == [
        "fushimi", "fukakusa", "fushimi"]
    other = pack_copy.parent / "otherpack"  # ward names are kept per pack folder
    shutil.copytree(pack_copy, other)
    edit_yaml(other / "wards.yaml", lambda d: d.update(suffixes={"ward": "市"}))
    assert [triage(t, "ja", load_pack(other)).slots.get("ward")
            for t in ("伏見に住んでいます", "深草に住んでいます", "伏見区に住んでいます")] == [
        None, None, "fushimi"]


def test_wards_without_suffixes_do_not_validate(pack_copy):
    edit_yaml(pack_copy / "wards.yaml", lambda d: d.pop("suffixes"))
    assert validate(str(pack_copy)) == ["wards.yaml: suffixes: Field required"]
    edit_yaml(pack_copy / "wards.yaml", lambda d: d.update(suffixes={"ward": ""}))
    assert validate(str(pack_copy)) == [
        "wards.yaml: suffixes.ward: String should have at least 1 character"]
    edit_yaml(pack_copy / "wards.yaml", lambda d: d.update(suffixes=None))  # not a quiet off
    errors = validate(str(pack_copy))
    assert len(errors) == 1 and "suffixes: required when the city has wards" in errors[0]


# -- the dialogue -----------------------------------------------------------------------------
def _texts(walker: Walker) -> list[str]:
    return [r.text for r in walker.replies if isinstance(r, Text)]


def test_first_message_naming_a_worry_is_confirmed_in_one_tap(walker: Walker, pack):
    walker.text("40代の息子が10年以上ひきこもっています")
    q = walker.question
    assert q.state == "triage"
    assert pack.msg("triage.topic.hikikomori", "ja") in q.text
    assert q.text.startswith("ご家族の")
    assert [c.value for c in q.choices] == ["yes", "no"]
    assert pack.msg("common.not_understood", "ja") not in _texts(walker)
    walker.tap("yes")
    # whose, age, concern and duration came from the text: straight to the contact question
    assert walker.question.state == "hiki_contact"
    assert walker.session.answers == {"whose": "family", "age": "40_64", "hiki_duration": "long"}
    assert walker.session.concerns == ["hikikomori"]
    assert walker.session.flags == ["hiki_long"]
    assert walker.session.asked == 1


def test_confirmed_path_reaches_results_with_fewer_questions(walker: Walker):
    walker.text("40代の息子が10年以上ひきこもっています。伏見区です")
    walker.tap("yes")
    walker.tap("open")
    walker.tap("none")
    assert walker.question.state == "contact"  # the ward was in the text
    walker.tap("phone")
    assert walker.question.state == "results"
    assert walker.session.asked == 3
    assert walker.cards()


def test_no_leads_to_the_category_question(walker: Walker, pack):
    walker.text("毎日ひとりでさびしい")
    walker.tap("no")
    q = walker.question
    assert q.state == "triage"
    assert {c.value for c in q.choices} == set(pack.categories)
    walker.tap("poverty")
    assert walker.session.concerns == ["poverty"]
    assert walker.question.state == "whose"


def test_free_text_mid_flow_is_confirmed_and_returns_to_the_question(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.text("うちの母が認知症で困っています")
    assert walker.question.state == "triage"
    walker.tap("yes")
    # back at whose → answered by the text (母) → the age question
    assert walker.question.state == "age"
    assert walker.session.answers["whose"] == "family"
    walker.tap("65_plus")
    assert walker.question.state == "more"  # the concern question was answered too
    assert walker.session.concerns == ["elderly"]


def test_plain_answers_still_pick_the_choice(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.text("自分")
    assert walker.question.state == "age"
    walker.text("40代")
    assert walker.session.answers["age"] == "40_64"
    assert walker.question.state == "concern"


def test_english_text_switches_to_english(walker: Walker, pack):
    walker.text("I feel so lonely, I have no one to talk to")
    assert walker.session.lang == "en"
    assert walker.question.state == "triage"
    assert walker.question.text.startswith("So this is about")
    assert [c.label for c in walker.question.choices] == [pack.msg("triage.yes", "en"),
                                                          pack.msg("triage.no", "en")]


@pytest.mark.parametrize(("text", "lang"), [("我需要帮助，我没有钱", "zh"), ("도와주세요", "ko"),
                                             ("Tôi cần giúp đỡ", "vi")])
def test_other_languages_get_a_note_in_their_language(walker: Walker, pack, text, lang):
    """Its topic cannot be read, so it is not guessed: the foreign residents' windows take any
    topic in the resident's language (round 6's decision, triage.ja.yaml `other_language`)."""
    walker.text(text)
    assert pack.msg(f"triage.lang.{lang}", "ja") in _texts(walker)
    # then English, offering the foreign residents' windows
    assert walker.session.lang == "en"
    assert walker.question.state == "triage"
    assert pack.msg("triage.topic.foreign", "en") in walker.question.text


def test_a_greeting_in_another_language_gets_the_note_and_the_welcome(walker: Walker, pack):
    walker.text("你好")
    assert pack.msg("triage.lang.zh", "ja") in _texts(walker)
    assert walker.question.state == "welcome"
    assert walker.session.lang == "en"


def test_several_fits_are_offered_with_something_else(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.tap("self")
    walker.tap("skip")
    walker.text("家賃")
    values = [c.value for c in walker.question.choices]
    assert {"poverty", "homeless"} <= set(values) and values[-1] == "other"
    walker.tap("homeless")
    assert walker.session.concerns == ["homeless"]


def test_nothing_fits_at_the_welcome_gets_a_kind_answer_with_categories(walker: Walker, pack):
    walker.start()
    walker.text("ええと")
    q = walker.question
    assert q.state == "triage" and q.text == pack.msg("triage.none", "ja")
    assert {c.value for c in q.choices} == set(pack.categories)
    assert pack.msg("common.not_understood", "ja") not in _texts(walker)
    assert all("番号を送" not in t for t in [*_texts(walker), q.text])


def test_crisis_still_comes_first_in_the_same_reply(walker: Walker):
    walker.start()
    walker.tap("start")
    walker.text("もう消えてしまいたい")
    first = walker.replies[0]
    assert isinstance(first, Text) and first.urgent
    assert any(isinstance(r, Cards) and r.urgent for r in walker.replies)


def test_confirmed_suicide_worry_brings_the_crisis_lines(walker: Walker, engine):
    session = engine.new_session()
    session.guess = {"mode": "confirm", "cats": ["suicide"], "slots": {}, "back": "welcome"}
    session.enter("triage")
    step = engine.step(session, Incoming("tap", "yes", "triage"), WEEKDAY_MORNING)
    assert any(e == "crisis:self_harm" for e in step.events)
    assert isinstance(step.replies[0], Text) and step.replies[0].urgent


def test_confirm_choices_are_normal_taps(walker: Walker):
    walker.text("水道代が払えない")
    q = walker.question
    assert isinstance(q, Question) and all(c.value in ("yes", "no") for c in q.choices)
    walker.send(Incoming("text", "はい"))  # typed instead of tapped
    assert walker.session.concerns == ["poverty"]


def test_stale_confirmation_tap_is_not_trusted(walker: Walker):
    walker.text("水道代が払えない")
    walker.tap("yes")
    walker.send(Incoming("tap", "yes", "triage"))
    assert walker.session.concerns == ["poverty"]
    assert walker.question.state == "whose"


def test_typed_text_is_not_kept_in_the_session(walker: Walker):
    walker.text("40代の息子が10年以上ひきこもっています")
    assert "息子" not in walker.session.dumps()


# -- the evaluation set (tests/data/triage_eval.yaml) ---------------------------------------
@pytest.fixture(scope="module")
def triage_report():
    from pathlib import Path

    from bot.pack import load_pack
    from bot.triage_eval import evaluate_triage
    from bot.wiring import build_engine

    engine = build_engine(load_pack("kyoto"))
    path = Path(__file__).parent / "data" / "triage_eval.yaml"
    return evaluate_triage(engine, path, WEEKDAY_MORNING)


def test_free_text_reaches_the_right_category(triage_report):
    """The floors reached (issue 9 asks ≥ 90%), as a first message and mid-flow alike."""
    first, middle = triage_report.passes
    assert len(first.outcomes) >= 300
    assert first.accuracy() >= 0.93, triage_report.format(verbose=True)
    assert middle.accuracy() >= 0.93, triage_report.format(verbose=True)
    assert min(first.half(0), first.half(1)) >= 0.92


def test_no_worry_is_invented_for_text_that_names_none(triage_report):
    first = triage_report.passes[0]
    nones = [o for o in first.outcomes if o.expected == "none"]
    assert nones and all(o.right for o in nones)


def test_slots_read_from_the_evaluation_set(triage_report):
    right, given = triage_report.slots["whose"]
    assert given >= 300 and right / given >= 0.85
    right, given = triage_report.slots["age"]
    assert right / given >= 0.75


# -- the held-out sets (tests/data/triage_holdout*.yaml): text nobody tuned for --------------
@pytest.fixture(scope="module")
def holdout_reports():
    from pathlib import Path

    from bot.pack import load_pack
    from bot.triage_eval import evaluate_triage
    from bot.wiring import build_engine

    engine = build_engine(load_pack("kyoto"))
    data = Path(__file__).parent / "data"
    return {name: evaluate_triage(engine, data / f"{name}.yaml", WEEKDAY_MORNING)
            for name in HOLDOUT_FLOORS}


# Floors a little below the figures reached (`python -m bot eval-triage --data FILE`). Each set
# was written before the round of vocabulary work it measures blind; once its misses were looked
# at and fixed it stopped being unseen, so the newest set gives the honest figure:
#   triage_holdout    83.0% before, 94.3% after (round 1 fixed its misses)
#   triage_holdout_b  75.7% before, 77.1% blind after round 1, 95.7% after round 2 (tuned on)
#   triage_holdout_c  57.1% before, 60.0% blind after rounds 1-2, 78.6% after round 3 (tuned on)
#   triage_holdout_d  59.1% before, 61.4% after rounds 1-2, 70.5% blind after round 3 (the
#                     obligation fix 〜ないといけない, prompted by one of its misses, left it),
#                     86.4% after round 5 (English vocabulary)
#   triage_holdout_e  83.3% before, 100% after round 5 (tuned on, by class)
#   triage_holdout_f  71.7% before, 78.3% blind after round 5, 100% after round 6 (tuned on,
#                     by class)
#   triage_holdout_g  90.0% blind after round 6 (measured once; not looked at), 90.0% blind
#                     after round 7 (still not looked at)
# Round 7 (red-team classes: word ends, one span one vote, context words, whose) left
# eval 96.9 → 98.3% (new items included), holdout 95.3 → 95.8, b 95.7 → 98.6, c 81.4 → 82.9,
# d 86.4 → 90.9, e and f 100%.
# Round 8 (classes: young carers and family words for whose, a friend's house as a place, women's
# troubles told as what was done, papers and offices only beside a foreign cue, a parent left
# alone, a foreign worker unpaid, loneliness told as silence; g used as a dev set from this
# round, so no set is blind now): c 82.9 → 91.4, d 90.9 → 93.2, g 90.0 → 98.6, others
# unchanged; whose eval 93.9 → 94.6, holdout 94.8 → 95.9, c 86.2 → 89.2, d 92.3 → 94.9,
# f 93.3 → 96.7, g 88.1 → 91.0. triage_dev_round_8 (the round's own phrasings with hard
# negatives): 55.4% before, 95.4% after (its 3 misses: two crisis-tier readings of women's
# items, one English friend's place).
#   triage_holdout_h  79.5% blind after round 8 (measured once; not looked at; whose 84.6%,
#                     age 63.2%, duration 58.3%)
# Sets e, f, g and h hold no `none` items (written as worries only).
HOLDOUT_FLOORS = {"triage_holdout": 0.92, "triage_holdout_b": 0.92, "triage_holdout_c": 0.88,
                  "triage_holdout_d": 0.88, "triage_holdout_e": 0.95, "triage_holdout_f": 0.95,
                  "triage_holdout_g": 0.96, "triage_dev_round_8": 0.92,
                  "triage_holdout_h": 0.78}
WITHOUT_NONE = {"triage_holdout_e", "triage_holdout_f", "triage_holdout_g", "triage_holdout_h"}


@pytest.mark.parametrize("name", sorted(HOLDOUT_FLOORS))
def test_held_out_text_reaches_the_right_category(holdout_reports, name):
    report = holdout_reports[name]
    first, middle = report.passes
    assert len(first.outcomes) >= (200 if name == "triage_holdout" else 40)
    assert first.accuracy() >= HOLDOUT_FLOORS[name], report.format(verbose=True)
    assert middle.accuracy() >= HOLDOUT_FLOORS[name], report.format(verbose=True)
    nones = [o for o in first.outcomes if o.expected == "none"]
    assert (nones or name in WITHOUT_NONE) and all(o.right for o in nones)


def test_held_out_sets_are_new_sentences():
    """A held-out sentence copied from the tuning set would measure nothing."""
    from pathlib import Path

    import yaml

    data = Path(__file__).parent / "data"
    seen = {i["text"] for i in yaml.safe_load((data / "triage_eval.yaml").read_text(
        encoding="utf-8"))["items"]}
    for name in HOLDOUT_FLOORS:
        items = yaml.safe_load((data / f"{name}.yaml").read_text(encoding="utf-8"))["items"]
        texts = [i["text"] for i in items]
        assert len(texts) == len(set(texts)) and not seen & set(texts), name
        seen |= set(texts)


def test_eval_triage_command_takes_another_file():
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "bot", "eval-triage", "--data",
                           "tests/data/triage_holdout_b.yaml"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "(70/70)" in proc.stdout or "/70)" in proc.stdout


def test_eval_triage_command_prints_the_table():
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "bot", "eval-triage"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout and "precision" in proc.stdout
    assert "confusion" in proc.stdout


def test_explain_shows_lemmas_matches_slots_and_crisis():
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "bot", "explain", "なぐられてる"],
                          cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "殴る れる" in out and "dv_abuse" in out and "crisis:     violence" in out


def test_a_new_worry_after_the_results_starts_a_new_consultation(walker: Walker):
    walker.text("40代の息子が10年以上ひきこもっています。伏見区です")
    walker.tap("yes")
    walker.tap("open")
    walker.tap("none")
    walker.tap("phone")
    assert walker.question.state == "results"
    walker.text("母の介護に疲れています")
    walker.tap("yes")
    assert walker.session.concerns == ["elderly"]
    assert walker.session.answers == {"whose": "family"}
    assert walker.question.state == "age"


def test_free_text_at_the_ward_question_adds_the_worry_and_returns(walker: Walker, pack):
    if not pack.wards.wards:
        pytest.skip("a city without wards has no ward question")
    walker.start()
    for value in ("start", "self", "40_64", "loneliness", "none"):
        walker.tap(value)
    assert walker.question.state == "ward"
    walker.text("実は借金の返済にも困っています")
    walker.tap("yes")
    assert walker.session.concerns == ["loneliness", "poverty"]
    assert walker.question.state == "ward"


def test_the_vocabulary_is_compiled_once_for_every_city(pack):
    from bot.pack.loader import common_dir

    assert load_vocab(common_dir(pack.root)) is pack.triage


# -- round 7: the red-team review's classes ------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Is there a dietitian who can help my daughter diet?",  # die → diet
    "Can I borrow a DVD at the central library?",  # dv → DVD
    "The temperature in the gym is too low",  # temper → temperature
    "Where does the yellow bag go?",  # yell → yellow
    "Is the taxi stand at the east exit?",  # tax → taxi
    "Give me an example of the form",  # exam → example
    "Does the drugstore near the station open on Sunday?",  # drugs → drugstore
    "How many billion yen is the budget?",  # bill → billion
    "Is the ropeway to the mountain open?",  # rope → ropeway
    "a tentative date on the tenth",  # tent → tentative, tenth
    "the dormant account at the bank",  # dorm → dormant
    "my new game controller",  # control → controller
    "a giveaway at the shopping street festival",  # give * away → giveaway
])
def test_an_english_entry_ends_at_a_word_end(pack, text):
    assert triage(text, "en", pack).top is None, triage(text, "en", pack).evidence


def test_an_english_stem_marked_with_a_tilde_takes_any_ending(pack):
    assert triage("the loneliness is unbearable", "en", pack).top == "loneliness"
    assert triage("the harassment at work keeps getting worse", "en", pack).top == "women"
    assert triage("my son is a truant", "en", pack).top == "children_youth"
    # and a short last word takes its plural: tax → taxes, job → jobs
    assert "poverty" in dict(triage("I can't pay my taxes", "en", pack).scores)


def test_one_phrase_counts_once_in_a_category(pack):
    """Entries of a category that cover the same words are one vote, with the highest weight:
    "give away my" and "give * away"; 身辺整理 and 身辺 整理."""
    result = triage("I am giving away my things because I won't need them", "en", pack)
    assert dict(result.scores)["suicide"] == pytest.approx(2 + 1.5)
    assert any("same words" in hit for hit in result.evidence["suicide"])
    ja = triage("死ぬ前に身辺整理をしている", "ja", pack)
    hits = [h for h in ja.evidence["suicide"] if h.startswith("身辺")]
    assert len([h for h in hits if "same words" not in h]) == 1


@pytest.mark.parametrize(("text", "lang"), [
    ("燃えるゴミ出しは何時までですか", "ja"),
    ("係長の顔色ばかり見てしまう", "ja"),
    ("領収書やレシートの整理が苦手", "ja"),
    ("高架下の駐車場は市営ですか", "ja"),
    ("テント生活みたいなキャンプが好き", "ja"),
    ("カーテンを閉めないと眠れない", "ja"),
    ("膝が痛くて病院に行きたい（25歳）", "ja"),
    ("引っ越しなので身辺整理中、粗大ごみの申し込みは？", "ja"),
    ("I want to give away a bookshelf, who collects furniture?", "en"),
    ("We said goodbye to our old flat and moved to Sakyo", "en"),
    ("I will not be here on Friday, can I come on Monday?", "en"),
    ("The bike I parked here has disappeared", "en"),
])
def test_context_words_alone_name_no_worry(pack, text, lang):
    assert triage(text, lang, pack).top is None, triage(text, lang, pack).evidence


@pytest.mark.parametrize(("text", "lang", "category"), [
    ("夫の機嫌をうかがって毎日びくびくしている", "ja", "dv_abuse"),
    ("家がなくて、橋の下で寝ています", "ja", "homeless"),
    ("80歳の母が膝を痛めてゴミ出しができない", "ja", "elderly"),
    ("膝が悪くてゴミ出しがしんどい", "ja", "elderly"),  # two signs together
    ("形見分けのつもりで友達に私物を配った", "ja", "suicide"),  # two signs together
    ("My boyfriend's temper frightens me", "en", "dv_abuse"),
    ("We lost our flat and live in a tent now", "en", "homeless"),
])
def test_context_words_count_beside_a_word_of_their_category(pack, text, lang, category):
    assert triage(text, lang, pack).top == category, triage(text, lang, pack).evidence


@pytest.mark.parametrize(("text", "lang", "whose"), [
    ("娘に家を出ていかれて、どこにいるのかもわからない", "ja", "family"),  # adversative passive
    ("夫に殴られて怖い", "ja", "self"),  # an act done to the writer
    ("息子から何か月も連絡がない", "ja", "family"),  # から with a contact word
    ("友達の家に泊まらせてもらっている、住む所がない", "ja", "self"),  # a place
    ("近所のおじいさんが最近元気がない", "ja", "friend"),
    ("I got thrown out by my mother and need a place to stay", "en", "self"),
    ("I live with my dad and can't find work", "en", "self"),
    ("my husband is leaving me and I have no money", "en", "self"),
    ("my friend told me she wants to die", "en", "friend"),  # a report, not an act on the writer
    ("my coworker's daughter is being bullied", "en", "friend"),
    ("my younger brother stopped going to school", "en", "family"),
])
def test_whose_worry_reads_who_acts_on_whom(pack, text, lang, whose):
    assert triage(text, lang, pack).slots.get("whose") == whose


def test_a_parent_hitting_a_younger_sibling_is_abuse(pack):
    assert triage("my dad hits my little sister", "en", pack).top == "dv_abuse"
    assert triage("my mom slaps my older brother", "en", pack).top == "dv_abuse"


@pytest.mark.parametrize("entry", ["", "*", "* *", "~", "!"])
def test_an_english_entry_without_a_word_is_refused_by_name(tmp_path, entry):
    """An entry of no word (or only `*`) would match every text."""
    (tmp_path / "triage.ja.yaml").write_text("version: 1\ncategories: {}\n", encoding="utf-8")
    (tmp_path / "triage.en.yaml").write_text(
        "version: 1\ncategories:\n  debt:\n    words: [debt, " + repr(entry) + "]\n",
        encoding="utf-8")
    with pytest.raises(TriageError, match=r"triage\.en\.yaml: entry .* has no word"):
        load_vocab(tmp_path)


def test_inflection_keys_are_read_as_the_matcher_reads_words(tmp_path):
    from bot.language import normalize
    from bot.triage import TriageFile, _word_cue

    spec = TriageFile.model_validate({"version": 1, "categories": {},
                                      "inflections": {"Lose": ["LOST"], "lose": ["lost"],
                                                      "Can't": ["Couldn't"]}})
    assert spec.inflections == {"lose": ["lost"], "cant": ["couldnt"]}
    cue = _word_cue("lose my job", 1.0, "en", irregular=spec.inflections)
    assert cue.regex is not None and cue.regex.search(normalize("I LOST my job"))
    with pytest.raises(ValueError, match="not one word"):
        TriageFile.model_validate({"version": 1, "categories": {},
                                   "inflections": {"give up": ["gave up"]}})
