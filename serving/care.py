"""Customer care: each support message → language, sentiment, intent → a routing decision.

* **Language** by Unicode script (:func:`online_models.text.detect_language`).
* **Intent**: the online model (:func:`online_models.intent.intent_model`,
  learning from every agent-labelled message as it arrives) blended with the
  offline model served through onnxruntime when one is registered (an
  average of their probabilities, weighted by ``online_weight``).
* **Sentiment** in ``[-1, 1]`` from the sentiment model.
* **FAQ retrieval**: the knowledge base (``infra/care/faq.json``) indexed by
  TF-IDF over the same hashed n-grams; cosine similarity to its example
  questions.

Routing (:meth:`CareRouter.route`):

1. **Out of scope**: the intent model is unsure (confidence below
   ``out_of_scope_confidence``) and no FAQ question is close, or the model
   says ``out_of_scope`` (a label agents give): the message goes to the
   ``general`` queue with the knowledge base's fallback text, not forced into
   an intent.
2. **Auto-answer**: the intent is confident (``auto_answer_confidence``), the
   closest FAQ entry answers that intent (similarity at least
   ``faq_min_similarity``), and the customer is not angry (sentiment above
   ``angry_below``): the FAQ answer, in the message's language, goes back.
3. **Escalate** to the human queue of the intent, with a priority from 3
   raised by negative sentiment (up to +3), customer value (VIP or champions
   +2, high lifetime value +1, from the CRM features in Redis), churn risk
   (+1) and the phone channel (+1), capped at 9.

Examples
--------
>>> faq = FaqIndex.from_dict({"fallback": {"en": "We will be in touch."}, "entries": [
...     {"id": "f1", "intent": "refund", "questions": ["I want a refund"],
...      "answer": {"en": "Use Orders > Return."}}]})
>>> entry, sim = faq.search("how do I get a refund for my order")
>>> entry.id, sim > 0.2
('f1', True)
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from online_models.intent import predict_with_confidence
from online_models.text import bow_features, bucket, detect_language
from schemas.events import RoutingDecision, SupportMessage

OUT_OF_SCOPE = "out_of_scope"
DEFAULT_FAQ = Path(__file__).resolve().parents[1] / "infra" / "care" / "faq.json"


@dataclass(frozen=True)
class FaqEntry:
    id: str
    intent: str
    questions: tuple[str, ...]
    answer: Mapping[str, str]

    def answer_in(self, lang: str) -> str:
        return self.answer.get(lang) or self.answer.get("en") or next(iter(self.answer.values()), "")


def _vector(text: str, idf: Mapping[int, float] | None = None) -> dict[int, float]:
    counts = Counter(bucket(f) for f in bow_features(text))
    vec = {k: (1.0 + math.log(c)) * (idf.get(k, 1.0) if idf else 1.0) for k, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in vec.values())) or 1.0
    return {k: v / norm for k, v in vec.items()}


class FaqIndex:
    """TF-IDF (hashed n-grams, sublinear TF) over the FAQ's example questions; cosine retrieval."""

    def __init__(self, entries: list[FaqEntry], fallback: Mapping[str, str] | None = None) -> None:
        if not entries:
            raise ValueError("the FAQ knowledge base has no entries")
        self.entries = entries
        self.fallback = dict(fallback or {})
        docs = [(e, q) for e in entries for q in e.questions]
        df: Counter[int] = Counter()
        for _, q in docs:
            df.update({bucket(f) for f in bow_features(q)})
        n = len(docs)
        self.idf = {k: math.log((1 + n) / (1 + c)) + 1.0 for k, c in df.items()}
        self._docs = [(e, _vector(q, self.idf)) for e, q in docs]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> FaqIndex:
        entries = [
            FaqEntry(str(e["id"]), str(e["intent"]), tuple(e["questions"]), dict(e["answer"]))
            for e in doc.get("entries", [])
        ]
        return cls(entries, doc.get("fallback"))

    @classmethod
    def load(cls, path: str | Path = DEFAULT_FAQ) -> FaqIndex:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def search(self, text: str) -> tuple[FaqEntry, float]:
        """The entry with the example question most similar to ``text``, and that similarity."""
        q = _vector(text, self.idf)
        best, best_sim = self._docs[0][0], -1.0
        for entry, vec in self._docs:
            small, large = (q, vec) if len(q) < len(vec) else (vec, q)
            sim = sum(v * large.get(k, 0.0) for k, v in small.items())
            if sim > best_sim:
                best, best_sim = entry, sim
        return best, max(best_sim, 0.0)

    def fallback_in(self, lang: str) -> str:
        return self.fallback.get(lang) or self.fallback.get("en", "")


@dataclass
class CareConfig:
    auto_answer_confidence: float = 0.6
    #: Character n-grams make unrelated texts share some features: on the shop's FAQ, off-topic
    #: questions scored 0.17-0.26 and on-topic ones 0.5-0.7.
    faq_min_similarity: float = 0.4
    out_of_scope_confidence: float = 0.35
    angry_below: float = -0.5
    online_weight: float = 0.5
    high_clv: float = 500.0


@dataclass
class Routed:
    """A decision and what it was based on (for metrics and tests)."""

    decision: RoutingDecision
    probabilities: dict[str, float] = field(default_factory=dict)


class CareRouter:
    """Routes support messages and learns intents from labelled ones (see the module docstring)."""

    def __init__(
        self,
        online: Any,
        faq: FaqIndex,
        sentiment: Callable[[str], float],
        offline: Any = None,
        config: CareConfig | None = None,
    ) -> None:
        self.online = online
        self.faq = faq
        self.sentiment = sentiment
        self.offline = offline
        self.config = config or CareConfig()
        self.labelled = 0
        self.correct = 0

    def intent_probabilities(self, text: str) -> dict[str, float]:
        """The blended intent distribution (online alone until an offline model is served)."""
        online = {str(k): float(v) for k, v in (self.online.predict_proba_one(text) or {}).items()}
        if self.offline is None:
            return online
        offline = {str(k): float(v) for k, v in self.offline.predict_proba_one(text).items()}
        w = self.config.online_weight if online else 0.0
        labels = set(online) | set(offline)
        return {k: w * online.get(k, 0.0) + (1 - w) * float(offline.get(k, 0.0)) for k in labels}

    def learn(self, msg: SupportMessage) -> bool | None:
        """Learn a labelled message (test, then train); True when the model already got it right."""
        if not msg.intent:
            return None
        label, _ = predict_with_confidence(self.online, msg.text)
        hit = label == msg.intent
        self.labelled += 1
        self.correct += int(hit)
        self.online.learn_one(msg.text, msg.intent)
        return hit

    @property
    def accuracy(self) -> float | None:
        """Prequential accuracy of the online intent model over the labelled messages seen."""
        return self.correct / self.labelled if self.labelled else None

    def route(
        self, msg: SupportMessage, customer: Mapping[str, str] | None = None, now: float | None = None
    ) -> Routed:
        cfg = self.config
        text = msg.text
        lang = detect_language(text)
        probs = self.intent_probabilities(text)
        intent, conf = max(probs.items(), key=lambda kv: kv[1]) if probs else (OUT_OF_SCOPE, 0.0)
        sentiment = max(-1.0, min(1.0, float(self.sentiment(text))))
        entry, sim = self.faq.search(text)
        customer = customer or {}
        answer = faq_id = None
        if intent == OUT_OF_SCOPE or (conf < cfg.out_of_scope_confidence and sim < cfg.faq_min_similarity):
            queue, escalate, reason = "general", True, "out_of_scope"
            intent, answer = OUT_OF_SCOPE, self.faq.fallback_in(lang)
            priority = 1
        elif (
            conf >= cfg.auto_answer_confidence
            and entry.intent == intent
            and sim >= cfg.faq_min_similarity
            and sentiment > cfg.angry_below
        ):
            queue, escalate, reason = "auto", False, f"faq:{entry.id}"
            answer, faq_id, priority = entry.answer_in(lang), entry.id, 0
        else:
            queue, escalate = f"human:{intent}", True
            priority, why = self.priority(sentiment, customer, msg.channel)
            reason = "escalated: " + (", ".join(why) or "not confident enough to answer")
        decision = RoutingDecision(
            message_id=msg.message_id,
            user_id=msg.user_id,
            queue=queue,
            intent=intent,
            intent_confidence=round(min(max(conf, 0.0), 1.0), 4),
            sentiment=round(sentiment, 4),
            priority=priority,
            escalate=escalate,
            ts=now if now is not None else time.time(),
            lang=lang,
            answer=answer,
            faq_id=faq_id,
            reason=reason,
            conversation_id=msg.conversation_id,
        )
        return Routed(decision, probs)

    def priority(self, sentiment: float, customer: Mapping[str, str], channel: str) -> tuple[int, list[str]]:
        """Human-queue priority (0-9) and why."""
        p, why = 3, []
        if sentiment < 0:
            bump = min(3, math.ceil(-sentiment * 3))
            p += bump
            why.append(f"negative sentiment +{bump}")
        segment = customer.get("segment", "")
        if segment in ("vip", "champions"):
            p += 2
            why.append(f"{segment} customer +2")
        else:
            try:
                if float(customer.get("clv", 0.0)) >= self.config.high_clv:
                    p += 1
                    why.append("high lifetime value +1")
            except ValueError:
                pass
        try:
            if float(customer.get("churn_risk", 0.0)) >= 0.5:
                p += 1
                why.append("churn risk +1")
        except ValueError:
            pass
        if channel == "phone":
            p += 1
            why.append("phone +1")
        return min(p, 9), why
