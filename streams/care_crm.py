"""Customer care and CRM agents: orders → CRM state; reviews → sentiment; support messages → routing.

Partitioning: orders, reviews and support messages are all keyed by user id
and have the same partition count, so the ``crm-state`` table entry of a
customer lives in the worker that reads all three for that customer: the
review agent reads it to tell a recent buyer, without a network call.

* ``crm`` (orders): :class:`serving.crm.CrmProcessor` updates the customer,
  writes the profile to Redis (segment, CLV, churn risk, RFM), sends CRM
  signals on change, and re-scores a partition's customers once per
  ``crm_sweep_s`` of event time so that churn risk rises for the silent.
* ``reviews``: the sentiment analyser scores the review (and learns from its
  star rating: 4-5 positive, 1-2 negative); item and customer profiles get
  running sentiment sums; a negative review from a recent buyer is a signal.
* ``care``: a message an agent labelled teaches the online intent model
  (prequential accuracy in ``shopstream_model_quality{model="intent"}``); any
  other message is routed (:class:`serving.care.CareRouter`) with the
  customer's CRM profile from Redis, to ``care.routing.v1`` keyed by
  conversation (or user).

Invalid events go to their topic's dead-letter topic, as everywhere.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import faust
from mode import Service

from online_models.intent import intent_model
from online_models.sentiment import SentimentAnalyzer
from schemas.codec import Codec, encode
from schemas.events import Order, Review, SupportMessage
from serving.care import DEFAULT_FAQ, CareRouter, FaqIndex
from serving.care_models import OnnxTextClassifier
from serving.crm import CrmProcessor
from serving.ctr import RegistryWatcher
from serving.registry import ModelRegistry

if TYPE_CHECKING:
    from streams.app import Runtime


class IntentQuality:
    """Prequential accuracy of the online intent model: overall, first labels, last ``window``."""

    def __init__(self, window: int = 200, first: int = 30) -> None:
        self.window = window
        self.first_n = first
        self.hits: list[bool] = []
        self.first: list[bool] = []
        self.total = 0
        self.correct = 0

    def add(self, hit: bool) -> None:
        self.total += 1
        self.correct += int(hit)
        self.hits.append(hit)
        del self.hits[: -self.window]
        if len(self.first) < self.first_n:
            self.first.append(hit)

    def status(self) -> dict[str, Any]:
        return {
            "labels": self.total,
            "accuracy": self.correct / self.total if self.total else None,
            "first_accuracy": sum(self.first) / len(self.first) if self.first else None,
            "recent_accuracy": sum(self.hits) / len(self.hits) if self.hits else None,
        }


class TextModelService(Service):
    """Serves the registry's production intent and sentiment models (checked every ``interval`` s)."""

    def __init__(
        self,
        router: CareRouter,
        sentiment: SentimentAnalyzer,
        watchers: dict[str, RegistryWatcher],
        interval: float,
        **kwargs: Any,
    ) -> None:
        self.router = router
        self.sentiment = sentiment
        self.watchers = watchers
        self.interval = interval
        super().__init__(**kwargs)

    async def check(self) -> None:
        if await self.watchers["intent"].check():
            self.router.offline = self.watchers["intent"].model
        if await self.watchers["sentiment"].check():
            model = self.watchers["sentiment"].model
            assert model is not None
            positive = "positive" if "positive" in model.labels else model.labels[-1]
            self.sentiment.model = lambda text: float(model.predict_proba_one(text).get(positive, 0.5))

    async def on_start(self) -> None:
        await self.check()

    @Service.task
    async def _poll(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            await self.check()


def care_crm_agents(app: faust.App, runtime: Runtime, orders_topic: Any) -> None:
    """Register the CRM, review and care agents on ``app`` (see the module docstring)."""
    s = runtime.settings
    topics = runtime.topics
    m = runtime.metrics
    crm = CrmProcessor(sweep_s=s.crm_sweep_s)
    sentiment = SentimentAnalyzer()
    router = CareRouter(intent_model(), FaqIndex.load(s.care_faq or DEFAULT_FAQ), lambda t: 0.0)
    router.sentiment = lambda text: 2.0 * sentiment.analyze(text).p_positive - 1.0
    quality = IntentQuality()
    # Offline text models (ONNX, registered by offline_training.text), hot-swapped when promoted.
    registry = ModelRegistry(s.model_dir)

    def load_text_model(mv: Any, reg: ModelRegistry) -> OnnxTextClassifier:
        return OnnxTextClassifier.from_registry(reg, mv.name, mv.version)

    watchers = {
        "intent": RegistryWatcher(registry, s.intent_model, load_text_model, m),
        "sentiment": RegistryWatcher(registry, s.sentiment_model, load_text_model, m),
    }
    app.service(TextModelService(router, sentiment, watchers, s.model_poll_s))  # type: ignore[arg-type]
    runtime.extra.update(
        crm=crm, sentiment=sentiment, care_router=router, intent_quality=quality, text_models=watchers
    )
    state = app.Table("crm-state", default=None, partitions=s.partitions)
    runtime.extra["crm_state"] = state
    order_codec: Codec[Order] = Codec(Order, s.max_event_bytes)
    review_codec: Codec[Review] = Codec(Review, s.max_event_bytes)
    care_codec: Codec[SupportMessage] = Codec(SupportMessage, s.max_event_bytes)
    signals_topic = topics.crm_signals
    out_signals = m.events_out.labels(topic=signals_topic)
    out_routing = m.events_out.labels(topic=topics.care_routing)
    in_reviews = m.events_in.labels(topic=topics.reviews)
    in_care = m.events_in.labels(topic=topics.care_messages)
    crm_time = m.processing.labels(agent="crm")
    review_time = m.processing.labels(agent="reviews")
    care_time = m.processing.labels(agent="care")

    async def send_signals(signals: list[Any]) -> None:
        for sig in signals:
            await runtime.publish(signals_topic, sig.user_id.encode(), encode(sig), None)
            out_signals.inc()

    async def sweep(partition: int, now: float) -> None:
        """Re-score this partition's customers at event time ``now`` (churn rises with silence)."""
        for user, st in list(state.items()):
            if st is None or st.get("p") != partition:
                continue
            st = dict(st)
            features, signals = crm.score(st, now, user)
            if signals:
                state[user] = st
                runtime.features.update("user", user, set_=features)
                await send_signals(signals)

    @app.agent(orders_topic, name="crm")
    async def crm_agent(stream: faust.StreamT) -> None:
        """Orders → the customer's CRM state, Redis profile and CRM signals."""
        dead_letters = runtime.extra.get("orders_dead_lettered_by") == "care_crm"
        async for event in stream.events():
            t0 = time.perf_counter()
            order = await runtime.dlq.decode_shared(order_codec, event.message, dead_letters)
            if order is None or order.status != "placed":
                continue  # bad orders are dead-lettered once, by the first agent group that reads them
            part = event.message.partition
            user = order.user_id
            st = dict(state.get(user) or crm.new_state(part))
            value = sum(line.qty * line.unit_price for line in order.lines)
            features, signals = crm.on_order(st, order.ts, value, order.ts, user)
            state[user] = st
            runtime.features.update("user", user, set_=features)
            await send_signals(signals)
            if crm.due_sweep(part, order.ts):
                await sweep(part, order.ts)
            crm_time.observe(time.perf_counter() - t0)

    reviews_topic = app.topic(topics.reviews, partitions=s.partitions, value_serializer="raw")

    @app.agent(reviews_topic, name="reviews")
    async def reviews_agent(stream: faust.StreamT) -> None:
        """Reviews → sentiment → item and customer profiles; negative reviews of recent buyers → signals."""
        async for event in stream.events():
            t0 = time.perf_counter()
            in_reviews.inc()
            review = await runtime.dlq.decode(review_codec, event.message)
            if review is None:
                continue
            score = 2.0 * sentiment.analyze(review.text).p_positive - 1.0 if review.text else 0.0
            if review.text and review.rating != 3:
                sentiment.learn_one(review.text, review.rating >= 4)
            milli = round(1000 * score)
            runtime.features.update("item", review.sku, incr={"review_sentiment_milli": milli, "reviews": 1})
            runtime.features.update(
                "user", review.user_id, incr={"review_sentiment_milli": milli, "reviews": 1}
            )
            st = state.get(review.user_id)
            if st is not None:
                await send_signals(crm.on_review(st, score, review.ts, review.user_id, review.sku))
            review_time.observe(time.perf_counter() - t0)

    care_topic = app.topic(topics.care_messages, partitions=s.partitions, value_serializer="raw")
    routing = topics.care_routing

    @app.agent(care_topic, name="care")
    async def care_agent(stream: faust.StreamT) -> None:
        """Support messages → intent learning (labelled) or a routing decision (unlabelled)."""
        async for event in stream.events():
            t0 = time.perf_counter()
            in_care.inc()
            msg = await runtime.dlq.decode(care_codec, event.message)
            if msg is None:
                continue
            if msg.intent:
                hit = router.learn(msg)
                if hit is not None:
                    quality.add(hit)
                continue
            try:
                customer = await runtime.store.get("user", msg.user_id)
            except Exception:  # routing must not wait on a broken profile store
                customer = {}
            routed = router.route(msg, customer)
            key = (msg.conversation_id or msg.user_id).encode()
            await runtime.publish(routing, key, encode(routed.decision), None)
            out_routing.inc()
            care_time.observe(time.perf_counter() - t0)

    runtime.extra["care_agent"] = care_agent
