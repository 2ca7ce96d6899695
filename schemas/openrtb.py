"""OpenRTB 2.6 bid requests and bid responses that keep unknown fields.

The Structs cover the subset of OpenRTB 2.6 that real exchanges send (section
3.2 for the request, 4.2 for the response, ``2.6.md`` of IAB Tech Lab's
openrtb2.x). Spec-required attributes are required; every other attribute is
optional and defaults to ``None``, meaning *absent* (the spec's defaults such as
``at = 2`` are not filled in, so that a record re-encodes to what was sent).
Enumerated values are not checked against their lists (the spec asks receivers
to tolerate new values); types, 0/1 flags and sizes are.

Unknown fields are kept, as the spec's extension rules (section 2.6) require:
every object remembers the keys its Struct does not model, and
:meth:`OpenRTBCodec.encode` writes them back, so ``decode`` then ``encode``
gives JSON equal to the input (as parsed values; key order and number
formatting such as ``3.00`` -> ``3.0`` may differ). A known field sent as
``null`` is kept the same way. :func:`unknown_fields` reads or edits an
object's kept keys. They live in the instance ``__dict__``: ``==`` ignores them,
and ``copy.copy``, ``pickle`` and ``msgspec.structs.replace`` drop them, so edit
decoded records in place.

Examples
--------
>>> req = BID_REQUEST_CODEC.decode(
...     b'{"id":"r1","imp":[{"id":"1","banner":{"w":300,"h":250,"vendor_x":7}}],"tmax":120}'
... )
>>> req.imp[0].banner
Banner(w=300, h=250)
>>> unknown_fields(req.imp[0].banner)
{'vendor_x': 7}
>>> BID_REQUEST_CODEC.encode(req)
b'{"id":"r1","imp":[{"id":"1","banner":{"w":300,"h":250,"vendor_x":7}}],"tmax":120}'
>>> BID_REQUEST_CODEC.decode(b'{"id":"r1","imp":[]}')
Traceback (most recent call last):
...
schemas.errors.SchemaError: constraint at $.imp: Expected `array` of length >= 1
"""

from __future__ import annotations

import re
import types
import typing
from enum import IntEnum
from typing import Annotated, Any, TypeVar, Union

import msgspec

from schemas.codec import DEFAULT_MAX_BYTES, Codec, classify
from schemas.errors import SchemaError

OPENRTB_VERSION = "2.6"

# --- field types ----------------------------------------------------------------

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""A spec-required identifier."""
Str = Annotated[str, msgspec.Meta(max_length=1024)]
"""Names, optional ids, domains, versions, codes."""
Text = Annotated[str, msgspec.Meta(max_length=16_384)]
"""URLs, user agents, keyword lists, consent strings."""
Markup = Annotated[str, msgspec.Meta(max_length=1_048_576)]
"""Ad markup and native request payloads (the codec's ``max_bytes`` bounds them first)."""
StrList = Annotated[list[Str], msgspec.Meta(max_length=5_000)]
Int = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
UInt = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]
IntList = Annotated[list[Int], msgspec.Meta(max_length=1_000)]
Flag = Annotated[int, msgspec.Meta(ge=0, le=1)]
Money = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
"""CPM in the object's currency."""
Number = Annotated[float, msgspec.Meta(ge=-1e15, le=1e15)]
Currency = Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")]
Ext = dict[str, Any]
"""An ``ext`` object, or an object this module keeps verbatim."""

_UNKNOWN = "_openrtb_unknown"


class _Object(msgspec.Struct, kw_only=True, omit_defaults=True, dict=True, repr_omit_defaults=True):
    """Base of every OpenRTB object: ``None`` fields are not encoded; unknown keys are kept."""


# --- bid request: section 3.2 ------------------------------------------------------


class Format(_Object, kw_only=True):
    """An allowed banner size (3.2.10)."""

    w: UInt | None = None
    h: UInt | None = None
    wratio: UInt | None = None
    hratio: UInt | None = None
    wmin: UInt | None = None
    ext: Ext | None = None


class Banner(_Object, kw_only=True):
    """A banner impression, or a video/audio companion ad (3.2.6)."""

    format: Annotated[list[Format], msgspec.Meta(max_length=100)] | None = None
    w: UInt | None = None
    h: UInt | None = None
    btype: IntList | None = None
    battr: IntList | None = None
    pos: UInt | None = None
    mimes: StrList | None = None
    topframe: Flag | None = None
    expdir: IntList | None = None
    api: IntList | None = None
    id: Str | None = None
    vcm: Flag | None = None
    ext: Ext | None = None


class DurFloors(_Object, kw_only=True):
    """A floor for creatives of a duration range (3.2.35)."""

    mindur: UInt | None = None
    maxdur: UInt | None = None
    bidfloor: Money | None = None
    ext: Ext | None = None


Companions = Annotated[list[Banner], msgspec.Meta(max_length=100)]
DurFloorList = Annotated[list[DurFloors], msgspec.Meta(max_length=100)]


class Video(_Object, kw_only=True):
    """A video impression (3.2.7); ``mimes`` is required."""

    mimes: StrList
    minduration: UInt | None = None
    maxduration: UInt | None = None
    startdelay: Int | None = None
    maxseq: UInt | None = None
    poddur: UInt | None = None
    protocols: IntList | None = None
    w: UInt | None = None
    h: UInt | None = None
    podid: Str | None = None
    podseq: Int | None = None
    rqddurs: IntList | None = None
    placement: UInt | None = None
    plcmt: UInt | None = None
    linearity: UInt | None = None
    skip: Flag | None = None
    skipmin: UInt | None = None
    skipafter: UInt | None = None
    sequence: UInt | None = None
    slotinpod: Int | None = None
    mincpmpersec: Money | None = None
    battr: IntList | None = None
    maxextended: Int | None = None
    minbitrate: UInt | None = None
    maxbitrate: UInt | None = None
    boxingallowed: Flag | None = None
    playbackmethod: IntList | None = None
    playbackend: UInt | None = None
    delivery: IntList | None = None
    pos: UInt | None = None
    companionad: Companions | None = None
    api: IntList | None = None
    companiontype: IntList | None = None
    poddedupe: IntList | None = None
    durfloors: DurFloorList | None = None
    ext: Ext | None = None


class Audio(_Object, kw_only=True):
    """An audio impression (3.2.8); ``mimes`` is required."""

    mimes: StrList
    minduration: UInt | None = None
    maxduration: UInt | None = None
    poddur: UInt | None = None
    protocols: IntList | None = None
    startdelay: Int | None = None
    rqddurs: IntList | None = None
    podid: Str | None = None
    podseq: Int | None = None
    sequence: UInt | None = None
    slotinpod: Int | None = None
    mincpmpersec: Money | None = None
    battr: IntList | None = None
    maxextended: Int | None = None
    minbitrate: UInt | None = None
    maxbitrate: UInt | None = None
    delivery: IntList | None = None
    companionad: Companions | None = None
    api: IntList | None = None
    companiontype: IntList | None = None
    maxseq: UInt | None = None
    feed: UInt | None = None
    stitched: Flag | None = None
    nvol: UInt | None = None
    durfloors: DurFloorList | None = None
    ext: Ext | None = None


class Native(_Object, kw_only=True):
    """A native impression (3.2.9); ``request`` is the Native Ads request as a JSON string."""

    request: Markup
    ver: Str | None = None
    api: IntList | None = None
    battr: IntList | None = None
    ext: Ext | None = None


class Metric(_Object, kw_only=True):
    """A metric of the impression, e.g. viewability (3.2.5)."""

    type: Str
    value: Number
    vendor: Str | None = None
    ext: Ext | None = None


class Deal(_Object, kw_only=True):
    """A private-marketplace deal (3.2.12)."""

    id: Id
    bidfloor: Money | None = None
    bidfloorcur: Currency | None = None
    at: UInt | None = None
    wseat: StrList | None = None
    wadomain: StrList | None = None
    guar: Flag | None = None
    mincpmpersec: Money | None = None
    durfloors: DurFloorList | None = None
    ext: Ext | None = None


class Pmp(_Object, kw_only=True):
    """Private-marketplace terms of an impression (3.2.11)."""

    private_auction: Flag | None = None
    deals: Annotated[list[Deal], msgspec.Meta(max_length=1_000)] | None = None
    ext: Ext | None = None


class Imp(_Object, kw_only=True):
    """One impression offered (3.2.4)."""

    id: Id
    metric: Annotated[list[Metric], msgspec.Meta(max_length=100)] | None = None
    banner: Banner | None = None
    video: Video | None = None
    audio: Audio | None = None
    native: Native | None = None
    pmp: Pmp | None = None
    displaymanager: Str | None = None
    displaymanagerver: Str | None = None
    instl: Flag | None = None
    tagid: Str | None = None
    bidfloor: Money | None = None
    bidfloorcur: Currency | None = None
    clickbrowser: Flag | None = None
    secure: Flag | None = None
    iframebuster: StrList | None = None
    rwdd: Flag | None = None
    ssai: UInt | None = None
    exp: UInt | None = None
    qty: Ext | None = None
    dt: Annotated[float, msgspec.Meta(ge=0, le=1e15)] | None = None
    refresh: Ext | None = None
    ext: Ext | None = None


class Publisher(_Object, kw_only=True):
    """The seller of a site or app (3.2.15)."""

    id: Str | None = None
    name: Str | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    domain: Str | None = None
    ext: Ext | None = None


class Producer(_Object, kw_only=True):
    """The producer of the content (3.2.17)."""

    id: Str | None = None
    name: Str | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    domain: Str | None = None
    ext: Ext | None = None


class Segment(_Object, kw_only=True):
    """A data segment (3.2.22)."""

    id: Str | None = None
    name: Str | None = None
    value: Text | None = None
    ext: Ext | None = None


class Data(_Object, kw_only=True):
    """Data from one provider about the user or content (3.2.21)."""

    id: Str | None = None
    name: Str | None = None
    cids: StrList | None = None
    segment: Annotated[list[Segment], msgspec.Meta(max_length=1_000)] | None = None
    ext: Ext | None = None


DataList = Annotated[list[Data], msgspec.Meta(max_length=100)]


class Content(_Object, kw_only=True):
    """The content around the impression (3.2.16)."""

    id: Str | None = None
    episode: UInt | None = None
    title: Text | None = None
    series: Text | None = None
    season: Str | None = None
    artist: Str | None = None
    genre: Str | None = None
    gtax: UInt | None = None
    genres: StrList | None = None
    album: Str | None = None
    isrc: Str | None = None
    producer: Producer | None = None
    url: Text | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    prodq: UInt | None = None
    context: UInt | None = None
    contentrating: Str | None = None
    userrating: Str | None = None
    qagmediarating: UInt | None = None
    keywords: Text | None = None
    kwarray: StrList | None = None
    livestream: Flag | None = None
    sourcerelationship: Flag | None = None
    len: UInt | None = None
    language: Str | None = None
    langb: Str | None = None
    embeddable: Flag | None = None
    data: DataList | None = None
    network: Ext | None = None
    channel: Ext | None = None
    realtime: Flag | None = None
    firstbroadcast: Flag | None = None
    ext: Ext | None = None


class Site(_Object, kw_only=True):
    """The website of the impression (3.2.13)."""

    id: Str | None = None
    name: Str | None = None
    domain: Str | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    sectioncat: StrList | None = None
    pagecat: StrList | None = None
    page: Text | None = None
    ref: Text | None = None
    search: Text | None = None
    mobile: Flag | None = None
    privacypolicy: Flag | None = None
    publisher: Publisher | None = None
    content: Content | None = None
    keywords: Text | None = None
    kwarray: StrList | None = None
    inventorypartnerdomain: Str | None = None
    ext: Ext | None = None


class App(_Object, kw_only=True):
    """The non-browser application of the impression (3.2.14)."""

    id: Str | None = None
    name: Str | None = None
    bundle: Str | None = None
    domain: Str | None = None
    storeurl: Text | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    sectioncat: StrList | None = None
    pagecat: StrList | None = None
    ver: Str | None = None
    privacypolicy: Flag | None = None
    paid: Flag | None = None
    publisher: Publisher | None = None
    content: Content | None = None
    keywords: Text | None = None
    kwarray: StrList | None = None
    inventorypartnerdomain: Str | None = None
    ext: Ext | None = None


class Geo(_Object, kw_only=True):
    """A location: the device's current one, or the user's home (3.2.19)."""

    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)] | None = None
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)] | None = None
    type: UInt | None = None
    accuracy: UInt | None = None
    lastfix: UInt | None = None
    ipservice: UInt | None = None
    country: Str | None = None
    region: Str | None = None
    regionfips104: Str | None = None
    metro: Str | None = None
    city: Str | None = None
    zip: Str | None = None
    utcoffset: Int | None = None
    ext: Ext | None = None


class BrandVersion(_Object, kw_only=True):
    """A browser or platform brand and version from client hints (3.2.30)."""

    brand: Str
    version: Annotated[list[Str], msgspec.Meta(max_length=32)] | None = None
    ext: Ext | None = None


class UserAgent(_Object, kw_only=True):
    """Structured user agent from client hints (3.2.29)."""

    browsers: Annotated[list[BrandVersion], msgspec.Meta(max_length=64)] | None = None
    platform: BrandVersion | None = None
    mobile: Flag | None = None
    architecture: Str | None = None
    bitness: Str | None = None
    model: Str | None = None
    source: UInt | None = None
    ext: Ext | None = None


class Device(_Object, kw_only=True):
    """The device the ad will be shown on (3.2.18)."""

    geo: Geo | None = None
    dnt: Flag | None = None
    lmt: Flag | None = None
    ua: Text | None = None
    sua: UserAgent | None = None
    ip: Str | None = None
    ipv6: Str | None = None
    devicetype: UInt | None = None
    make: Str | None = None
    model: Str | None = None
    os: Str | None = None
    osv: Str | None = None
    hwv: Str | None = None
    h: UInt | None = None
    w: UInt | None = None
    ppi: UInt | None = None
    pxratio: Annotated[float, msgspec.Meta(ge=0, le=1_000)] | None = None
    js: Flag | None = None
    geofetch: Flag | None = None
    flashver: Str | None = None
    language: Str | None = None
    langb: Str | None = None
    carrier: Str | None = None
    mccmnc: Str | None = None
    connectiontype: UInt | None = None
    ifa: Str | None = None
    didsha1: Str | None = None
    didmd5: Str | None = None
    dpidsha1: Str | None = None
    dpidmd5: Str | None = None
    macsha1: Str | None = None
    macmd5: Str | None = None
    ext: Ext | None = None


class UID(_Object, kw_only=True):
    """One extended user id (3.2.28)."""

    id: Text | None = None
    atype: UInt | None = None
    ext: Ext | None = None


class EID(_Object, kw_only=True):
    """Extended user ids from one source (3.2.27)."""

    inserter: Str | None = None
    source: Str | None = None
    matcher: Str | None = None
    mm: UInt | None = None
    uids: Annotated[list[UID], msgspec.Meta(max_length=100)] | None = None
    ext: Ext | None = None


class User(_Object, kw_only=True):
    """The human user of the device (3.2.20); ``yob``/``gender`` are deprecated in 2.6."""

    id: Str | None = None
    buyeruid: Str | None = None
    yob: UInt | None = None
    gender: Str | None = None
    keywords: Text | None = None
    kwarray: StrList | None = None
    customdata: Text | None = None
    geo: Geo | None = None
    data: DataList | None = None
    consent: Text | None = None
    eids: Annotated[list[EID], msgspec.Meta(max_length=100)] | None = None
    ext: Ext | None = None


class SupplyChainNode(_Object, kw_only=True):
    """One seller in the supply chain (3.2.26)."""

    asi: Str
    sid: Str
    rid: Str | None = None
    name: Str | None = None
    domain: Str | None = None
    hp: Flag | None = None
    ext: Ext | None = None


class SupplyChain(_Object, kw_only=True):
    """The sellers the request went through (3.2.25)."""

    complete: Flag
    nodes: Annotated[list[SupplyChainNode], msgspec.Meta(max_length=100)]
    ver: Str
    ext: Ext | None = None


class Source(_Object, kw_only=True):
    """The upstream source of the request (3.2.2)."""

    fd: Flag | None = None
    tid: Str | None = None
    pchain: Text | None = None
    schain: SupplyChain | None = None
    ext: Ext | None = None


class Regs(_Object, kw_only=True):
    """Regulations in force (3.2.3)."""

    coppa: Flag | None = None
    gdpr: Flag | None = None
    us_privacy: Str | None = None
    gpp: Text | None = None
    gpp_sid: Annotated[list[Int], msgspec.Meta(max_length=100)] | None = None
    ext: Ext | None = None


class BidRequest(_Object, kw_only=True):
    """A bid request (3.2.1): 1 to 100 impressions, and ``site`` or ``app`` (not both).

    Imp ids must be unique, since bids refer to them.
    """

    id: Id
    imp: Annotated[list[Imp], msgspec.Meta(min_length=1, max_length=100)]
    site: Site | None = None
    app: App | None = None
    dooh: Ext | None = None
    device: Device | None = None
    user: User | None = None
    test: Flag | None = None
    at: Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)] | None = None
    tmax: Annotated[int, msgspec.Meta(ge=0, le=60_000)] | None = None
    wseat: StrList | None = None
    bseat: StrList | None = None
    allimps: Flag | None = None
    cur: Annotated[list[Currency], msgspec.Meta(max_length=100)] | None = None
    wlang: StrList | None = None
    wlangb: StrList | None = None
    acat: StrList | None = None
    bcat: StrList | None = None
    cattax: UInt | None = None
    badv: StrList | None = None
    bapp: StrList | None = None
    source: Source | None = None
    regs: Regs | None = None
    ext: Ext | None = None

    def __post_init__(self) -> None:
        # A ValueError here becomes a ValidationError at this object's path; a
        # message that starts with a backquoted name is refined to that field.
        if self.site is not None and self.app is not None:
            raise ValueError("`app` must not be sent together with `site`")
        if self.dooh is not None and (self.site is not None or self.app is not None):
            raise ValueError("`dooh` must not be sent together with `site` or `app`")
        if len(self.imp) > 1:
            seen: set[str] = set()
            for i, imp in enumerate(self.imp):
                if imp.id in seen:
                    raise ValueError(f"`imp[{i}].id` {imp.id!r} is not unique")
                seen.add(imp.id)


# --- bid response: section 4.2 ------------------------------------------------------


class Bid(_Object, kw_only=True):
    """An offer to buy one impression (4.2.3); ``price`` is a CPM."""

    id: Id
    impid: Id
    price: Money
    nurl: Text | None = None
    burl: Text | None = None
    lurl: Text | None = None
    adm: Markup | None = None
    adid: Str | None = None
    adomain: StrList | None = None
    bundle: Str | None = None
    iurl: Text | None = None
    cid: Str | None = None
    crid: Str | None = None
    tactic: Str | None = None
    cattax: UInt | None = None
    cat: StrList | None = None
    attr: IntList | None = None
    apis: IntList | None = None
    api: UInt | None = None
    protocol: UInt | None = None
    qagmediarating: UInt | None = None
    language: Str | None = None
    langb: Str | None = None
    dealid: Str | None = None
    w: UInt | None = None
    h: UInt | None = None
    wratio: UInt | None = None
    hratio: UInt | None = None
    exp: UInt | None = None
    dur: UInt | None = None
    mtype: UInt | None = None
    slotinpod: Int | None = None
    ext: Ext | None = None


class SeatBid(_Object, kw_only=True):
    """The bids of one buyer seat (4.2.2); at least one bid."""

    bid: Annotated[list[Bid], msgspec.Meta(min_length=1, max_length=1_000)]
    seat: Str | None = None
    group: Flag | None = None
    ext: Ext | None = None


class BidResponse(_Object, kw_only=True):
    """A bid response (4.2.1); ``id`` is the request's id, ``nbr`` a :class:`NoBidReason`."""

    id: Id
    seatbid: Annotated[list[SeatBid], msgspec.Meta(max_length=100)] | None = None
    bidid: Str | None = None
    cur: Currency | None = None
    customdata: Text | None = None
    nbr: UInt | None = None
    ext: Ext | None = None


class NoBidReason(IntEnum):
    """No-bid reason codes for ``BidResponse.nbr``.

    OpenRTB 2.6 refers to the OpenRTB 3.0 list "No-Bid Reason Codes" (list 5.24
    of 2.5 had 0-10). Values 500 and up are exchange specific, which is why
    ``BidResponse.nbr`` is a plain ``int``.

    Examples
    --------
    >>> NoBidReason(8).name
    'UNMATCHED_USER'
    >>> NBR.KNOWN_WEB_SPIDER is NBR.KNOWN_WEB_CRAWLER
    True
    """

    UNKNOWN_ERROR = 0
    TECHNICAL_ERROR = 1
    INVALID_REQUEST = 2
    KNOWN_WEB_SPIDER = 3
    KNOWN_WEB_CRAWLER = 3  # the 3.0 name
    SUSPECTED_NON_HUMAN_TRAFFIC = 4
    CLOUD_DATA_CENTER_OR_PROXY_IP = 5
    UNSUPPORTED_DEVICE = 6
    BLOCKED_PUBLISHER_OR_SITE = 7
    UNMATCHED_USER = 8
    DAILY_READER_CAP_MET = 9
    DAILY_USER_CAP_MET = 9  # the 3.0 name
    DAILY_DOMAIN_CAP_MET = 10
    ADS_TXT_AUTHORIZATION_UNAVAILABLE = 11
    ADS_TXT_AUTHORIZATION_VIOLATION = 12
    ADS_CERT_AUTHENTICATION_UNAVAILABLE = 13
    ADS_CERT_AUTHENTICATION_VIOLATION = 14
    INSUFFICIENT_AUCTION_TIME = 15
    INCOMPLETE_SUPPLYCHAIN = 16
    BLOCKED_SUPPLYCHAIN_NODE = 17


NBR = NoBidReason


def no_bid(request_id: str, nbr: NoBidReason | int = NoBidReason.UNKNOWN_ERROR) -> BidResponse:
    """Build the no-bid response to ``request_id`` with reason ``nbr``.

    Parameters
    ----------
    request_id
        ``BidRequest.id`` of the request declined.
    nbr
        A :class:`NoBidReason`, or an exchange-specific code (500 and up).

    Examples
    --------
    >>> no_bid("r1", NBR.UNMATCHED_USER)
    BidResponse(id='r1', nbr=8)
    >>> BID_RESPONSE_CODEC.encode(no_bid("r1", NBR.INVALID_REQUEST))
    b'{"id":"r1","nbr":2}'
    """
    if not request_id or len(request_id) > 256:
        raise ValueError("request_id must be 1 to 256 characters")
    if not 0 <= int(nbr) <= 2**31 - 1:
        raise ValueError(f"nbr must be a non-negative code, not {nbr!r}")
    return BidResponse(id=request_id, nbr=int(nbr))


# --- unknown-field bookkeeping ---------------------------------------------------------


class _Plan:
    """Per-Struct walk plan: the JSON keys it models and its Struct-typed fields."""

    __slots__ = ("children", "known")

    def __init__(self) -> None:
        self.known: frozenset[str] = frozenset()
        self.children: tuple[tuple[str, _Plan, bool], ...] = ()


_PLANS: dict[type, _Plan] = {}


def _struct_of(tp: Any) -> tuple[type[_Object], bool] | None:
    """``(Struct class, is_list)`` if annotation ``tp`` holds OpenRTB objects, else None."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _struct_of(arg)
            if found is not None:
                return found
        return None
    if origin is list:
        inner = _struct_of(typing.get_args(tp)[0])
        return (inner[0], True) if inner is not None and not inner[1] else None
    if isinstance(tp, type) and issubclass(tp, _Object):
        return tp, False
    return None


def _plan(cls: type[_Object]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _Plan()  # registered first, so recursive types terminate
        fields = msgspec.structs.fields(cls)
        plan.known = frozenset(f.encode_name for f in fields)
        children = []
        for f in fields:
            found = _struct_of(f.type)
            if found is not None:
                children.append((f.encode_name, _plan(found[0]), found[1]))
        plan.children = tuple(children)
    return plan


def _collect(raw: dict[str, Any], obj: _Object, plan: _Plan) -> None:
    """Attach to ``obj`` (and its sub-objects) the keys of ``raw`` its Struct does not model."""
    known = plan.known
    if not known.issuperset(raw) or None in raw.values():
        obj.__dict__[_UNKNOWN] = {k: v for k, v in raw.items() if v is None or k not in known}
    for name, child, many in plan.children:
        value = raw.get(name)
        if value is None:
            continue
        sub = getattr(obj, name)
        if many:
            for r, o in zip(value, sub, strict=True):
                _collect(r, o, child)
        else:
            _collect(value, sub, child)


def _merge(obj: _Object, out: dict[str, Any], plan: _Plan) -> None:
    """Add the kept unknown keys of ``obj`` (and sub-objects) to its builtins form ``out``."""
    kept = obj.__dict__.get(_UNKNOWN)
    if kept:
        for k, v in kept.items():
            if k not in out:
                out[k] = v
    for name, child, many in plan.children:
        sub = getattr(obj, name)
        if sub is None:
            continue
        if many:
            for o, r in zip(sub, out[name], strict=True):
                _merge(o, r, child)
        else:
            _merge(sub, out[name], child)


def _any_kept(obj: _Object, plan: _Plan) -> bool:
    if obj.__dict__.get(_UNKNOWN):
        return True
    for name, child, many in plan.children:
        sub = getattr(obj, name)
        if sub is None:
            continue
        if many:
            if any(_any_kept(o, child) for o in sub):
                return True
        elif _any_kept(sub, child):
            return True
    return False


def unknown_fields(obj: _Object) -> dict[str, Any]:
    """The JSON keys of ``obj`` that its Struct does not model, kept for re-encoding.

    This is the live dict: add to it or delete from it to change what
    :meth:`OpenRTBCodec.encode` writes. It also holds known fields that were
    sent as ``null`` (encoding writes a modelled field's value in preference).

    Examples
    --------
    >>> req = BID_REQUEST_CODEC.decode(b'{"id":"r","imp":[{"id":"1"}],"bseat":null,"x":{"y":1}}')
    >>> unknown_fields(req)
    {'bseat': None, 'x': {'y': 1}}
    >>> unknown_fields(req.imp[0])
    {}
    """
    kept: dict[str, Any] = obj.__dict__.setdefault(_UNKNOWN, {})
    return kept


def to_builtins(obj: _Object) -> dict[str, Any]:
    """``obj`` as JSON-ready builtins, kept unknown fields included, absent fields left out.

    Examples
    --------
    >>> to_builtins(BidResponse(id="r1", nbr=NBR.TECHNICAL_ERROR))
    {'id': 'r1', 'nbr': 1}
    """
    out: dict[str, Any] = msgspec.to_builtins(obj)
    _merge(obj, out, _plan(type(obj)))
    return out


# --- codecs ---------------------------------------------------------------------------

T = TypeVar("T", bound=_Object)

_decode_json = msgspec.json.Decoder().decode
_encoder = msgspec.json.Encoder()
_NAMED = re.compile(r"^`(?P<name>[\w\[\].]+)`")


def _classify(exc: Exception) -> SchemaError:
    if isinstance(exc, RecursionError):
        return SchemaError("constraint", "JSON nested too deeply")
    err = classify(exc)
    if err.reason == "invalid" and err.field is not None:
        # a __post_init__ check names the offending field first
        m = _NAMED.match(err.detail)
        if m:
            field = err.field + "." + m.group("name")
            return SchemaError("constraint", err.detail, field=field)
    return err


class OpenRTBCodec(Codec[T]):
    """Strict, size-limited JSON codec for an OpenRTB top-level object that keeps unknown fields.

    Parameters
    ----------
    type_
        :class:`BidRequest` or :class:`BidResponse` (any OpenRTB Struct works).
    max_bytes
        Larger messages are rejected with reason ``too_large`` before parsing.

    ``decode`` raises nothing but :class:`SchemaError`, whose ``field`` is the
    JSON path of the offending value (``$.imp[0].id``) when there is one.

    Examples
    --------
    >>> codec = OpenRTBCodec(BidResponse, max_bytes=1000)
    >>> resp = codec.decode(b'{"id":"r1","seatbid":[{"bid":[{"id":"b","impid":"1","price":1.5,"z":0}]}]}')
    >>> resp.seatbid[0].bid[0].price
    1.5
    >>> codec.encode(resp)
    b'{"id":"r1","seatbid":[{"bid":[{"id":"b","impid":"1","price":1.5,"z":0}]}]}'
    >>> codec.decode(b'{"id":"r1","seatbid":[{"bid":[{"id":"b","impid":"1","price":-2}]}]}')
    Traceback (most recent call last):
    ...
    schemas.errors.SchemaError: constraint at $.seatbid[0].bid[0].price: Expected `float` >= 0.0
    """

    def __init__(self, type_: type[T], max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(type_, max_bytes)
        self._plan = _plan(type_)

    def _decode(self, data: bytes | bytearray | memoryview) -> T:
        raw = _decode_json(data)
        obj: T = msgspec.convert(raw, self.type, strict=True)
        _collect(raw, obj, self._plan)
        return obj

    def _classify(self, exc: Exception) -> SchemaError:
        return _classify(exc)

    def encode(self, obj: T) -> bytes:  # type: ignore[override]
        """Encode ``obj`` to compact JSON, writing back the unknown fields it was decoded with."""
        plan = _plan(type(obj))
        if not _any_kept(obj, plan):
            return _encoder.encode(obj)
        out: dict[str, Any] = msgspec.to_builtins(obj)
        _merge(obj, out, plan)
        return _encoder.encode(out)


BID_REQUEST_CODEC: OpenRTBCodec[BidRequest] = OpenRTBCodec(BidRequest)
BID_RESPONSE_CODEC: OpenRTBCodec[BidResponse] = OpenRTBCodec(BidResponse)
