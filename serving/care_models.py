"""Serve the offline text classifiers (intent, sentiment) with onnxruntime; torch is never imported.

The ONNX file written by :func:`offline_training.text.export_onnx` is self-describing:
its metadata properties hold the class labels and the feature settings, and the graph
holds the hashed-id maps and IDF weights. :class:`OnnxTextClassifier` only hashes the
text's features with :mod:`online_models.text` (numpy) and runs one onnxruntime call
per batch.

Load a production version from the model registry (sha256-verified bytes) with
:meth:`OnnxTextClassifier.from_registry`, or a file with :meth:`OnnxTextClassifier.from_path`.

Examples
--------
>>> import pathlib
>>> OnnxTextClassifier.from_path(pathlib.Path("/nonexistent/intent.onnx"))
Traceback (most recent call last):
...
FileNotFoundError: /nonexistent/intent.onnx: no such ONNX model (train one with offline_training.text)
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from online_models.text import bow_counts, pad_bow, pad_subwords, subword_ids
from serving.registry import ModelRegistry, ModelVersion, RegistryError

#: The input contract this loader understands (``offline_training.text.FORMAT_VERSION``).
SUPPORTED_FORMAT = 1
ONNX_FILE = "model.onnx"


class OnnxTextClassifier:
    """Batch and single-text class probabilities from an exported text ensemble.

    Parameters
    ----------
    model
        The ONNX file's bytes.
    threads
        onnxruntime intra-op threads (1 suits a worker that runs one model per core).
    batch_size
        Texts per onnxruntime call in :meth:`predict_proba` (bounds the padding).
    """

    def __init__(self, model: bytes, threads: int = 1, batch_size: int = 256) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        fmt = meta.get("shopstream.format")
        if fmt is None or int(fmt) != SUPPORTED_FORMAT:
            raise ValueError(
                f"ONNX model has text-model format {fmt!r}, this loader reads {SUPPORTED_FORMAT}: "
                "re-export it with offline_training.text.export_onnx"
            )
        self.labels: list[str] = list(json.loads(meta["shopstream.labels"]))
        self.features: dict[str, Any] = dict(json.loads(meta["shopstream.features"]))
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.batch_size = batch_size
        self.version: ModelVersion | None = None

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], **kw: Any) -> OnnxTextClassifier:
        """Load an ONNX file from disk."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such ONNX model (train one with offline_training.text)")
        return cls(p.read_bytes(), **kw)

    @classmethod
    def from_registry(
        cls, registry: ModelRegistry, name: str, version: int | None = None, **kw: Any
    ) -> OnnxTextClassifier:
        """Load ``name``'s production version (or ``version``) after verifying its sha256."""
        mv = registry.get(name, version) if version is not None else registry.production(name)
        if mv is None:
            raise RegistryError(
                f"no production version of {name!r} under {registry.root}: train and register one"
            )
        clf = cls(registry.read_verified(mv, ONNX_FILE), **kw)
        clf.version = mv
        return clf

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The graph's input arrays for ``texts``."""
        f = self.features
        n_buckets = int(f["n_buckets"])
        kw = {k: f[k] for k in ("skip", "trigrams", "char_min", "char_max")}
        feeds: dict[str, np.ndarray] = {}
        if "bow_ids" in self.input_names or "bow_counts" in self.input_names:
            ids, counts = pad_bow([bow_counts(t, n_buckets, **kw) for t in texts])
            feeds.update(bow_ids=ids, bow_counts=counts)
        if "sub_ids" in self.input_names or "sub_mask" in self.input_names:
            sids, mask = pad_subwords([subword_ids(t, int(f["max_tokens"]), n_buckets) for t in texts])
            feeds.update(sub_ids=sids, sub_mask=mask)
        return {k: v for k, v in feeds.items() if k in self.input_names}

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities ``[len(texts), len(labels)]`` (columns in :attr:`labels` order)."""
        out = [
            self.session.run(["probs"], self.encode(texts[s : s + self.batch_size]))[0]
            for s in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict_proba_one(self, text: str) -> dict[Hashable, float]:
        """``{label: probability}`` for one text."""
        p = self.predict_proba([text])[0]
        return {label: float(v) for label, v in zip(self.labels, p, strict=True)}

    def predict_with_confidence(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """``(label, max probability)`` per text; the confidence feeds the out-of-scope detector."""
        p = self.predict_proba(texts)
        best = p.argmax(1) if len(p) else np.zeros(0, dtype=int)
        return [(self.labels[int(i)], float(p[r, i])) for r, i in enumerate(best)]

    def predict_one(self, text: str) -> str:
        """The most probable label of one text."""
        return self.predict_with_confidence([text])[0][0]
