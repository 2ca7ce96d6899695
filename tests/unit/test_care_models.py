"""Customer-care and CRM models on generated data: text features, intent, sentiment, ONNX, BG/NBD, RFM."""

from __future__ import annotations

import datetime as dt
import math
import warnings

import numpy as np
import pytest

from online_models.crm import (
    BGNBD,
    DAY,
    WEEK,
    CustomerState,
    RFMScorer,
    crm_signals,
    rfm_segment,
    simulate_bgnbd,
)
from online_models.intent import AROWClassifier, TextFeatures, intent_model, predict_with_confidence
from online_models.sentiment import SentimentAnalyzer, lexicon_polarity, sentiment_model
from online_models.text import (
    bow_features,
    bucket,
    detect_language,
    encode_bow,
    encode_subwords,
    normalize,
    subwords,
    tokenize,
)

# -- synthetic intents ----------------------------------------------------------------------------

INTENTS = {
    "card_arrival": ["card", "arrive", "delivery", "mail", "post"],
    "refund": ["refund", "money", "back", "return", "reimburse"],
    "top_up": ["top", "up", "topup", "add", "funds"],
    "pin": ["pin", "code", "forgot", "reset", "blocked"],
    "exchange": ["exchange", "rate", "currency", "euro", "dollar"],
}
FILLER = ["i", "my", "the", "a", "please", "can", "you", "how", "do", "when", "is", "it", "why", "what"]


def make_messages(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Messages of 2-3 keywords of their intent among 3-6 filler words."""
    rng = np.random.default_rng(seed)
    names = sorted(INTENTS)
    texts, labels = [], []
    for _ in range(n):
        label = names[int(rng.integers(len(names)))]
        words = list(rng.choice(INTENTS[label], size=int(rng.integers(2, 4)), replace=False))
        words += list(rng.choice(FILLER, size=int(rng.integers(3, 7))))
        rng.shuffle(words)
        texts.append(" ".join(words) + rng.choice(["?", "!", ""]))
        labels.append(label)
    return texts, labels


# -- text features --------------------------------------------------------------------------------


def test_tokenize_normalises_case_digits_and_splits_cjk() -> None:
    assert normalize("Card 1234") == "card 0000"
    assert tokenize("Where's my CARD?!") == ["where's", "my", "card", "?", "!"]
    assert tokenize("外卖很快OK") == ["外", "卖", "很", "快", "ok"]
    assert tokenize("") == []


def test_bow_features_and_hash_are_stable() -> None:
    feats = bow_features("top up my card")
    assert {"w:top", "b:top up", "t:top up my", "k:top my", " ca", "card "} <= set(feats)
    assert bow_features("top up my card") == feats  # deterministic
    assert bucket("w:card") == bucket("w:card") < 2**20
    assert bucket("w:card", 2**8) < 2**8
    assert subwords("a") == ["w:a"]


def test_encode_pads_with_zero_weight() -> None:
    ids, counts = encode_bow(["top up", "top up my card please now"])
    assert ids.shape == counts.shape and ids.shape[0] == 2
    assert (counts[0] > 0).sum() < (counts[1] > 0).sum()
    assert (counts[0][(counts[0] > 0).sum() :] == 0).all()
    sids, mask = encode_subwords(["", "card arrived"])
    assert sids.shape == mask.shape and sids.shape[:2] == (2, 2)
    # an empty text is one "<empty>" token, then padding
    assert mask[0, 0].sum() == len(subwords("<empty>")) and mask[0, 1].sum() == 0


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("送餐很快，味道很好", "zh"),
        ("我想买iPhone", "zh"),
        ("The delivery was fast and the food tasty", "en"),
        ("I ordered 北京烤鸭 twice", "en"),
        ("Доставка была быстрой", "other"),
        ("12345 !!!", "unknown"),
        ("", "unknown"),
    ],
)
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


# -- online intent ----------------------------------------------------------------------------------


def test_online_intent_learns_a_separable_set_in_one_pass() -> None:
    train_x, train_y = make_messages(600, seed=1)
    test_x, test_y = make_messages(300, seed=2)
    model = intent_model()
    for text, label in zip(train_x, train_y, strict=True):
        model.learn_one(text, label)
    preds = [model.predict_one(t) for t in test_x]
    assert np.mean([p == y for p, y in zip(preds, test_y, strict=True)]) >= 0.97
    proba = model.predict_proba_one(test_x[0])
    assert set(proba) == set(INTENTS) and math.isclose(sum(proba.values()), 1.0, rel_tol=1e-9)
    # Confidence (for the out-of-scope detector): in-scope messages score above gibberish.
    in_scope = np.mean([predict_with_confidence(model, t)[1] for t in test_x[:50]])
    out_scope = np.mean(
        [predict_with_confidence(model, t)[1] for t in ["zxq wub plorf", "lorem ipsum dolor"]]
    )
    assert in_scope > 0.8 > out_scope


def test_online_intent_before_learning_and_unseen_features() -> None:
    model = intent_model()
    assert predict_with_confidence(model, "anything") == (None, 0.0)
    model.learn_one("refund my money", "refund")
    assert model.predict_one("totally unseen words") == "refund"  # the only class


def test_text_features_idf_downweights_common_features() -> None:
    tf = TextFeatures(char_max=0, skip=0, trigrams=False)
    for text in ["the card", "the pin", "the refund", "the top"]:
        tf.learn_one(text)
    x = tf.transform_one("the card")
    assert math.isclose(sum(v * v for v in x.values()), 1.0)
    assert x[bucket("w:the")] < x[bucket("w:card")]


def test_arow_passes_river_estimator_checks() -> None:
    from river import checks

    for check in checks.yield_checks(AROWClassifier()):
        check(AROWClassifier())


# -- offline text ensemble and ONNX -------------------------------------------------------------------


def test_offline_ensemble_exports_to_onnx_that_equals_torch(tmp_path) -> None:
    from offline_training.text import (
        MemberConfig,
        TextTrainConfig,
        export_onnx,
        predict_proba_torch,
        register_text_model,
        train_text_classifier,
    )
    from serving.care_models import OnnxTextClassifier
    from serving.registry import ModelRegistry

    train_x, train_y = make_messages(300, seed=3)
    test_x, test_y = make_messages(100, seed=4)
    cfg = TextTrainConfig(
        members=(
            MemberConfig("bow", hidden=32, epochs=4, lr=0.01, seed=0),
            MemberConfig("cnn", hidden=16, emb_dim=16, epochs=4, lr=0.01, seed=0),
        ),
        n_buckets=2**14,
        threads=1,
    )
    model = train_text_classifier(train_x, train_y, cfg)
    assert model.labels == sorted(INTENTS)
    path = export_onnx(model, tmp_path / "intent.onnx")
    p_torch = predict_proba_torch(model, [*test_x, "", "外卖很快"])
    clf = OnnxTextClassifier.from_path(path)
    p_onnx = clf.predict_proba([*test_x, "", "外卖很快"])
    assert p_onnx.shape == (102, len(INTENTS))
    assert np.abs(p_onnx - p_torch).max() < 1e-5
    assert np.allclose(p_onnx.sum(1), 1.0, atol=1e-5)
    acc = np.mean(
        [label == y for (label, _), y in zip(clf.predict_with_confidence(test_x), test_y, strict=True)]
    )
    assert acc >= 0.95
    # Registry round trip: verified bytes, labels and feature settings from the ONNX metadata.
    reg = ModelRegistry(tmp_path / "registry")
    mv = register_text_model(reg, "intent", model, path, metrics={"accuracy": float(acc)})
    served = OnnxTextClassifier.from_registry(reg, "intent")
    assert served.version == mv and served.labels == model.labels
    assert served.predict_one(test_x[0]) == clf.predict_one(test_x[0])
    assert served.features["n_buckets"] == 2**14


def test_onnx_loader_rejects_foreign_models(tmp_path) -> None:
    import torch

    from serving.care_models import OnnxTextClassifier

    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), str(path), dynamo=False)
    with pytest.raises(ValueError, match="re-export it"):
        OnnxTextClassifier.from_path(path)


# -- sentiment --------------------------------------------------------------------------------------------


def test_lexicon_polarity_handles_negation_and_intensifiers() -> None:
    assert lexicon_polarity("great food, fast delivery") > 0
    assert lexicon_polarity("terrible, the parcel arrived broken") < 0
    assert lexicon_polarity("not good") < 0 < lexicon_polarity("not bad")
    assert lexicon_polarity("very good") > lexicon_polarity("good")
    assert lexicon_polarity("the parcel is a box") == 0.0


def test_sentiment_analyzer_routes_by_language_and_learns_online() -> None:
    zh_model_calls: list[str] = []

    def zh_model(text: str) -> float:
        zh_model_calls.append(text)
        return 0.9

    an = SentimentAnalyzer(model=zh_model, min_online=20)
    assert an.analyze("味道不错").source == "model" and zh_model_calls == ["味道不错"]
    assert an.analyze("awful and late").source == "lexicon"
    assert an.analyze("awful and late").label == "negative"
    assert an.analyze("Sehr gut").source == "lexicon"  # Latin script counts as "en"
    assert an.analyze("Очень хорошо").source == "prior"
    rng = np.random.default_rng(0)
    pos, neg = ["lovely", "superb", "tasty", "quick"], ["soggy", "rude", "cold", "late"]
    for _ in range(40):
        good = bool(rng.integers(2))
        words = [*rng.choice(pos if good else neg, 2), "the", "order", "was"]
        an.learn_one(" ".join(words), good)
    result = an.analyze("the order was soggy and cold")
    assert (result.source, result.label) == ("online", "negative")
    assert an.analyze("superb and tasty").p_positive > 0.5


def test_online_sentiment_learns_chinese_characters() -> None:
    model = sentiment_model()
    data = [("很好吃", True), ("太难吃了", False), ("送餐很快", True), ("送餐太慢", False)] * 5
    for text, label in data:
        model.learn_one(text, label)
    assert model.predict_one("好吃") is True
    assert model.predict_one("太慢了") is False


# -- CRM ------------------------------------------------------------------------------------------


def test_bgnbd_reproduces_the_paper_example() -> None:
    m = BGNBD(r=0.243, alpha=4.414, a=0.793, b=2.426)
    assert float(m.expected_purchases(39, 2, 30.43, 38.86)) == pytest.approx(1.226, abs=5e-4)
    assert float(m.p_alive(0, 0.0, 20.0)) == 1.0
    assert float(m.churn_risk(3, 5.0, 30.0)) == pytest.approx(1.0 - float(m.p_alive(3, 5.0, 30.0)))


@pytest.fixture(scope="module")
def simulated() -> tuple[np.ndarray, np.ndarray, np.ndarray, BGNBD]:
    rng = np.random.default_rng(7)
    x, t_x, T = simulate_bgnbd(4000, r=0.6, alpha=5.0, a=1.2, b=3.0, T=40.0, rng=rng)
    return x, t_x, T, BGNBD().fit(x, t_x, T)


def test_bgnbd_fit_recovers_simulated_population(simulated) -> None:
    x, t_x, T, fitted = simulated
    truth = BGNBD(r=0.6, alpha=5.0, a=1.2, b=3.0)
    assert fitted.log_likelihood(x, t_x, T) >= truth.log_likelihood(x, t_x, T) - 1e-6  # it is the MLE
    assert fitted.r == pytest.approx(0.6, rel=0.3)
    assert fitted.alpha == pytest.approx(5.0, rel=0.4)
    assert float(fitted.expected_purchases_new(40.0)) == pytest.approx(float(x.mean()), rel=0.05)
    roundtrip = BGNBD.from_dict(fitted.to_dict())
    assert roundtrip.params == fitted.params


def test_bgnbd_predictions_behave_sensibly(simulated) -> None:
    m = simulated[3]
    gaps = np.array([0.0, 5.0, 15.0, 30.0])  # weeks since the last purchase, same x and T
    alive = m.p_alive(5, 40.0 - gaps, 40.0)
    assert (np.diff(alive) < 0).all() and alive[0] > 0.8 and alive[-1] < 0.05
    freq = m.expected_purchases(10.0, np.array([1, 3, 6, 12]), 39.0, 40.0)
    assert (np.diff(freq) > 0).all()
    assert (np.diff(m.expected_purchases(np.array([1.0, 5.0, 20.0]), 3, 30.0, 40.0)) > 0).all()


def test_bgnbd_fit_rejects_bad_summaries() -> None:
    with pytest.raises(ValueError, match="t_x <= T"):
        BGNBD().fit([1], [5.0], [4.0])


def test_customer_state_updates_and_summary() -> None:
    s = CustomerState()
    t0 = dt.datetime(2025, 3, 1, 10, tzinfo=dt.UTC)
    s.update(t0, 10.0)
    s.update(t0 + dt.timedelta(hours=5), 20.0)  # same day: same occasion
    s.update(t0.timestamp() + 14 * DAY, 30.0)  # seconds work too
    s.update(dt.date(2025, 3, 8), 40.0)  # a late order on a new day still counts
    assert (s.frequency, s.n_orders, s.total_value, s.mean_value) == (2, 4, 100.0, 25.0)
    x, t_x, T = s.summary(t0 + dt.timedelta(days=28))
    assert (x, t_x, T) == (2, pytest.approx(2.0), pytest.approx(4.0))
    assert s.days_since_last(t0 + dt.timedelta(days=20)) == pytest.approx(6.0)
    assert CustomerState().days_since_last(0.0) == math.inf


def test_rfm_scores_and_segments() -> None:
    scorer = RFMScorer().fit(range(1, 101), range(1, 101), range(1, 101))
    assert scorer.score(1, 100, 100) == (5, 5, 5)
    assert scorer.score(100, 1, 1) == (1, 1, 1)
    assert rfm_segment(5, 1, n_orders=1) == "new"
    assert rfm_segment(5, 5) == "champions"
    assert rfm_segment(3, 3) == "loyal"
    assert rfm_segment(2, 4) == "at_risk"
    assert rfm_segment(1, 2) == "hibernating"
    assert rfm_segment(3, 1) == "needs_attention"
    with pytest.raises(ValueError, match=r"1\.\.5"):
        rfm_segment(0, 3)


def test_crm_signals_for_a_lapsing_customer(simulated) -> None:
    m = simulated[3]
    s = CustomerState()
    for week in range(0, 20, 2):
        s.update(week * WEEK, 50.0)
    scorer = RFMScorer(recency_edges=[14, 30, 60, 120], frequency_edges=[1, 2, 4, 8])
    fresh = crm_signals(s, m, scorer, now=20 * WEEK)
    lapsed = crm_signals(s, m, scorer, now=60 * WEEK)
    assert fresh.segment == "champions" and lapsed.segment == "at_risk"
    assert lapsed.churn_risk > fresh.churn_risk
    assert lapsed.expected_purchases < fresh.expected_purchases
    assert fresh.p_alive + fresh.churn_risk == pytest.approx(1.0)
