"""Deep CTR serving: the registered DeepFM in onnxruntime, and a watcher that hot-swaps it.

:class:`DeepCTRModel` holds one registry version of the ``ctr`` model,
verified (sha256, :meth:`ModelRegistry.read_verified`) and loaded into an
onnxruntime session (one intra-op thread: a worker shares its cores). Its
input is the id matrix of :func:`online_models.ctr.hash_ids` (one column
per field of ``metadata["fields"]``), its output P(click) per row.

:class:`RegistryWatcher` polls the registry's production alias and swaps the
model atomically: the new version is loaded and verified completely before
the reference is replaced, so a caller holds whichever model it read, never a
half-built one. A version whose files fail verification or loading is
refused (its reason kept in :attr:`RegistryWatcher.refused`, not retried) and
the old model keeps serving. Training lives in :mod:`offline_training.ctr`;
nothing here imports torch.

Examples
--------
>>> import tempfile
>>> from serving.registry import ModelRegistry
>>> watcher = RegistryWatcher(ModelRegistry(tempfile.mkdtemp()), "ctr", DeepCTRModel)
>>> watcher.refresh(), watcher.model is None   # nothing registered yet
(False, True)
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from serving.registry import ModelRegistry, ModelVersion, RegistryError

log = logging.getLogger(__name__)

M = TypeVar("M")


class DeepCTRModel:
    """One verified version of the deep CTR model, ready to score.

    ``DeepCTRModel(mv, registry)`` loads ``mv``; :meth:`load` loads the
    production (or a given) version by name. Raises
    :class:`serving.registry.ModelIntegrityError` if ``model.onnx`` does not
    match its recorded sha256, and :class:`serving.registry.RegistryError` if
    the version is not a deep CTR model.
    """

    def __init__(self, mv: ModelVersion, registry: ModelRegistry) -> None:
        import onnxruntime as ort

        meta = mv.metadata
        fields = meta.get("fields")
        if not isinstance(fields, list) or not fields:
            raise RegistryError(f"{mv.tag}: metadata has no 'fields' list; not a deep CTR model")
        onnx_bytes = registry.read_verified(mv, "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        inputs = [i.name for i in session.get_inputs()]
        outputs = [o.name for o in session.get_outputs()]
        if inputs != ["ids"] or "pctr" not in outputs:
            raise RegistryError(
                f"{mv.tag}: ONNX graph has inputs {inputs} and outputs {outputs}; want ids -> pctr"
            )
        self.mv = mv
        self.session = session
        self.fields: tuple[str, ...] = tuple(str(f) for f in fields)
        self.n_buckets = int(meta.get("n_buckets", 0))
        self.model_buckets = int(meta.get("model_buckets", 0))
        self.kind = str(meta.get("kind", ""))

    @classmethod
    def load(cls, registry: ModelRegistry, name: str = "ctr", version: int | None = None) -> DeepCTRModel:
        """The production version of ``name`` (or ``version``), verified and loaded."""
        if version is None:
            mv = registry.production(name)
            if mv is None:
                raise RegistryError(f"no production version of {name!r} in {registry.root}; train one first")
        else:
            mv = registry.get(name, version)
        return cls(mv, registry)

    @property
    def version(self) -> int:
        """The registry version number."""
        return self.mv.version

    @property
    def tag(self) -> str:
        """``name:vN``."""
        return self.mv.tag

    def predict(self, ids: np.ndarray) -> np.ndarray:
        """P(click) (float32 ``[B]``) for hashed ids ``int64 [B, len(fields)]``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != len(self.fields):
            raise ValueError(
                f"{self.tag} expects ids of shape (batch, {len(self.fields)}) for fields {self.fields}, "
                f"got {ids.shape}"
            )
        if ids.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        (out,) = self.session.run(["pctr"], {"ids": ids})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def __repr__(self) -> str:
        return f"DeepCTRModel({self.tag}, {self.kind}, {len(self.fields)} fields)"


class RegistryWatcher(Generic[M]):
    """Keeps :attr:`model` on the production version of ``name``, swapping atomically.

    ``load(mv, registry)`` builds the serving object of a version (for
    example :class:`DeepCTRModel`). :meth:`refresh` loads synchronously (a
    thread or a test); :meth:`check` does the same from an event loop, with
    the loading in a worker thread so requests keep being served meanwhile.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        load: Callable[[ModelVersion, ModelRegistry], M],
        metrics: Any = None,
    ) -> None:
        self.registry = registry
        self.name = name
        self._load = load
        self.metrics = metrics
        self.model: M | None = None
        self.loaded_version: int | None = None
        self.refused: dict[int, str] = {}
        self.swaps = 0
        self._lock = threading.Lock()

    def _wanted(self) -> int | None:
        """The production version if it is new and not refused, else None."""
        try:
            version = self.registry.production_version(self.name)
        except RegistryError as exc:
            log.warning("model registry unreadable: %s", exc)
            return None
        if version is None or version in self.refused or version == self.loaded_version:
            return None
        return version

    def _build(self, version: int) -> M | None:
        try:
            mv = self.registry.get(self.name, version)
            return self._load(mv, self.registry)
        except Exception as exc:  # a bad version must never take the serving model down
            self.refused[version] = f"{type(exc).__name__}: {exc}"
            if self.metrics is not None:
                self.metrics.model_load_errors.labels(model=self.name).inc()
            log.error(
                "refusing model %s v%s (still serving v%s): %s", self.name, version, self.loaded_version, exc
            )
            return None

    def _swap(self, version: int, model: M) -> None:
        self.model = model  # one reference assignment: readers see the old or the new model
        self.loaded_version = version
        self.swaps += 1
        if self.metrics is not None:
            self.metrics.model_version.labels(model=self.name).set(version)
        log.warning("serving model %s:v%s", self.name, version)

    def refresh(self) -> bool:
        """Load the production version if it changed; True if a new model was swapped in."""
        with self._lock:
            version = self._wanted()
            if version is None:
                return False
            model = self._build(version)
            if model is None:
                return False
            self._swap(version, model)
            return True

    async def check(self) -> bool:
        """:meth:`refresh` for an event loop: the loading runs in a thread."""
        return await asyncio.to_thread(self.refresh)

    def status(self) -> dict[str, Any]:
        """The serving version and the refused ones, for a status endpoint."""
        return {
            "model": f"{self.name}:v{self.loaded_version}" if self.loaded_version is not None else None,
            "refused": {str(v): why for v, why in self.refused.items()},
        }


def deep_ctr_watcher(
    registry: ModelRegistry, name: str = "ctr", metrics: Any = None
) -> RegistryWatcher[DeepCTRModel]:
    """A :class:`RegistryWatcher` of :class:`DeepCTRModel` (call ``refresh()`` once at startup)."""
    return RegistryWatcher(registry, name, DeepCTRModel, metrics)
