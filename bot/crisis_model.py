"""The soft tier: a small learned second net beside the crisis rules (README, "Safety and
privacy").

The rules (crisis.yaml) catch only ~72-78% of each set of phrasings written blind, and phrase
rules fixed on one set generalise poorly to the next. A logistic regression on character 2-3-grams
of the normalised text and on lemma unigrams and bigrams catches some of what they miss. It
never replaces the rules: when they find nothing in a typed text and this model's probability
reaches the threshold, the engine adds one gentle line with the 24-hour lines to the normal
reply (`crisis.maybe`), never the crisis takeover.

The weights are data (`bot/content/common/crisis_model.json`), made offline by
`python -m bot train-crisis-model` from the labelled sets in tests/data. Why no scikit-learn: the
model is a 60-line logistic regression trained by plain gradient descent in numpy (already
installed with matplotlib) at build time only; at run time scoring is a dictionary lookup per
feature, with no dependency and nothing downloaded.

Training is deterministic (no randomness, fixed iterations) so a test can retrain and compare.
It runs in the dual: with w = Aᵀα the gradient step on w is a step on α over the Gram matrix
K = AAᵀ (a few thousand texts, tens of thousands of features), which is exactly the same
descent at a fraction of the cost.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Protocol
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot import logs
from bot.language import Analysis, analyze
from bot.pack.loader import PackError

REPO = Path(__file__).resolve().parents[1]
MODEL_FILE = Path(__file__).parent / "content" / "common" / "crisis_model.json"
DATA = REPO / "tests" / "data"
# Labelled crisis sets: `risk` lines are 1, `ordinary` lines 0.
SAFETY_FILES = ("safety_eval.yaml", "safety_eval_fresh.yaml", "safety_holdout.yaml",
                "safety_holdout_b.yaml", "safety_holdout_c.yaml", "safety_dev_round_f.yaml",
                "safety_holdout_e.yaml", "safety_dev_round_g.yaml")
# Everyday worries as extra negatives: triage items whose category is not one a crisis lies in.
TRIAGE_GLOB = "triage_*.yaml"
TRIAGE_CRISIS_CATEGORIES = frozenset({"suicide", "dv_abuse", "children_youth"})
# Kept blind: measured once, never trained or tuned on.
EXCLUDED = frozenset({"safety_holdout_d.yaml", "safety_holdout_f.yaml",
                      "triage_holdout_h.yaml"})

LAMBDA = 1e-4  # L2 penalty (1e-3 and 3e-4 caught fewer held-out risk lines at the bounds)
ITERATIONS = 1500
CUT = 0.12  # weights smaller than this are dropped (the file stays under 300 KB)
MAX_FP_SAFETY = 0.02  # held-out false positives on the safety sets' ordinary lines
MAX_FP_TRIAGE = 0.01  # ... and on the everyday triage texts


# -- features -------------------------------------------------------------------------------
def features(found: Analysis) -> frozenset[str]:
    """The text's binary features: c+2/3-gram of the normalised text, l+lemma, b+lemma pair."""
    norm = found.norm
    out = {"c" + norm[i:i + k] for k in (2, 3) for i in range(len(norm) - k + 1)}
    lemmas = found.lemmas.split()
    out.update("l" + w for w in lemmas)
    out.update(f"b{a} {b}" for a, b in pairwise(lemmas))
    return frozenset(out)


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class CrisisModel:
    """Loaded weights; score() is pure and thread-safe."""

    bias: float
    weights: dict[str, float]
    threshold: float

    def score(self, found: Analysis) -> float:
        """Probability of risk: a sigmoid of the bias plus the known features' weights, the
        text's feature vector being binary and L2-normalised over all its features."""
        feats = features(found)
        if not feats:
            return 0.0
        total = sum(self.weights.get(f, 0.0) for f in feats)
        return _sigmoid(self.bias + total / math.sqrt(len(feats)))

    def flags(self, found: Analysis) -> bool:
        return self.score(found) >= self.threshold

    def top(self, found: Analysis, n: int = 8) -> list[tuple[str, float]]:
        """The features that pushed the score most, either way (for `python -m bot explain`)."""
        feats = features(found)
        scale = 1 / math.sqrt(len(feats)) if feats else 0.0
        known = [(f, self.weights[f] * scale) for f in feats if f in self.weights]
        return sorted(known, key=lambda fw: (-abs(fw[1]), fw[0]))[:n]


class _ModelFile(BaseModel):
    """What load() accepts of crisis_model.json (other keys, for people, are ignored)."""

    model_config = ConfigDict(strict=True)

    bias: float = Field(allow_inf_nan=False)
    threshold: float = Field(gt=0, lt=1, allow_inf_nan=False)
    weights: dict[str, Annotated[float, Field(allow_inf_nan=False)]]


_LOADED: dict[Path, CrisisModel] = {}


def load(path: Path | None = None) -> CrisisModel:
    """The model in `path` (default MODEL_FILE), loaded once.

    Raises:
        PackError: in one line naming the file, when it is missing, unreadable, not JSON or not
            a model (the product ships the file: start-up stops, as for a broken pack).
    """
    path = MODEL_FILE if path is None else path
    if path not in _LOADED:
        try:
            data = _ModelFile.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise PackError([f"{path.name}: cannot be read ({exc.strerror or exc}): "
                             f"run python -m bot train-crisis-model"]) from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'file'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:3])
            raise PackError([f"{path.name}: not a crisis model ({problems})"]) from None
        _LOADED[path] = CrisisModel(bias=data.bias, weights=data.weights,
                                    threshold=data.threshold)
        logs.event(logs.get("crisis_model"), "soft_tier_loaded",
                   weights=len(data.weights), threshold=data.threshold)
    return _LOADED[path]


# -- the labelled data ------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    text: str
    label: int  # 1 risk, 0 not
    source: str  # file name: the cross-validation fold
    group: str  # "risk", "ordinary" (safety sets) or "triage"


def _yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def safety_lines(path: Path) -> tuple[list[str], list[str]]:
    """(risk texts, ordinary texts) of a safety set."""
    data = _yaml(path)
    risk = [r["text"] for r in data.get("risk", [])]
    ordinary = [o if isinstance(o, str) else o["text"] for o in data.get("ordinary", [])]
    return risk, ordinary


class _Detector(Protocol):
    def detect(self, text: str | Analysis) -> Any: ...


@dataclass(frozen=True)
class Caught:
    """Rules alone, and rules or model, on one labelled safety set."""

    risk: int  # risk lines
    risk_rules: int  # ... the rules catch
    risk_either: int  # ... the rules or the model catch
    ordinary: int  # ordinary lines
    ordinary_rules: int  # ... the rules flag (false positives)
    ordinary_either: int  # ... the rules or the model flag


def rules_and_model(path: Path, detector: _Detector, model: CrisisModel) -> Caught:
    """What the rules, and the rules or the model at its threshold, flag of a safety set."""
    counts: list[tuple[int, int, int]] = []
    for texts in safety_lines(path):
        found = [analyze(t) for t in texts]
        rules = [detector.detect(f) is not None for f in found]
        either = [r or model.flags(f) for r, f in zip(rules, found, strict=True)]
        counts.append((len(texts), sum(rules), sum(either)))
    (n_r, r_rules, r_either), (n_o, o_rules, o_either) = counts
    return Caught(n_r, r_rules, r_either, n_o, o_rules, o_either)


def share(part: int, whole: int) -> str:
    """"12.5% (1/8)", or "- (0/0)" for an empty group (no division by zero)."""
    return f"{part / whole:.1%} ({part}/{whole})" if whole else f"- ({part}/0)"


def training_files(data: Path = DATA) -> list[Path]:
    files = [data / name for name in SAFETY_FILES]
    files += sorted(data.glob(TRIAGE_GLOB))
    return [f for f in files if f.name not in EXCLUDED and f.exists()]


def examples(files: Iterable[Path]) -> list[Example]:
    """Every labelled text once (the first file naming it keeps it)."""
    out: list[Example] = []
    seen: set[str] = set()

    def add(text: str, label: int, source: str, group: str) -> None:
        if text not in seen:
            seen.add(text)
            out.append(Example(text, label, source, group))

    for path in files:
        if path.name in EXCLUDED:
            raise ValueError(f"{path.name} is kept blind: never train on it")
        if path.name.startswith("safety_"):
            risk, ordinary = safety_lines(path)
            for text in risk:
                add(text, 1, path.name, "risk")
            for text in ordinary:
                add(text, 0, path.name, "ordinary")
        else:
            for item in _yaml(path).get("items", []):
                if item.get("category") not in TRIAGE_CRISIS_CATEGORIES:
                    add(item["text"], 0, path.name, "triage")
    return out


# -- training -------------------------------------------------------------------------------
class _Design:
    """The texts' features as an incidence list, and their Gram matrix."""

    def __init__(self, feats: list[frozenset[str]]):
        import numpy as np

        self.names = sorted(set().union(*feats))
        index = {name: i for i, name in enumerate(self.names)}
        rows: list[int] = []
        cols: list[int] = []
        for i, fs in enumerate(feats):
            for f in sorted(fs):
                rows.append(i)
                cols.append(index[f])
        self.rows = np.array(rows, dtype=np.int64)
        self.cols = np.array(cols, dtype=np.int64)
        self.scale = 1 / np.sqrt(np.maximum([len(fs) for fs in feats], 1).astype(float))
        n = len(feats)
        counts = np.zeros((n, n))
        order = np.argsort(self.cols, kind="stable")
        cols_sorted, rows_sorted = self.cols[order], self.rows[order]
        bounds = np.flatnonzero(np.diff(cols_sorted)) + 1
        for docs in np.split(rows_sorted, bounds):
            counts[np.ix_(docs, docs)] += 1.0
        self.gram = counts * np.outer(self.scale, self.scale)

    def fit(self, train: Any, y: Any) -> tuple[float, Any]:
        """Gradient descent on the L2-penalised mean log loss, in the dual; returns (bias,
        weight per feature name index)."""
        import numpy as np

        gram = self.gram[np.ix_(train, train)]
        n = len(train)
        vec = np.ones(n)  # the largest eigenvalue, by a fixed power iteration
        for _ in range(50):
            vec = gram @ vec
            vec /= np.linalg.norm(vec)
        step = 1 / (float(vec @ gram @ vec) / (4 * n) + LAMBDA)
        alpha, bias = np.zeros(n), 0.0
        for _ in range(ITERATIONS):
            p = 1 / (1 + np.exp(-(gram @ alpha + bias)))
            residual = (p - y) / n
            alpha = (1 - step * LAMBDA) * alpha - step * residual
            bias -= 2.0 * float(residual.sum())
        coef = np.zeros(len(self.scale))
        coef[train] = alpha * self.scale[train]
        weights = np.bincount(self.cols, weights=coef[self.rows], minlength=len(self.names))
        return bias, np.where(np.abs(weights) > CUT, np.round(weights, 3), 0.0)

    def scores(self, bias: float, weights: Any) -> Any:
        """Every text's probability under (bias, weights)."""
        import numpy as np

        sums = np.bincount(self.rows, weights=weights[self.cols], minlength=len(self.scale))
        return 1 / (1 + np.exp(-(bias + sums * self.scale)))


@dataclass
class Trained:
    model: dict[str, Any]  # the JSON document
    table: str  # the cross-validation table, for people
    held_out: dict[str, tuple[int, int]]  # group -> (flagged at the threshold, of), by file CV


def _pct(part: int, whole: int, width: int) -> str:
    """part/whole as a percentage in `width` characters; "-" for an empty group."""
    return f"{part / whole:{width}.1%}" if whole else "-".rjust(width)


def _threshold(scores: Any, items: list[Example]) -> tuple[float, list[str]]:
    """The lowest threshold keeping held-out false positives within bounds, and the table."""
    import numpy as np

    groups = {g: np.array([e.group == g for e in items]) for g in ("risk", "ordinary", "triage")}
    lines = [" thr   risk recall    FP ordinary   FP triage"]
    chosen = None
    for step in range(30, 100):
        t = step / 100
        hit = scores >= t
        r = int(hit[groups["risk"]].sum())
        o = int(hit[groups["ordinary"]].sum())
        g = int(hit[groups["triage"]].sum())
        n_r, n_o, n_g = (int(groups[k].sum()) for k in ("risk", "ordinary", "triage"))
        ok = o <= MAX_FP_SAFETY * n_o and g <= MAX_FP_TRIAGE * n_g
        if ok and chosen is None:
            chosen = t
        if step % 5 == 0 or t == chosen:
            lines.append(f"{t:.2f}  {r:4d}/{n_r} {_pct(r, n_r, 6)}  "
                         f"{o:3d}/{n_o} {_pct(o, n_o, 5)}  {g:3d}/{n_g} {_pct(g, n_g, 5)}"
                         + ("   <- chosen" if t == chosen else ""))
    if chosen is None:
        raise ValueError("no threshold keeps false positives within bounds")
    return chosen, lines


def data_hash(items: list[Example]) -> str:
    """A stable digest of what the model was trained on (texts, labels, folds, settings)."""
    digest = hashlib.sha256(json.dumps(
        [[e.text, e.label, e.source] for e in items] + [[LAMBDA, ITERATIONS, CUT]],
        ensure_ascii=False).encode("utf-8"))
    return digest.hexdigest()


def train(files: list[Path] | None = None,
          progress: Callable[[str], None] | None = None) -> Trained:
    """Cross-validate by file, choose the threshold on the held-out scores, fit on all."""
    import numpy as np

    files = training_files() if files is None else files
    items = examples(files)
    design = _Design([features(analyze(e.text)) for e in items])
    y = np.array([e.label for e in items], dtype=float)
    held_out = np.zeros(len(items))
    sources = list(dict.fromkeys(e.source for e in items))
    folds = []
    for source in sources:
        test = np.array([e.source == source for e in items])
        bias, weights = design.fit(np.flatnonzero(~test), y[~test])
        held_out[test] = design.scores(bias, weights)[test]
        if progress:
            progress(f"  fold {source}: held out {int(test.sum())}")
        folds.append((source, test))
    threshold, lines = _threshold(held_out, items)
    per_file = ["file                         risk caught   ordinary/triage flagged"]
    for source, test in folds:
        hit = held_out[test] >= threshold
        labels = y[test] == 1
        per_file.append(f"{source:28s} {int(hit[labels].sum()):4d}/{int(labels.sum()):<4d}"
                        f"      {int(hit[~labels].sum()):4d}/{int((~labels).sum())}")
    everything = np.arange(len(items))
    bias, weights = design.fit(everything, y)
    kept = {design.names[i]: float(weights[i]) for i in np.flatnonzero(weights)}
    model = {
        "about": "Soft tier of crisis detection (bot/crisis_model.py): logistic regression on "
                 "char 2-3-grams of the normalised text and lemma uni/bigrams, binary features "
                 "L2-normalised. Made by `python -m bot train-crisis-model`; do not edit.",
        "made": datetime.now(ZoneInfo("Asia/Tokyo")).date().isoformat(),
        "files": [f.name for f in files],
        "excluded": sorted(EXCLUDED),
        "data_sha256": data_hash(items),
        "lambda": LAMBDA, "iterations": ITERATIONS, "cut": CUT,
        "threshold": threshold,
        "threshold_rule": f"lowest of 0.30-0.99 keeping cross-validated (by file) false "
                          f"positives <= {MAX_FP_SAFETY:.0%} on the safety sets' ordinary lines "
                          f"and <= {MAX_FP_TRIAGE:.0%} on the everyday triage texts",
        "cv": lines,
        "bias": round(bias, 4),
        "weights": dict(sorted(kept.items())),
    }
    flagged = {g: (int((held_out[m] >= threshold).sum()), int(m.sum()))
               for g in ("risk", "ordinary", "triage")
               for m in [np.array([e.group == g for e in items])]}
    return Trained(model, "\n".join([*lines, "", *per_file]), flagged)


def write(model: dict[str, Any], path: Path = MODEL_FILE) -> None:
    path.write_text(json.dumps(model, ensure_ascii=False, indent=0, separators=(",", ":"))
                    + "\n", encoding="utf-8")
