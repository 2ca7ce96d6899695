"""Click-through-rate models: hashed features, an online River learner, and the blend.

Features are categorical ``(field, value)`` pairs. Each pair is hashed with a
stable hash (CRC32, not Python's salted ``hash``) into ``N_BUCKETS`` ids, so
the online model, the offline deep model and the stream all see the same ids
for the same request, in every process and on every run.

* :func:`request_fields` reads the fields of one impression of an OpenRTB
  request, plus the user's profile fields from Redis and the campaign.
* :func:`hash_ids` turns an ordered field dict into one id per field: the
  input row of the deep model (an ONNX graph over ``int64[batch, n_fields]``).
* :class:`OnlineCTR` is a River logistic regression over the same hashed ids.
* :class:`CTRBlend` blends the online and deep predictions in logit space and
  calibrates them, learning the weights online from labelled impressions.

Examples
--------
>>> ids = hash_ids({"size": "300x250", "os": "iOS"})
>>> ids.dtype.name, len(ids), bool((ids < N_BUCKETS).all())
('int64', 2, True)
>>> m = OnlineCTR(seed=0)
>>> for _ in range(200):
...     m.learn_one({"size": "300x250"}, True)
...     m.learn_one({"size": "728x90"}, False)
>>> m.predict_one({"size": "300x250"}) > 0.5 > m.predict_one({"size": "728x90"})
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
from river import linear_model, optim

#: Hash space of the feature ids (shared by the online and the deep model).
N_BUCKETS = 2**20

#: The fields of a bid-request impression, in the deep model's input order.
REQUEST_FIELDS: tuple[str, ...] = (
    "campaign",
    "creative",
    "size",
    "pos",
    "devicetype",
    "os",
    "country",
    "publisher",
    "pub_cat",
    "hour",
    "segment",
)


def _bucket(field: str, value: str) -> int:
    return zlib.crc32(f"{field}\x1f{value}".encode()) % N_BUCKETS


def hash_ids(fields: Mapping[str, str]) -> np.ndarray:
    """One hashed id per field, in the mapping's order (``int64``)."""
    return np.fromiter((_bucket(f, v) for f, v in fields.items()), dtype=np.int64, count=len(fields))


def request_fields(
    request: Any,
    imp: Any,
    campaign: str,
    creative: str = "",
    user: Mapping[str, str] | None = None,
    hour: int | None = None,
) -> dict[str, str]:
    """The :data:`REQUEST_FIELDS` of one impression of an OpenRTB ``request``.

    ``user`` holds the user's profile fields from Redis (``segment``); a
    missing field becomes ``""``, which is a value of its own.
    """
    if imp.banner is not None:
        b = imp.banner
        w, h = b.w, b.h
        if (w is None or h is None) and b.format:
            w, h = b.format[0].w, b.format[0].h
        size = f"{w}x{h}"
        pos = b.pos
    elif imp.video is not None:
        size, pos = "video", imp.video.pos
    elif imp.native is not None:
        size, pos = "native", None
    else:
        size, pos = "other", None
    dev = request.device
    geo = dev.geo if dev is not None else None
    if request.site is not None:
        pub, cats = request.site.domain or request.site.id or "", request.site.cat
    elif request.app is not None:
        pub, cats = request.app.bundle or request.app.id or "", request.app.cat
    else:
        pub, cats = "", None
    return {
        "campaign": campaign,
        "creative": creative,
        "size": size,
        "pos": "" if pos is None else str(pos),
        "devicetype": "" if dev is None or dev.devicetype is None else str(dev.devicetype),
        "os": (dev.os or "") if dev is not None else "",
        "country": (geo.country or "") if geo is not None else "",
        "publisher": pub,
        "pub_cat": cats[0] if cats else "",
        "hour": "" if hour is None else str(hour),
        "segment": (user or {}).get("segment", ""),
    }


def logit(p: float, eps: float = 1e-6) -> float:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[eps, 1 - eps]``."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def sigmoid(x: float) -> float:
    """The logistic function, safe for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class OnlineCTR:
    """A River logistic regression over hashed one-hot features.

    The intercept starts at ``logit(prior_ctr)`` so the first predictions are
    the base rate rather than 0.5, which matters to a bidder pricing from them.
    The weights learn with FTRL-Proximal (McMahan et al. 2013), whose
    per-coordinate rates suit sparse one-hot features; ``lr`` is its
    ``alpha``. ``benchmarks/ctr_quality.py`` measured it against the earlier
    plain SGD (rate 0.05): higher prequential AUC and lower log loss on the
    simulator and on Criteo.
    """

    def __init__(self, prior_ctr: float = 0.02, lr: float = 0.1, l2: float = 1e-6, seed: int = 0) -> None:
        self.prior_ctr = prior_ctr
        self.model = linear_model.LogisticRegression(
            optimizer=optim.FTRLProximal(alpha=lr, beta=1.0, l1=0.0, l2=0.0),
            l2=l2,
            intercept_init=logit(prior_ctr),
            intercept_lr=0.02,
        )
        self.seen = 0

    @staticmethod
    def _x(fields: Mapping[str, str]) -> dict[int, float]:
        return {_bucket(f, v): 1.0 for f, v in fields.items()}

    def predict_one(self, fields: Mapping[str, str]) -> float:
        """P(click) for one impression."""
        return float(self.model.predict_proba_one(self._x(fields))[True])

    def learn_one(self, fields: Mapping[str, str], clicked: bool) -> None:
        """Learn from one labelled impression."""
        self.model.learn_one(self._x(fields), bool(clicked))
        self.seen += 1


class CTRBlend:
    """Blend and calibrate two CTR predictions: ``sigmoid(a*logit(p_online) + b*logit(p_deep) + c)``.

    ``a``, ``b`` and ``c`` are learned online by logistic regression on
    labelled impressions (stacking, which is also Platt calibration). Before
    any label they start as an even blend. Without a deep prediction the
    online one is used alone, calibrated by its own weight.
    """

    def __init__(self, lr: float = 0.01) -> None:
        self.w = np.array([0.5, 0.5, 0.0])
        self.w_online_only = np.array([1.0, 0.0])
        self.lr = lr

    def predict(self, p_online: float, p_deep: float | None) -> float:
        if p_deep is None:
            return sigmoid(self.w_online_only[0] * logit(p_online) + self.w_online_only[1])
        return sigmoid(self.w[0] * logit(p_online) + self.w[1] * logit(p_deep) + self.w[2])

    def learn(self, p_online: float, p_deep: float | None, clicked: bool) -> None:
        y = 1.0 if clicked else 0.0
        lo = logit(p_online)
        g1 = self.predict(p_online, None) - y
        self.w_online_only -= self.lr * g1 * np.array([lo, 1.0])
        if p_deep is not None:
            g = self.predict(p_online, p_deep) - y
            self.w -= self.lr * g * np.array([lo, logit(p_deep), 1.0])
