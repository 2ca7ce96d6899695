"""Campaign files: validation errors that name the field, reloads that keep the old campaigns on error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serving.campaigns import CampaignBook, CampaignError, parse_campaign_file

GOOD = {
    "id": "c1",
    "daily_budget": 10.0,
    "bid_cap": 2.0,
    "target_cpc": 0.5,
    "creatives": [{"id": "cr", "w": 300, "h": 250, "adomain": ["a.example"]}],
}


def doc(**changes) -> bytes:
    c = {**GOOD, **changes}
    c = {k: v for k, v in c.items() if v is not None}
    return json.dumps({"campaigns": [c]}).encode()


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"daily_budget": 0}, "$.campaigns[0].daily_budget"),
        ({"bid_cap": "2"}, "$.campaigns[0].bid_cap"),
        ({"target_cpc": None}, "exactly one of target_cpc and target_cpa"),
        ({"target_cpa": 5.0}, "exactly one of target_cpc and target_cpa"),
        ({"target_cpc": None, "target_cpa": 5.0}, "target_cpa needs cvr"),
        ({"creatives": []}, "$.campaigns[0].creatives"),
        ({"creatives": [{"id": "x", "adomain": ["a.b"]}]}, "a banner needs w and h"),
        (
            {"creatives": [{"id": "x", "kind": "audio", "adomain": ["a.b"]}]},
            "kind must be banner, video or native",
        ),
        ({"currency": "euro"}, "$.campaigns[0].currency"),
        ({"budget": 5}, "unknown field `budget`"),
        ({"targeting": {"devicetypes": [9]}}, "$.campaigns[0].targeting.devicetypes[0]"),
        ({"frequency_cap": {"impressions": 0}}, "$.campaigns[0].frequency_cap.impressions"),
    ],
)
def test_invalid_campaigns_name_the_problem(changes, needle):
    with pytest.raises(CampaignError) as err:
        parse_campaign_file(doc(**changes))
    assert needle in str(err.value)


def test_duplicate_ids_and_broken_json_are_refused():
    with pytest.raises(CampaignError, match="appears twice"):
        parse_campaign_file(json.dumps({"campaigns": [GOOD, GOOD]}).encode())
    with pytest.raises(CampaignError, match="invalid campaign file"):
        parse_campaign_file(b"{campaigns")


def test_cpa_value_per_click_uses_the_configured_cvr():
    (c,) = parse_campaign_file(doc(target_cpc=None, target_cpa=40.0, cvr=0.05)).campaigns
    assert c.value_per_click == pytest.approx(2.0)


def test_book_reloads_on_change_and_keeps_campaigns_when_a_file_is_bad(tmp_path: Path):
    path = tmp_path / "c.json"
    path.write_bytes(doc())
    book = CampaignBook(path)
    assert [c.id for c in book.campaigns] == ["c1"] and book.reloads == 1
    assert not book.reload()  # unchanged
    path.write_bytes(doc(id="c2"))
    os.utime(path, ns=(1, 10**18))  # a new mtime even on coarse clocks
    assert book.reload() and [c.id for c in book.campaigns] == ["c2"]
    path.write_bytes(b'{"campaigns": [{"id": "c3"}]}')
    os.utime(path, ns=(1, 2 * 10**18))
    assert not book.reload()
    assert [c.id for c in book.campaigns] == ["c2"] and "missing required field" in (book.last_error or "")
    path.write_bytes(doc(id="c4", active=False))
    os.utime(path, ns=(1, 3 * 10**18))
    assert book.reload() and book.campaigns == [] and book.last_error is None  # paused campaigns are dropped


def test_a_missing_or_bad_file_at_start_is_an_error(tmp_path: Path):
    with pytest.raises(CampaignError, match="cannot read"):
        CampaignBook(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(CampaignError):
        CampaignBook(bad)
    assert CampaignBook(None).campaigns == []
