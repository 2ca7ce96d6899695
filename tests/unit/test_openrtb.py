"""OpenRTB 2.6 schemas: the IAB examples parse and round-trip, unknown fields survive,
and anything malformed is a :class:`SchemaError` naming the field.

The IAB examples are copies under ``tests/fixtures/openrtb/iab-2.6`` (see its
NOTICE). The bsm/openrtb test data in ``../shared`` is optional: those cases
are skipped where it is absent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import DEFAULT_MAX_BYTES
from schemas.errors import SchemaError
from schemas.openrtb import (
    BID_REQUEST_CODEC,
    BID_RESPONSE_CODEC,
    NBR,
    OPENRTB_VERSION,
    BidRequest,
    BidResponse,
    NoBidReason,
    OpenRTBCodec,
    no_bid,
    to_builtins,
    unknown_fields,
)

ROOT = Path(__file__).resolve().parents[2]
IAB_DIR = ROOT / "tests" / "fixtures" / "openrtb" / "iab-2.6"
BSM_DIR = ROOT.parent / "shared" / "datasets" / "openrtb" / "bsm-openrtb-testdata"

IAB_FILES = sorted(IAB_DIR.glob("*.json"))
SIMPLE_BANNER = IAB_DIR / "6.2.1_bidrequest_simplebanner.json"
VIDEO = IAB_DIR / "6.2.4_bidrequest_example4video.json"
RESPONSE = IAB_DIR / "6.3.1_bidresponse_ex1adservedwin.json"


def _load(path: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(path.read_bytes())
    return value


def _dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def _codec_for(name: str) -> tuple[OpenRTBCodec[Any], Any]:
    if "bidrequest" in name or name.startswith("breq."):
        return BID_REQUEST_CODEC, BidRequest
    return BID_RESPONSE_CODEC, BidResponse


# --- the IAB 2.6 examples ---------------------------------------------------------------


def test_all_nine_iab_examples_are_present() -> None:
    names = [p.name for p in IAB_FILES]
    assert len(names) == 9
    assert sum("_bidrequest_" in n for n in names) == 5
    assert sum("_bidresponse_" in n for n in names) == 4
    assert (IAB_DIR.parent / "NOTICE").read_text().count("CC-BY-3.0") >= 1


@pytest.mark.parametrize("path", IAB_FILES, ids=lambda p: p.stem)
def test_iab_example_parses_and_round_trips(path: Path) -> None:
    codec, type_ = _codec_for(path.name)
    data = path.read_bytes()
    obj = codec.decode(data)
    assert type(obj) is type_
    assert json.loads(codec.encode(obj)) == json.loads(data)
    assert to_builtins(obj) == json.loads(data)


def test_iab_simple_banner_fields() -> None:
    req = BID_REQUEST_CODEC.decode(SIMPLE_BANNER.read_bytes())
    assert req.id == "80ce30c53c16e6ede735f123ef6e32361bfc7b22"
    assert req.at == 1 and req.cur == ["USD"] and req.tmax is None
    imp = req.imp[0]
    assert imp.id == "1" and imp.bidfloor == 0.03
    assert imp.banner is not None and (imp.banner.w, imp.banner.h, imp.banner.pos) == (300, 250, 0)
    assert imp.video is None
    assert req.site is not None and req.site.publisher is not None
    assert req.site.publisher.id == "8953" and req.site.cat == ["IAB3-1"]
    assert req.app is None and req.user is not None and req.user.buyeruid is None


def test_iab_video_fields_and_its_nonstandard_key() -> None:
    req = BID_REQUEST_CODEC.decode(VIDEO.read_bytes())
    video = req.imp[0].video
    assert video is not None and video.mimes[1] == "video/mp4"
    assert video.companionad is not None and video.companionad[1].w == 728
    # the example says "apis" where Video has "api": kept as an unknown field
    assert video.api is None and unknown_fields(video) == {"apis": [1, 2]}
    assert req.site is not None and req.site.content is not None and req.site.content.episode == 23
    assert req.user is not None and req.user.data is not None
    segment = req.user.data[0].segment
    assert segment is not None and segment[1].name == "auto enthusiasts"


def test_iab_mobile_and_pmp_fields() -> None:
    mobile = BID_REQUEST_CODEC.decode((IAB_DIR / "6.2.3_bidrequest_example3mobile.json").read_bytes())
    assert mobile.app is not None and mobile.app.bundle == "12345" and mobile.site is None
    assert mobile.device is not None and mobile.device.devicetype == 1 and mobile.device.os == "iOS"
    pmp = BID_REQUEST_CODEC.decode((IAB_DIR / "6.2.5_bidrequest_pmpwdirectdeal.json").read_bytes())
    deals = pmp.imp[0].pmp.deals if pmp.imp[0].pmp else None
    assert deals is not None and [d.id for d in deals] == ["AB-Agency1-0001", "XY-Agency2-0001"]
    assert deals[1].bidfloor == 2.0 and deals[1].wseat == ["Agency2"]


def test_iab_response_fields() -> None:
    resp = BID_RESPONSE_CODEC.decode(RESPONSE.read_bytes())
    assert resp.id == "1234567890" and resp.cur == "USD" and resp.nbr is None
    assert resp.seatbid is not None
    bid = resp.seatbid[0].bid[0]
    assert (bid.id, bid.impid, bid.price) == ("1", "102", 9.43)
    assert bid.adomain == ["advertiserdomain.com"] and bid.attr == [1, 2, 3, 4, 5, 6, 7, 12]


# --- optional extra data: bsm/openrtb --------------------------------------------------

if BSM_DIR.is_dir():
    BSM_CASES: list[Any] = sorted([*BSM_DIR.glob("breq.*.json"), *BSM_DIR.glob("bres.*.json")])
else:
    BSM_CASES = [pytest.param(None, marks=pytest.mark.skip(reason=f"optional data absent: {BSM_DIR}"))]


@pytest.mark.parametrize("path", BSM_CASES, ids=lambda p: p.name if p else "absent")
def test_bsm_openrtb_testdata_parses_and_round_trips(path: Path) -> None:
    codec, type_ = _codec_for(path.name)
    data = path.read_bytes()
    obj = codec.decode(data)
    assert type(obj) is type_
    assert json.loads(codec.encode(obj)) == json.loads(data)


# --- unknown fields ----------------------------------------------------------------------


def _request_with_extras() -> dict[str, Any]:
    req = _load(SIMPLE_BANNER)
    req["x_top"] = {"nested": [1, 2.5, None, {"deep": True}]}
    req["imp"][0]["banner"]["x_banner"] = "kept"
    req["imp"][0]["banner"]["format"] = [{"w": 300, "h": 250}, {"w": 320, "h": 50, "x_fmt": 1}]
    req["device"] = {"ua": "UA", "geo": {"lat": 51.5, "lon": -0.12, "country": "GBR", "x_geo": [None]}}
    req["user"]["data"] = [{"id": "d", "segment": [{"id": "s", "x_seg": {"a": "b"}}]}]
    req["imp"][0]["x_imp"] = 10**30  # bigger than any machine int
    return req


def test_unknown_fields_survive_at_every_level() -> None:
    original = _request_with_extras()
    req = BID_REQUEST_CODEC.decode(_dumps(original))
    assert unknown_fields(req) == {"x_top": original["x_top"]}
    assert unknown_fields(req.imp[0]) == {"x_imp": 10**30}
    assert req.imp[0].banner is not None and unknown_fields(req.imp[0].banner) == {"x_banner": "kept"}
    assert req.imp[0].banner.format is not None
    assert unknown_fields(req.imp[0].banner.format[1]) == {"x_fmt": 1}
    assert unknown_fields(req.imp[0].banner.format[0]) == {}
    assert req.device is not None and req.device.geo is not None
    assert req.device.geo.lat == 51.5 and unknown_fields(req.device.geo) == {"x_geo": [None]}
    assert json.loads(BID_REQUEST_CODEC.encode(req)) == original


def test_unknown_fields_survive_in_responses() -> None:
    original = _load(RESPONSE)
    original["x_resp"] = 1
    original["seatbid"][0]["x_seat"] = {"a": 1}
    original["seatbid"][0]["bid"][0]["x_bid"] = ["q"]
    original["seatbid"][0]["bid"][0]["ext"] = {"dsa": {"behalf": "x"}}
    resp = BID_RESPONSE_CODEC.decode(_dumps(original))
    assert resp.seatbid is not None and unknown_fields(resp.seatbid[0].bid[0]) == {"x_bid": ["q"]}
    assert resp.seatbid[0].bid[0].ext == {"dsa": {"behalf": "x"}}
    assert json.loads(BID_RESPONSE_CODEC.encode(resp)) == original


def test_absent_fields_are_not_emitted() -> None:
    data = b'{"id":"r1","imp":[{"id":"1","banner":{"w":300,"h":250}}]}'
    assert BID_REQUEST_CODEC.encode(BID_REQUEST_CODEC.decode(data)) == data
    built = BidRequest(id="r2", imp=[])
    assert BID_REQUEST_CODEC.encode(built) == b'{"id":"r2","imp":[]}'


def test_explicit_null_is_kept_and_a_set_value_wins() -> None:
    data = b'{"id":"r1","imp":[{"id":"1","bidfloor":null}],"tmax":null,"site":null}'
    req = BID_REQUEST_CODEC.decode(data)
    assert req.tmax is None and req.site is None
    assert json.loads(BID_REQUEST_CODEC.encode(req)) == json.loads(data)
    req.tmax = 80
    req.imp[0].bidfloor = 0.5
    assert json.loads(BID_REQUEST_CODEC.encode(req)) == {
        "id": "r1",
        "imp": [{"id": "1", "bidfloor": 0.5}],
        "tmax": 80,
        "site": None,
    }


def test_in_place_edits_keep_unknown_fields() -> None:
    original = _request_with_extras()
    req = BID_REQUEST_CODEC.decode(_dumps(original))
    req.imp[0].bidfloor = 1.25
    unknown_fields(req)["x_added"] = "new"
    del unknown_fields(req.imp[0])["x_imp"]
    out = json.loads(BID_REQUEST_CODEC.encode(req))
    expected = copy.deepcopy(original)
    expected["imp"][0]["bidfloor"] = 1.25
    expected["x_added"] = "new"
    del expected["imp"][0]["x_imp"]
    assert out == expected


# --- no-bid reasons ------------------------------------------------------------------------


def test_version() -> None:
    assert OPENRTB_VERSION == "2.6"


def test_no_bid_reason_codes_follow_the_spec() -> None:
    expected = {
        "UNKNOWN_ERROR": 0,
        "TECHNICAL_ERROR": 1,
        "INVALID_REQUEST": 2,
        "KNOWN_WEB_SPIDER": 3,
        "SUSPECTED_NON_HUMAN_TRAFFIC": 4,
        "CLOUD_DATA_CENTER_OR_PROXY_IP": 5,
        "UNSUPPORTED_DEVICE": 6,
        "BLOCKED_PUBLISHER_OR_SITE": 7,
        "UNMATCHED_USER": 8,
        "DAILY_READER_CAP_MET": 9,
        "DAILY_DOMAIN_CAP_MET": 10,
        "ADS_TXT_AUTHORIZATION_UNAVAILABLE": 11,
        "ADS_TXT_AUTHORIZATION_VIOLATION": 12,
        "ADS_CERT_AUTHENTICATION_UNAVAILABLE": 13,
        "ADS_CERT_AUTHENTICATION_VIOLATION": 14,
        "INSUFFICIENT_AUCTION_TIME": 15,
        "INCOMPLETE_SUPPLYCHAIN": 16,
        "BLOCKED_SUPPLYCHAIN_NODE": 17,
    }
    assert {m.name: m.value for m in NoBidReason} == expected
    assert NBR is NoBidReason and NBR.KNOWN_WEB_CRAWLER == 3 and NBR.DAILY_USER_CAP_MET == 9


@pytest.mark.parametrize("nbr", [*NoBidReason, 501])
def test_no_bid_round_trips(nbr: int) -> None:
    resp = no_bid("req-1", nbr)
    data = BID_RESPONSE_CODEC.encode(resp)
    assert json.loads(data) == {"id": "req-1", "nbr": int(nbr)}
    back = BID_RESPONSE_CODEC.decode(data)
    assert back == resp and back.seatbid is None


@pytest.mark.parametrize(("request_id", "nbr"), [("", 0), ("x" * 257, 0), ("r", -1)])
def test_no_bid_rejects_bad_arguments(request_id: str, nbr: int) -> None:
    with pytest.raises(ValueError):
        no_bid(request_id, nbr)


# --- invalid input ---------------------------------------------------------------------------


def _banner(**changes: Any) -> bytes:
    req = _load(SIMPLE_BANNER)
    for key, value in changes.items():
        if value is _DELETE:
            del req[key]
        else:
            req[key] = value
    return _dumps(req)


_DELETE = object()
_GOOD = SIMPLE_BANNER.read_bytes()
_DEEP = b'{"id":"r","imp":[{"id":"1"}],"x":' + b"[" * 3000 + b"]" * 3000 + b"}"

INVALID_REQUESTS = [
    pytest.param(_banner(id=_DELETE), "missing_field", "$.id", id="missing-id"),
    pytest.param(_banner(id=""), "constraint", "$.id", id="empty-id"),
    pytest.param(_banner(imp=_DELETE), "missing_field", "$.imp", id="missing-imp"),
    pytest.param(_banner(imp=[]), "constraint", "$.imp", id="empty-imp"),
    pytest.param(_banner(imp=[{"id": str(i)} for i in range(101)]), "constraint", "$.imp", id="101-imps"),
    pytest.param(_banner(imp=[{"id": "1"}, {"id": "1"}]), "constraint", "$.imp[1].id", id="dup-imp-id"),
    pytest.param(_banner(imp=[{"bidfloor": 1.0}]), "missing_field", "$.imp[0].id", id="imp-no-id"),
    pytest.param(_banner(tmax="120"), "wrong_type", "$.tmax", id="tmax-str"),
    pytest.param(_banner(tmax=1.5), "wrong_type", "$.tmax", id="tmax-float"),
    pytest.param(_banner(tmax=-1), "constraint", "$.tmax", id="tmax-negative"),
    pytest.param(_banner(test=2), "constraint", "$.test", id="flag-2"),
    pytest.param(_banner(cur=["usd"]), "constraint", "$.cur[0]", id="currency-lowercase"),
    pytest.param(_banner(app={"id": "a"}), "constraint", "$.app", id="site-and-app"),
    pytest.param(
        _banner(imp=[{"id": "1", "banner": {"w": "300"}}]),
        "wrong_type",
        "$.imp[0].banner.w",
        id="nested-type",
    ),
    pytest.param(_banner(imp=[{"id": "1", "video": {"w": 1}}]), "missing_field", "$.imp[0].video.mimes"),
    pytest.param(_banner(device={"geo": {"lat": 91.0}}), "constraint", "$.device.geo.lat", id="lat"),
    pytest.param(_banner(ext=[1]), "wrong_type", "$.ext", id="ext-not-object"),
    pytest.param(_banner(ext={"pad": "x" * 2_000_000}), "too_large", None, id="2MB"),
    pytest.param(_GOOD.replace(b"foobar.com", b"foo\xffbar.com", 1), "invalid_utf8", None, id="bad-utf8"),
    pytest.param(_GOOD[: len(_GOOD) // 2], "malformed_json", None, id="truncated"),
    pytest.param(b"{'id': 'x'}", "malformed_json", None, id="not-json"),
    pytest.param(b"", "empty", None, id="empty"),
    pytest.param(b"[]", "wrong_type", "$", id="top-level-array"),
    pytest.param(b"null", "wrong_type", "$", id="top-level-null"),
    pytest.param(_DEEP, "constraint", None, id="too-deep"),
]


@pytest.mark.parametrize(("data", "reason", "field"), INVALID_REQUESTS)
def test_invalid_requests_raise_schema_error(data: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(SchemaError) as info:
        BID_REQUEST_CODEC.decode(data)
    err = info.value
    assert err.reason == reason, err
    assert err.field == field, err
    assert err.reason in SchemaError.REASONS and err.detail


def _response(**bid: Any) -> bytes:
    resp = _load(RESPONSE)
    resp["seatbid"][0]["bid"][0].update(bid)
    resp["seatbid"][0]["bid"][0] = {k: v for k, v in resp["seatbid"][0]["bid"][0].items() if v is not _DELETE}
    return _dumps(resp)


INVALID_RESPONSES = [
    pytest.param(b'{"seatbid":[]}', "missing_field", "$.id", id="missing-id"),
    pytest.param(_response(price=_DELETE), "missing_field", "$.seatbid[0].bid[0].price", id="no-price"),
    pytest.param(_response(price="9.43"), "wrong_type", "$.seatbid[0].bid[0].price", id="price-str"),
    pytest.param(_response(price=-1.0), "constraint", "$.seatbid[0].bid[0].price", id="price-neg"),
    pytest.param(_response(impid=_DELETE), "missing_field", "$.seatbid[0].bid[0].impid", id="no-impid"),
    pytest.param(b'{"id":"r","seatbid":[{"bid":[]}]}', "constraint", "$.seatbid[0].bid", id="no-bids"),
    pytest.param(b'{"id":"r","nbr":"2"}', "wrong_type", "$.nbr", id="nbr-str"),
    pytest.param(b'{"id":"r","cur":["USD"]}', "wrong_type", "$.cur", id="cur-array"),
]


@pytest.mark.parametrize(("data", "reason", "field"), INVALID_RESPONSES)
def test_invalid_responses_raise_schema_error(data: bytes, reason: str, field: str | None) -> None:
    with pytest.raises(SchemaError) as info:
        BID_RESPONSE_CODEC.decode(data)
    assert (info.value.reason, info.value.field) == (reason, field), info.value


def test_max_bytes_is_configurable() -> None:
    assert BID_REQUEST_CODEC.max_bytes == BID_RESPONSE_CODEC.max_bytes == DEFAULT_MAX_BYTES == 64 * 1024
    small = OpenRTBCodec(BidRequest, max_bytes=len(_GOOD) - 1)
    with pytest.raises(SchemaError) as info:
        small.decode(_GOOD)
    assert info.value.reason == "too_large"
    assert OpenRTBCodec(BidRequest, max_bytes=len(_GOOD)).decode(_GOOD).at == 1


def test_decode_accepts_bytes_like() -> None:
    for data in (bytearray(_GOOD), memoryview(_GOOD)):
        assert BID_REQUEST_CODEC.decode(data).imp[0].id == "1"


# --- properties -----------------------------------------------------------------------------

FIELD_NAMES = st.sampled_from(
    ["id", "imp", "banner", "video", "native", "request", "mimes", "w", "h", "format", "tmax", "at", "site",
     "app", "publisher", "device", "geo", "lat", "user", "data", "segment", "seatbid", "bid", "price",
     "impid", "nbr", "cur", "ext", "pmp", "deals"]
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(FIELD_NAMES | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS = (BID_REQUEST_CODEC, BID_RESPONSE_CODEC)


def _decode_or_schema_error(codec: OpenRTBCodec[Any], data: bytes) -> None:
    """Decode; a success must round-trip, a failure must be a SchemaError."""
    try:
        obj = codec.decode(data)
    except SchemaError as err:
        assert err.reason in SchemaError.REASONS
        return
    assert json.loads(codec.encode(obj)) == json.loads(data)


@PROPERTY_SETTINGS
@given(st.binary(max_size=512))
def test_decode_raises_only_schema_error_on_arbitrary_bytes(data: bytes) -> None:
    for codec in CODECS:
        try:
            codec.decode(data)
        except SchemaError as err:
            assert err.reason in SchemaError.REASONS


@PROPERTY_SETTINGS
@given(JSON_VALUES)
def test_decode_raises_only_schema_error_on_arbitrary_json(value: Any) -> None:
    data = _dumps(value)
    for codec in CODECS:
        _decode_or_schema_error(codec, data)


# (path to a value in the video example, which covers most nesting) x arbitrary JSON value
REQUEST_PATHS: list[tuple[Any, ...]] = [
    ("id",), ("imp",), ("imp", 0), ("imp", 0, "id"), ("imp", 0, "video"), ("imp", 0, "video", "mimes"),
    ("imp", 0, "video", "companionad"), ("imp", 0, "video", "companionad", 0, "w"), ("imp", 0, "bidfloor"),
    ("site",), ("site", "publisher"), ("site", "content", "episode"), ("device",), ("device", "geo"),
    ("user", "data"), ("user", "data", 0, "segment", 1), ("tmax",), ("at",), ("ext",), ("x_unknown",),
]  # fmt: skip
OBJECT_PATHS: list[tuple[Any, ...]] = [
    (), ("imp", 0), ("imp", 0, "video"), ("imp", 0, "video", "companionad", 1), ("site",),
    ("site", "publisher"), ("site", "content"), ("device",), ("user",), ("user", "data", 0),
    ("user", "data", 0, "segment", 0),
]  # fmt: skip


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        doc = doc[key]
    return doc


def _struct_at(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        obj = obj[key] if isinstance(key, int) else getattr(obj, key)
    return obj


@PROPERTY_SETTINGS
@given(st.sampled_from(REQUEST_PATHS), JSON_VALUES)
def test_request_with_any_value_anywhere_decodes_or_raises_schema_error(
    path: tuple[Any, ...], value: Any
) -> None:
    doc = _load(VIDEO)
    _at(doc, path[:-1])[path[-1]] = value
    _decode_or_schema_error(BID_REQUEST_CODEC, _dumps(doc))


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(OBJECT_PATHS),
    st.dictionaries(st.text(min_size=1, max_size=8).map("x_".__add__), JSON_VALUES, min_size=1, max_size=3),
)
def test_any_unknown_fields_round_trip(path: tuple[Any, ...], extras: dict[str, Any]) -> None:
    doc = _load(VIDEO)
    _at(doc, path).update(extras)
    req = BID_REQUEST_CODEC.decode(_dumps(doc))
    kept = unknown_fields(_struct_at(req, path))
    assert {k: kept[k] for k in extras} == extras
    assert json.loads(BID_REQUEST_CODEC.encode(req)) == doc
