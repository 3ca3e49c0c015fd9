"""The Japanese language layer: one place where typed text becomes forms we can match.

Used alike by choice matching (bot/engine.py), triage (bot/triage.py) and crisis detection
(bot/safety.py), so the three never disagree about what a message says.

Two views of a message:
  - `normalize(text)`: the surface, folded (see its docstring). Literal terms and patterns run
    on it: it keeps whatever the analyser would split oddly (slang, typos, English).
  - `Analysis.lemmas`: the message cut into words by SudachiPy, each word replaced by its
    normalised dictionary form (`normalized_form`: 殴られ → 殴る, なぐら → 殴る, 淋しい/さびしい →
    寂しい), joined with spaces and wrapped in spaces (" 殴る れる てる "), so that every
    conjugation, okurigana variant and kana spelling of a word meets one entry.

The dictionary is `sudachidict_small`, installed as a Python package (pyproject.toml); nothing is
downloaded at run time. One tokenizer per thread (SudachiPy tokenizers keep state while they
work), created on first use from a dictionary loaded once per process.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import Any

import yaml

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
    """Load the dictionary now (at start-up) rather than on the first resident's message."""
    _tokenizer().tokenize("")


@dataclass(frozen=True)
class Token:
    surface: str  # normalised surface
    reading: str  # normalised reading (kana), so text typed in kana meets words in kanji
    lemma: str  # normalised dictionary form (normalized_form, folded like the surface)
    pos: str  # the first part-of-speech field: 名詞, 動詞, ...


# Parts of speech that carry meaning (for example-sentence similarity); particles and
# auxiliaries only glue.
_KANA_ONLY = re.compile("[\u3041-\u309f]+")
CONTENT_POS = frozenset({"名詞", "動詞", "形容詞", "形状詞", "副詞", "代名詞", "接頭辞", "接尾辞"})
_SPLIT_TEXT = re.compile(r"[\s\u3000]+")


@dataclass(frozen=True)
class Analysis:
    """A message as the matchers see it. Build with `analyze`."""

    text: str
    norm: str  # normalize(text)
    tokens: tuple[Token, ...]
    lemmas: str  # " l1 l2 l3 ": lemma forms with a space on both sides of each

    @property
    def reading(self) -> str:
        """The parts typed in kana, as read aloud (folded): 「ふとうこうです」 → ふとうこうです,
        to meet 不登校 (read ふとうこう). Words typed in kanji are left out ("|"): they meet
        their vocabulary by lemma, and their readings would only collide (自閉症 じへいしょう
        holds いしょ)."""
        return "".join(t.reading if _KANA_ONLY.fullmatch(t.surface) else "|"
                       for t in self.tokens)

    @property
    def content(self) -> frozenset[str]:
        """The lemmas of the meaning-bearing words."""
        return frozenset(t.lemma for t in self.tokens if t.pos in CONTENT_POS and t.lemma)


def _lemma_form(word: str) -> str:
    return normalize(word).replace(" ", "")


# -- dialect and glue ---------------------------------------------------------------------------
# Kansai forms (the older どす/おす too) that the analyser's dictionary cuts into the wrong
# words, rewritten to standard Japanese before analysis. Only the analysis sees the rewrite: the
# surface keeps what was typed, so literal terms still match it. Each rule is narrow on purpose:
# あかん but not あかんぼう (赤ん坊), a verb stem + ひん but not ひんこん (貧困). These are
# spelling facts of the language, not resident-facing text, so they live next to the analyser.
_DIALECT: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement) for pattern, replacement in (
        # 出なあかん, せんとあかん: must
        ("(な|なきゃ|んと|へんと|ひんと)(あかん|あきまへん|あきません)", "なければいけない"),
        ("あかん(?![ぼべ])", "だめ"),  # あかん = だめ (analysed as あ + 彼)
        ("(?<![ぁ-んァ-ン])(おかん|オカン)(?![じけむぞきこ])", "母"),  # mum (お + 彼)
        ("(?<![ぁ-んァ-ン])(おとん|オトン)(?![ぼ])", "父"),  # dad (お + 飛ぶ)
        ("(しいひん|せえへん|せーへん|せへん)", "しない"),
        ("(けえへん|けーへん|こおへん|こーへん|きいひん|きーひん|こやへん)", "こない"),
        ("来[えーい]?へん", "来ない"),
        # a verb stem + ひん (できひん, 見いひん): ない; ひんこん/ひんけつ/ひんぱん stay
        ("(?<=[\u4e00-\u9fff])いひん", "ない"),  # 見いひん, 居いひん
        ("(?<=[きしちにひみりぎじびえけせてねへめれげぜでべ])ひん(?![こけぱしそ])", "ない"),
        ("おへん", "ない"),  # old Kansai: ありません
        ("(?<=[てで])へん(?![かがしじてでなにりるれ])", "ない"),  # 決まってへん, 読んでへん
        # 〜とった/〜とって (= ていた/ていて) after a verb stem written with a kanji: 生きとって
        # is analysed as 生きる + 取る (〜とる itself is read right). Not after に/で (にとって).
        ("(?<=[\u4e00-\u9fff][いきしちひみりぎびえけせてねべめれげぜ])と(?=っ[てた])", "てお"),
        (r"どす(?=[。、,.！？!?\s]|$|[かえなねよわけ])", "です"),  # old Kansai copula
        ("(?<=[いきしちにひみりぎじび])とう(おす|おすえ)(?![ぁ-ん])", "たいです"),  # 〜とうおす
        (r"(?<=[うい])おす(?=[。、,.！？!?\s]|$|[えなねよかわ])", "です"),  # old Kansai: 〜とうおす
    ))

# Glue that says nothing about a worry, mapped so that one vocabulary entry meets every way of
# saying the same thing (lemma → replacement; "" drops the word from `Analysis.lemmas`):
# negation in all its forms is one word (ない, ず from ん/ません, へん/ひん of Kansai, ぬ, and
# the adjective 無い), polite ます/です and the Kansai honorific はる are dropped, Kansai や is だ.
# Only auxiliaries (助動詞) are mapped: the noun 変 (へん) and the particle や stay.
NEGATION = "無い"  # the one lemma of every negation
_GLUE = {"ない": NEGATION, "ず": NEGATION, "へん": NEGATION, "ひん": NEGATION, "ぬ": NEGATION,
         "ん": NEGATION,
         "ます": "", "です": "", "はる": "", "や": "だ", "とる": "てる"}
_AUX = "助動詞"


# 出ないといけない, 出なければならない, 出なくちゃ(いけない), 出なきゃ: "must leave" is not "does
# not leave". The negation and its glue become one word, OBLIGATION (部屋 を 出る 必要).
OBLIGATION = "必要"
_MUST_JOIN = ("と", "ば", "て", "ちゃ", "は")  # the glue between the negation and いけない/ならない
_MUST_END = frozenset({"行く", "成る", "駄目", "行ける"})
_MUST_ALONE = frozenset({"なきゃ", "なくちゃ", "なけりゃ", "ねば"})


def _obligations(tokens: list[Token]) -> list[Token]:
    out = list(tokens)
    for i, token in enumerate(out):
        if token.lemma != NEGATION:
            continue
        j = i + 1
        while j < len(out) and out[j].lemma in _MUST_JOIN and j - i <= 2:
            j += 1
        ends = j > i + 1 and j < len(out) and out[j].lemma in _MUST_END
        if not ends and token.surface not in _MUST_ALONE:
            continue
        out[i] = Token(token.surface, token.reading, OBLIGATION, token.pos)
        if ends:
            k = j + 1
            while k < len(out) and not out[k].lemma:  # ます, dropped
                k += 1
            k = k if k < len(out) and out[k].lemma == NEGATION else j
            for m in range(i + 1, k + 1):
                out[m] = Token(out[m].surface, out[m].reading, "", out[m].pos)
    return out


def _standard(text: str) -> str:
    """The text with the dialect forms of `_DIALECT` rewritten (for the analyser only)."""
    for pattern, replacement in _DIALECT:
        if pattern.search(text):
            text = pattern.sub(replacement, text)
    return text


def analyze(text: str) -> Analysis:
    """Cut, lemmatise and normalise a message (~0.05 ms for a sentence)."""
    tokens: list[Token] = []
    if text.strip():
        # NFKC first: SudachiPy sees full-width kana and ASCII digits, as residents mean them.
        clean = _standard(unicodedata.normalize("NFKC", text)[:2000])
        for part in _SPLIT_TEXT.split(clean):
            if not part:
                continue
            for m in _tokenizer().tokenize(part):
                lemma = _lemma_form(m.normalized_form())
                surface = _lemma_form(m.surface())
                if not lemma or not surface:
                    continue
                pos = m.part_of_speech()[0]
                if pos == _AUX and lemma in _GLUE:
                    lemma = _GLUE[lemma]
                tokens.append(Token(surface, _lemma_form(m.reading_form()), lemma, pos))
    tokens = _obligations(tokens)
    words = [t.lemma for t in tokens if t.lemma]
    lemmas = " " + " ".join(words) + " " if words else " "
    return Analysis(text=text, norm=normalize(text), tokens=tuple(tokens), lemmas=lemmas)


def lemma_form(phrase: str) -> str:
    """A phrase as it appears in `Analysis.lemmas`, without the outer spaces: 殴られる →
    "殴る れる". Vocabulary is written naturally and converted with this."""
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
# Simplified characters common in Chinese and absent from Japanese writing.
_ZH_ONLY = re.compile("[你您们这说么请帮问题钱没应为谁还会吗吧呢哪怎让给对时间现谢语]")


def script_language(text: str) -> str:
    """The language a message is plainly written in, by its script: "ja", "en", "zh", "ko",
    "vi", ... or "" when it cannot be told (digits, emoji, one Latin letter)."""
    if _KANA_RE.search(text):
        return "ja"
    for lang, pattern in _SCRIPTS:
        if pattern.search(text):
            return lang
    if _HAN.search(text):
        return "zh" if _ZH_ONLY.search(text) else "ja"
    if _VIET.search(text):
        return "vi"
    if _LATIN_WORD.search(text):
        return "en"
    return ""


__all__ = [
    "ALNUM",
    "DICTIONARY",
    "NEGATION",
    "OBLIGATION",
    "SAFE_LOADER",
    "Analysis",
    "Token",
    "analyze",
    "fold_pattern",
    "lemma_form",
    "normalize",
    "script_language",
    "warm_up",
]
