"""Event schemas: strict decoding, size limits, errors that name the field, and fuzzing."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.errors import SchemaError
from schemas.events import (
    AD_EVENT_CODEC,
    CLICK_CODEC,
    DEAD_LETTER_CODEC,
    INVENTORY_CODEC,
    ORDER_CODEC,
    RECOMMENDATION_CODEC,
    REVIEW_CODEC,
    SUPPORT_CODEC,
    AddToCart,
    Adjustment,
    Conversion,
    Order,
    RecItem,
    Recommendation,
    Search,
)
from schemas.topics import INPUTS, OUTPUTS, Topics, dlq_name

INPUT_CODECS = [CLICK_CODEC, ORDER_CODEC, AD_EVENT_CODEC, REVIEW_CODEC, SUPPORT_CODEC, INVENTORY_CODEC]

VALID = {
    "click": b'{"type":"add_to_cart","event_id":"e","ts":1,"user_id":"u","item_id":"i","qty":2}',
    "search": b'{"type":"search","event_id":"e","ts":1,"user_id":"u","query":"red shoes"}',
    "order": (
        b'{"type":"order","event_id":"e","ts":1,"order_id":"o","user_id":"u",'
        b'"lines":[{"sku":"s","qty":1,"unit_price":9.5,"currency":"EUR"}]}'
    ),
    "conversion": (
        b'{"type":"conversion","event_id":"e","ts":1,"request_id":"r","imp_id":"1","campaign_id":"c","value":3}'
    ),
    "adjust": b'{"type":"adjustment","event_id":"e","ts":1,"sku":"s","delta":-3}',
}


def test_valid_events_decode_to_their_types():
    assert isinstance(CLICK_CODEC.decode(VALID["click"]), AddToCart)
    assert isinstance(CLICK_CODEC.decode(VALID["search"]), Search)
    order = ORDER_CODEC.decode(VALID["order"])
    assert isinstance(order, Order) and order.lines[0].unit_price == 9.5 and order.status == "placed"
    assert isinstance(AD_EVENT_CODEC.decode(VALID["conversion"]), Conversion)
    adj = INVENTORY_CODEC.decode(VALID["adjust"])
    assert isinstance(adj, Adjustment) and adj.warehouse == "main"


def test_unknown_fields_are_ignored_but_known_ones_are_strict():
    ev = CLICK_CODEC.decode(VALID["click"].replace(b'"qty":2', b'"qty":2,"referrer":"x"'))
    assert isinstance(ev, AddToCart)
    with pytest.raises(SchemaError) as e:
        CLICK_CODEC.decode(VALID["click"].replace(b'"qty":2', b'"qty":"2"'))
    assert (e.value.reason, e.value.field) == ("wrong_type", "$.qty")


@pytest.mark.parametrize(
    ("data", "reason", "field"),
    [
        (b"", "empty", None),
        (b'{"type":"click"', "malformed_json", None),
        (b'{"type":"click","event_id":"e","ts":1,"user_id":"u"}', "missing_field", "$.item_id"),
        (b'{"type":"click","event_id":"","ts":1,"user_id":"u","item_id":"i"}', "constraint", "$.event_id"),
        (b'{"type":"click","event_id":"e","ts":-1,"user_id":"u","item_id":"i"}', "constraint", "$.ts"),
        (b'{"type":"fly","event_id":"e","ts":1}', "unknown_event_type", "$.type"),
        (b'{"type":"click","event_id":"e","ts":1,"user_id":"\xff","item_id":"i"}', "invalid_utf8", None),
        (b"[1,2]", "wrong_type", "$"),
    ],
)
def test_errors_name_the_reason_and_field(data, reason, field):
    with pytest.raises(SchemaError) as e:
        CLICK_CODEC.decode(data)
    assert e.value.reason == reason
    assert e.value.field == field
    assert reason in str(e.value)


def test_order_line_errors_point_into_the_list():
    bad = VALID["order"].replace(b'"currency":"EUR"', b'"currency":"euro"')
    with pytest.raises(SchemaError) as e:
        ORDER_CODEC.decode(bad)
    assert e.value.field == "$.lines[0].currency"


def test_size_limit():
    codec = Codec(Search, max_bytes=100)
    with pytest.raises(SchemaError) as e:
        codec.decode(b'{"type":"search","event_id":"e","ts":1,"user_id":"u","query":"' + b"x" * 200 + b'"}')
    assert e.value.reason == "too_large"


def test_outputs_round_trip():
    rec = Recommendation(
        event_id="e",
        user_id="u",
        items=[RecItem(item_id="i", score=0.5, reason="popular")],
        model="m",
        source_ts=1.0,
        generated_at=2.0,
    )
    assert RECOMMENDATION_CODEC.decode(RECOMMENDATION_CODEC.encode(rec)) == rec


def test_dead_letter_keeps_arbitrary_bytes():
    from schemas.events import DeadLetter

    dl = DeadLetter(
        source_topic="t",
        partition=0,
        offset=1,
        reason="invalid_utf8",
        error="x",
        field=None,
        original=b"\xff\x00{",
        key=None,
        ts=1.0,
    )
    assert DEAD_LETTER_CODEC.decode(msgspec.json.encode(dl)).original == b"\xff\x00{"


def test_topic_names_are_versioned_and_prefixed():
    assert all(t.rsplit(".", 1)[1].startswith("v") for t in INPUTS + OUTPUTS)
    t = Topics("x-")
    assert t.clicks == "x-shop.clicks.v1" and t.recommendations == "x-shop.recommendations.v1"
    assert dlq_name(t.orders) == "x-shop.orders.v1.dlq"
    with pytest.raises(AttributeError):
        _ = t.nonexistent


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_decoders_raise_only_schema_error_on_arbitrary_bytes(data):
    for codec in INPUT_CODECS:
        try:
            codec.decode(data)
        except SchemaError:
            pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {
        "type": st.sampled_from(
            ["view", "click", "add_to_cart", "search", "order", "impression", "receipt", "x"]
        )
    },
    optional={
        "event_id": json_values,
        "ts": json_values,
        "user_id": json_values,
        "item_id": json_values,
        "lines": json_values,
        "qty": json_values,
        "sku": json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(event_like)
def test_decoders_raise_only_schema_error_on_arbitrary_json(value):
    data = msgspec.json.encode(value)
    for codec in INPUT_CODECS:
        try:
            codec.decode(data)
        except SchemaError as e:
            assert e.reason in SchemaError.REASONS
