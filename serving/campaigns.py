"""Campaigns: a validated JSON file, reloaded while workers run.

A campaign file is ``{"campaigns": [...]}``; each campaign has a daily budget,
a bid cap (CPM), a target CPC or a target CPA (with the conversion rate it
expects), targeting, a per-user frequency cap and creatives. The file is
checked as a whole: one invalid campaign rejects the file, with an error that
names the field, and the campaigns in force stay as they were.

:class:`CampaignBook` re-reads the file when its content changes (checked by
the bidder every ``interval`` seconds, so a reload needs no restart), and
answers which campaigns and creatives may serve an impression.

Examples
--------
>>> doc = b'''{"campaigns": [{"id": "c1", "daily_budget": 50, "bid_cap": 4.0, "target_cpc": 0.5,
...   "targeting": {"countries": ["DEU"], "devicetypes": [2, 4]},
...   "creatives": [{"id": "cr1", "w": 300, "h": 250, "adomain": ["brand.example"]}]}]}'''
>>> [c.id for c in parse_campaigns(doc)]
['c1']
>>> try:
...     parse_campaigns(b'{"campaigns": [{"id": "c1", "daily_budget": -1, "bid_cap": 1, "target_cpc": 1,'
...                     b' "creatives": [{"id": "x", "w": 1, "h": 1, "adomain": ["a.b"]}]}]}')
... except CampaignError as exc:
...     print(exc)
invalid campaign file: Expected `float` > 0.0 - at `$.campaigns[0].daily_budget`
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec

log = logging.getLogger(__name__)

Positive = Annotated[float, msgspec.Meta(gt=0.0)]
Rate = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Names = Annotated[list[Name], msgspec.Meta(max_length=1_000)]


class CampaignError(ValueError):
    """A campaign file that cannot be used (the campaigns in force stay)."""


class Creative(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One ad: a banner of ``w``x``h`` (or a ``video``/``native`` creative), with its advertiser domains."""

    id: Name
    w: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    h: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None = None
    kind: str = "banner"
    adomain: Annotated[list[Name], msgspec.Meta(min_length=1, max_length=10)]
    adm: Annotated[str, msgspec.Meta(max_length=100_000)] = ""
    cat: Names = []

    def __post_init__(self) -> None:
        if self.kind not in ("banner", "video", "native"):
            raise ValueError(f"creative {self.id!r}: kind must be banner, video or native")
        if self.kind == "banner" and (self.w is None or self.h is None):
            raise ValueError(f"creative {self.id!r}: a banner needs w and h")


class Targeting(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Who may see the campaign; ``None`` means anyone.

    ``segments`` are CRM segments read from the user's Redis profile
    (field ``segment``); ``pub_cats`` are IAB categories of the site or app.
    """

    countries: Names | None = None
    devicetypes: (
        Annotated[list[Annotated[int, msgspec.Meta(ge=1, le=8)]], msgspec.Meta(max_length=8)] | None
    ) = None
    pub_cats: Names | None = None
    segments: Names | None = None


class FrequencyCap(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """At most ``impressions`` per user per ``period_s`` seconds."""

    impressions: Annotated[int, msgspec.Meta(ge=1)]
    period_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86_400)] = 86_400


class Campaign(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A campaign: money in the file's currency; ``bid_cap`` is a CPM, as OpenRTB prices are."""

    id: Name
    daily_budget: Positive
    bid_cap: Positive
    target_cpc: Positive | None = None
    target_cpa: Positive | None = None
    #: Expected conversions per click; needed with ``target_cpa``.
    cvr: Rate | None = None
    currency: Annotated[str, msgspec.Meta(pattern="^[A-Z]{3}$")] = "EUR"
    targeting: Targeting = Targeting()
    frequency_cap: FrequencyCap | None = None
    creatives: Annotated[list[Creative], msgspec.Meta(min_length=1, max_length=100)]
    active: bool = True

    def __post_init__(self) -> None:
        if (self.target_cpc is None) == (self.target_cpa is None):
            raise ValueError(f"campaign {self.id!r}: give exactly one of target_cpc and target_cpa")
        if self.target_cpa is not None and self.cvr is None:
            raise ValueError(f"campaign {self.id!r}: target_cpa needs cvr (expected conversions per click)")

    @property
    def value_per_click(self) -> float:
        """What a click is worth to the advertiser: the target CPC, or the target CPA x pCVR."""
        if self.target_cpc is not None:
            return self.target_cpc
        return float(self.target_cpa or 0.0) * float(self.cvr or 0.0)

    def creatives_for(self, imp: Any) -> list[Creative]:
        """The creatives that fit impression ``imp`` (banner size/format, video or native)."""
        out: list[Creative] = []
        for cr in self.creatives:
            if cr.kind == "banner" and imp.banner is not None:
                b = imp.banner
                sizes = {(f.w, f.h) for f in b.format or ()}
                if b.w is not None and b.h is not None:
                    sizes.add((b.w, b.h))
                if (cr.w, cr.h) in sizes:
                    out.append(cr)
            elif (cr.kind == "video" and imp.video is not None) or (
                cr.kind == "native" and imp.native is not None
            ):
                out.append(cr)
        return out


class CampaignFile(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """The whole file."""

    campaigns: Annotated[list[Campaign], msgspec.Meta(max_length=10_000)]
    #: Sites/apps (domains or bundles) that no campaign buys.
    blocked_publishers: Names = []


_decoder = msgspec.json.Decoder(CampaignFile)


def parse_campaign_file(data: bytes) -> CampaignFile:
    """Decode and validate a whole campaign file, or raise :class:`CampaignError`."""
    try:
        doc = _decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CampaignError(f"invalid campaign file: {exc}") from None
    seen: set[str] = set()
    for c in doc.campaigns:
        if c.id in seen:
            raise CampaignError(f"invalid campaign file: campaign id {c.id!r} appears twice")
        seen.add(c.id)
    return doc


def parse_campaigns(data: bytes) -> list[Campaign]:
    """The campaigns of a file's bytes (see :func:`parse_campaign_file`)."""
    return list(parse_campaign_file(data).campaigns)


class CampaignBook:
    """The campaigns in force, reloaded from ``path`` when the file's content changes.

    A file that fails validation is logged (``last_error``) and ignored: the
    campaigns in force stay until a valid file replaces it.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, campaigns: Sequence[Campaign] = ()
    ) -> None:
        self.path = Path(path) if path is not None else None
        self.campaigns: list[Campaign] = list(campaigns)
        self.blocked: frozenset[str] = frozenset()
        self.digest = ""
        self.loaded_at = 0.0
        self.reloads = 0
        self.last_error: str | None = None
        self._mtime: int | None = None
        if self.path is not None:
            self.reload(force=True)

    def reload(self, force: bool = False) -> bool:
        """Re-read the file if it changed; True when new campaigns took effect."""
        if self.path is None:
            return False
        try:
            st = self.path.stat()
            if not force and st.st_mtime_ns == self._mtime:
                return False
            data = self.path.read_bytes()
        except OSError as exc:
            self.last_error = f"cannot read {self.path}: {exc}"
            if force:
                raise CampaignError(self.last_error) from None
            return False
        self._mtime = st.st_mtime_ns
        digest = hashlib.sha256(data).hexdigest()
        if digest == self.digest:
            return False
        try:
            doc = parse_campaign_file(data)
        except CampaignError as exc:
            self.last_error = f"{self.path}: {exc}"
            log.error("campaign file rejected, keeping %d campaigns in force: %s", len(self.campaigns), exc)
            if force:
                raise
            return False
        self.campaigns = [c for c in doc.campaigns if c.active]
        self.blocked = frozenset(doc.blocked_publishers)
        self.digest = digest
        self.loaded_at = time.time()
        self.reloads += 1
        self.last_error = None
        log.info("campaigns loaded: %d active (sha256 %s)", len(self.campaigns), digest[:12])
        return True

    def get(self, campaign_id: str) -> Campaign | None:
        for c in self.campaigns:
            if c.id == campaign_id:
                return c
        return None

    def status(self) -> dict[str, Any]:
        return {
            "path": str(self.path) if self.path else None,
            "campaigns": [c.id for c in self.campaigns],
            "sha256": self.digest,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "last_error": self.last_error,
        }
