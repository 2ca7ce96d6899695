"""Review and message sentiment in any language the shop sees, with one API.

Three scorers, routed per text by :func:`online_models.text.detect_language`:

1. **online** — :func:`sentiment_model`, a River pipeline
   ``TextFeatures() | AROWClassifier(top_k=1)`` learning from the shop's own labelled
   reviews (e.g. star ratings turned into positive/negative) one at a time. Its
   features (characters, character n-grams, word n-grams, see
   :mod:`online_models.text`) need no tokenizer, so it learns any language.
2. **model** — an offline classifier served from ONNX
   (:class:`serving.care_models.OnnxTextClassifier`, trained by
   :mod:`offline_training.text`), passed in as a plain ``text -> P(positive)``
   callable with the languages it was trained on. The one trained here is Chinese
   (waimai reviews: ``benchmarks/care_quality.py`` measures it).
3. **lexicon** — :func:`lexicon_polarity`, a small English word list with negation
   and intensifiers, for English text until the online model has seen enough
   English reviews. No English sentiment data set was available to train on; the
   lexicon is a stop-gap, not a measured model.

:class:`SentimentAnalyzer` picks, per text: the online model once it has learned
``min_online`` examples in the text's language, else the offline model if it covers
the language, else the lexicon for English, else a neutral 0.5. Every result says
which scorer answered.

Examples
--------
>>> an = SentimentAnalyzer(min_online=4)
>>> r = an.analyze("Great product, fast delivery!")
>>> r.label, r.language, r.source
('positive', 'en', 'lexicon')
>>> an.analyze("not good at all, it arrived broken").label
'negative'
>>> an.analyze("好吃").source          # Chinese, no model yet: neutral prior
'prior'
>>> for text, pos in [("好吃", True), ("难吃", False), ("很好吃", True), ("太难吃了", False)] * 2:
...     an.learn_one(text, pos)
>>> r = an.analyze("真好吃")
>>> r.label, r.source
('positive', 'online')
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from river import compose

from online_models.intent import AROWClassifier, TextFeatures, TextLearner
from online_models.text import detect_language, tokenize

#: English polarity words (weights in [-3, 3]) for shop reviews and care messages.
ENGLISH_LEXICON: dict[str, float] = {
    # positive
    "good": 1.5,
    "great": 2.0,
    "excellent": 2.5,
    "amazing": 2.5,
    "awesome": 2.5,
    "perfect": 2.5,
    "love": 2.0,
    "loved": 2.0,
    "loves": 2.0,
    "like": 1.0,
    "liked": 1.0,
    "nice": 1.5,
    "happy": 1.5,
    "fast": 1.0,
    "quick": 1.0,
    "quickly": 1.0,
    "helpful": 1.5,
    "friendly": 1.5,
    "recommend": 1.5,
    "recommended": 1.5,
    "best": 2.0,
    "fantastic": 2.5,
    "wonderful": 2.5,
    "delicious": 2.0,
    "tasty": 1.5,
    "fresh": 1.0,
    "satisfied": 1.5,
    "pleased": 1.5,
    "works": 1.0,
    "worth": 1.0,
    "comfortable": 1.0,
    "beautiful": 2.0,
    "thanks": 1.0,
    "thank": 1.0,
    "glad": 1.5,
    "easy": 1.0,
    "reliable": 1.5,
    "sturdy": 1.0,
    "quality": 0.5,
    "well": 0.5,
    "smooth": 1.0,
    "superb": 2.5,
    "impressed": 2.0,
    "favorite": 2.0,
    "favourite": 2.0,
    "cheap": 0.5,
    "affordable": 1.0,
    "ok": 0.5,
    "okay": 0.5,
    "fine": 0.5,
    "correct": 0.5,
    "on-time": 1.0,
    "polite": 1.5,
    "generous": 1.5,
    "enjoy": 1.5,
    "enjoyed": 1.5,
    "fits": 1.0,
    "flawless": 2.5,
    "solid": 1.0,
    # negative
    "bad": -1.5,
    "terrible": -2.5,
    "awful": -2.5,
    "horrible": -2.5,
    "worst": -3.0,
    "poor": -1.5,
    "broken": -2.0,
    "broke": -1.5,
    "damaged": -2.0,
    "defective": -2.0,
    "faulty": -2.0,
    "late": -1.5,
    "slow": -1.0,
    "delayed": -1.5,
    "delay": -1.0,
    "missing": -1.5,
    "wrong": -1.5,
    "never": -1.0,
    "refund": -1.0,
    "return": -0.5,
    "returned": -1.0,
    "disappointed": -2.0,
    "disappointing": -2.0,
    "useless": -2.0,
    "waste": -2.0,
    "cold": -1.0,
    "stale": -1.5,
    "rude": -2.0,
    "unhelpful": -2.0,
    "expensive": -1.0,
    "overpriced": -1.5,
    "cheaply": -1.0,
    "scam": -3.0,
    "fake": -2.0,
    "hate": -2.5,
    "hated": -2.5,
    "problem": -1.0,
    "problems": -1.0,
    "issue": -0.5,
    "issues": -0.5,
    "fail": -1.5,
    "failed": -1.5,
    "fails": -1.5,
    "stopped": -1.0,
    "dirty": -1.5,
    "smelly": -1.5,
    "tasteless": -1.5,
    "bland": -1.0,
    "lost": -1.0,
    "cancel": -1.0,
    "cancelled": -1.0,
    "complaint": -1.5,
    "annoying": -1.5,
    "angry": -2.0,
    "unacceptable": -2.5,
    "ripped": -1.5,
    "leaking": -1.5,
    "leaked": -1.5,
    "spoiled": -2.0,
}
#: Words that flip the polarity of the next three tokens.
NEGATORS = frozenset(
    {
        "not",
        "no",
        "never",
        "don't",
        "doesn't",
        "didn't",
        "isn't",
        "wasn't",
        "aren't",
        "weren't",
        "won't",
        "can't",
        "cannot",
        "couldn't",
        "hardly",
        "without",
        "nothing",
        "neither",
        "nor",
    }
)
#: Words that scale the next polarity word.
INTENSIFIERS: dict[str, float] = {
    "very": 1.5,
    "really": 1.5,
    "so": 1.3,
    "extremely": 2.0,
    "super": 1.5,
    "too": 1.3,
    "absolutely": 1.8,
    "quite": 1.2,
    "totally": 1.5,
    "slightly": 0.5,
    "somewhat": 0.7,
    "bit": 0.6,
}


def lexicon_polarity(text: str, lexicon: dict[str, float] | None = None) -> float:
    """Summed polarity of ``text``'s lexicon words, negated after a negator, scaled by intensifiers.

    A negator ("not", "never", "didn't", ...) flips the next three tokens' polarity (and
    halves it: "not bad" is mildly positive); "but" resets what came before, since the
    clause after it usually carries the verdict. 0.0 means no opinion words.

    >>> lexicon_polarity("good"), lexicon_polarity("not good"), lexicon_polarity("very good")
    (1.5, -0.75, 2.25)
    >>> lexicon_polarity("slow delivery but great quality") > 0
    True
    """
    lex = ENGLISH_LEXICON if lexicon is None else lexicon
    total = 0.0
    negate_left = 0
    scale = 1.0
    for tok in tokenize(text):
        if tok == "but":
            total, negate_left, scale = 0.0, 0, 1.0
            continue
        if tok in NEGATORS:
            negate_left = 3
            if tok in lex:
                total += lex[tok] * scale
            continue
        if tok in INTENSIFIERS:
            scale *= INTENSIFIERS[tok]
            continue
        if tok in lex:
            v = lex[tok] * scale
            total += -0.5 * v if negate_left > 0 else v
            scale = 1.0
        if negate_left:
            negate_left -= 1
        if tok in {".", "!", "?", ";"}:
            negate_left, scale = 0, 1.0
    return total


def lexicon_proba(text: str, slope: float = 1.2) -> float:
    """P(positive) from :func:`lexicon_polarity` through a logistic curve (0.5 when no opinion word)."""
    return 1.0 / (1.0 + math.exp(-slope * lexicon_polarity(text)))


def sentiment_model(r: float = 0.3, proba_scale: float = 4.0, **feature_params: Any) -> TextLearner:
    """Online binary sentiment learner: ``TextFeatures(**feature_params) | AROWClassifier(top_k=1)``.

    Labels are whatever the caller uses (``True``/``False`` in :class:`SentimentAnalyzer`).
    """
    pipeline = compose.Pipeline(
        TextFeatures(**feature_params), AROWClassifier(r=r, top_k=1, proba_scale=proba_scale)
    )
    return cast(TextLearner, pipeline)


@dataclass(frozen=True)
class SentimentResult:
    """One text's sentiment: ``p_positive`` in [0, 1], the label, the language and who answered."""

    p_positive: float
    language: str
    source: str  # "online", "model", "lexicon" or "prior"

    @property
    def label(self) -> str:
        """``"positive"`` when ``p_positive >= 0.5``, else ``"negative"``."""
        return "positive" if self.p_positive >= 0.5 else "negative"


@dataclass
class SentimentAnalyzer:
    """Route each text to the best sentiment scorer for its language (see the module docstring).

    Parameters
    ----------
    model
        Offline scorer ``text -> P(positive)`` (e.g. an ONNX classifier), or None.
    model_languages
        Languages ``model`` was trained on.
    min_online
        Labelled examples of a language the online model needs before it answers for it.
    online
        The online learner (:func:`sentiment_model` by default).
    """

    model: Callable[[str], float] | None = None
    model_languages: frozenset[str] = frozenset({"zh"})
    min_online: int = 500
    online: Any = field(default_factory=sentiment_model)
    seen: dict[str, int] = field(default_factory=dict)

    def learn_one(self, text: str, positive: bool) -> None:
        """Learn one labelled text (e.g. a review with its star rating mapped to a label)."""
        lang = detect_language(text)
        self.seen[lang] = self.seen.get(lang, 0) + 1
        self.online.learn_one(text, bool(positive))

    def analyze(self, text: str) -> SentimentResult:
        """Sentiment of one text."""
        lang = detect_language(text)
        if self.seen.get(lang, 0) >= self.min_online:
            proba = self.online.predict_proba_one(text)
            if proba:
                return SentimentResult(float(proba.get(True, 0.0)), lang, "online")
        if self.model is not None and lang in self.model_languages:
            return SentimentResult(float(self.model(text)), lang, "model")
        if lang == "en":
            return SentimentResult(lexicon_proba(text), lang, "lexicon")
        return SentimentResult(0.5, lang, "prior")

    def analyze_many(self, texts: Iterable[str]) -> list[SentimentResult]:
        """:meth:`analyze` of each text."""
        return [self.analyze(t) for t in texts]
