"""File-based model registry: versioned model files, metadata, metrics and sha256.

Layout under the registry root::

    <root>/<name>/index.json            versions and the production alias
    <root>/<name>/v<N>/meta.json        files with sha256, metadata, metrics
    <root>/<name>/v<N>/<files>          model.onnx, vectors, ...

Every file's sha256 is recorded when it is registered and checked again
before it is loaded; :meth:`ModelRegistry.read_verified` returns the bytes
that were hashed, so what is loaded is exactly what was verified. Only ONNX
graphs and ``.npy`` arrays (loaded with ``allow_pickle=False``) are ever
read back: nothing is unpickled.

Writes go to a temporary name and are renamed into place, so a reader never
sees half a file, and a worker watching the production alias hot-swaps to a
new version the moment it is promoted.

Examples
--------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> src = root / "m.bin"; _ = src.write_bytes(b"weights")
>>> reg = ModelRegistry(root / "registry")
>>> mv = reg.register("recs", {"model.onnx": src}, metadata={"arch": "gmf"}, metrics={"hr10": 0.6})
>>> mv.version, reg.production("recs").version
(1, 1)
>>> reg.read_verified(mv, "model.onnx")
b'weights'
>>> _ = (mv.path / "model.onnx").write_bytes(b"tampered")
>>> reg.read_verified(mv, "model.onnx")
Traceback (most recent call last):
...
serving.registry.ModelIntegrityError: recs v1 model.onnx: sha256 mismatch (file has d121be3..., ...
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class RegistryError(RuntimeError):
    """A model or version is missing, or the registry is malformed."""


class ModelIntegrityError(RegistryError):
    """A model file does not match the sha256 the registry recorded for it."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced temporary file: a reader sees all of it or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model."""

    name: str
    version: int
    path: Path
    files: dict[str, str]  # file name -> sha256
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def tag(self) -> str:
        """``name:vN``, the version's id in outputs and metrics."""
        return f"{self.name}:v{self.version}"


class ModelRegistry:
    """Versioned models in a folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- index --------------------------------------------------------------------
    def _index_path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise RegistryError(f"bad model name {name!r}")
        return self.root / name / "index.json"

    def _index(self, name: str) -> dict[str, Any]:
        p = self._index_path(name)
        if not p.exists():
            return {"versions": [], "production": None}
        try:
            data: dict[str, Any] = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            raise RegistryError(f"{p}: unreadable registry index: {exc}") from None
        return data

    def _write_index(self, name: str, index: dict[str, Any]) -> None:
        atomic_write(self._index_path(name), json.dumps(index, indent=2).encode())

    def names(self) -> list[str]:
        """Registered model names."""
        if not self.root.exists():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/index.json"))

    def next_version(self, name: str) -> int:
        """The number the next :meth:`register` of ``name`` will get."""
        return max(self._index(name)["versions"], default=0) + 1

    def versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first."""
        return [self.get(name, v) for v in self._index(name)["versions"]]

    # -- write --------------------------------------------------------------------
    def register(
        self,
        name: str,
        files: Mapping[str, str | os.PathLike[str] | bytes],
        metadata: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        promote: bool = True,
    ) -> ModelVersion:
        """Copy ``files`` (name → path or bytes) into a new version; promote it to production by default."""
        index = self._index(name)
        version = self.next_version(name)
        vdir = self.root / name / f"v{version}"
        if vdir.exists():
            shutil.rmtree(vdir)  # left over from a crashed register: never indexed
        hashes: dict[str, str] = {}
        for fname, src in files.items():
            if "/" in fname or fname in ("meta.json", "index.json"):
                raise RegistryError(f"bad file name {fname!r}")
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            atomic_write(vdir / fname, data)
            hashes[fname] = sha256_bytes(data)
        meta = {
            "name": name,
            "version": version,
            "files": hashes,
            "metadata": dict(metadata or {}),
            "metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "created_at": time.time(),
        }
        atomic_write(vdir / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode())
        index["versions"].append(version)
        if promote:
            index["production"] = version
        self._write_index(name, index)
        return self.get(name, version)

    def promote(self, name: str, version: int) -> ModelVersion:
        """Point the production alias of ``name`` at ``version`` (after verifying its files)."""
        mv = self.get(name, version)
        self.verify(mv)
        index = self._index(name)
        index["production"] = version
        self._write_index(name, index)
        return mv

    # -- read ---------------------------------------------------------------------
    def get(self, name: str, version: int) -> ModelVersion:
        """One version's record."""
        vdir = self.root / name / f"v{int(version)}"
        try:
            meta = json.loads((vdir / "meta.json").read_text())
        except FileNotFoundError:
            raise RegistryError(f"{name} v{version} is not registered under {self.root}") from None
        except ValueError as exc:
            raise RegistryError(f"{vdir}/meta.json: {exc}") from None
        return ModelVersion(
            name=name,
            version=int(meta["version"]),
            path=vdir,
            files=dict(meta["files"]),
            metadata=dict(meta.get("metadata", {})),
            metrics=dict(meta.get("metrics", {})),
            created_at=float(meta.get("created_at", 0.0)),
        )

    def production_version(self, name: str) -> int | None:
        """The version number the production alias points at (cheap: reads the index only)."""
        v = self._index(name)["production"]
        return None if v is None else int(v)

    def production(self, name: str) -> ModelVersion | None:
        """The production version of ``name``, or None if nothing is registered."""
        v = self.production_version(name)
        return None if v is None else self.get(name, v)

    def read_verified(self, mv: ModelVersion, fname: str) -> bytes:
        """The bytes of one file of ``mv``, after checking them against the recorded sha256."""
        expected = mv.files.get(fname)
        if expected is None:
            raise RegistryError(f"{mv.name} v{mv.version} has no file {fname!r} (has {sorted(mv.files)})")
        try:
            data = (mv.path / fname).read_bytes()
        except FileNotFoundError:
            raise ModelIntegrityError(f"{mv.name} v{mv.version} {fname}: file is missing") from None
        actual = sha256_bytes(data)
        if actual != expected:
            raise ModelIntegrityError(
                f"{mv.name} v{mv.version} {fname}: sha256 mismatch "
                f"(file has {actual[:7]}..., registry says {expected[:7]}...)"
            )
        return data

    def verify(self, mv: ModelVersion) -> None:
        """Check every file of ``mv``; raise :class:`ModelIntegrityError` on the first mismatch."""
        for fname in mv.files:
            self.read_verified(mv, fname)

    def load_array(self, mv: ModelVersion, fname: str) -> np.ndarray:
        """A verified ``.npy`` file (never unpickled)."""
        return np.load(io.BytesIO(self.read_verified(mv, fname)), allow_pickle=False)

    def load_json(self, mv: ModelVersion, fname: str) -> Any:
        """A verified JSON file."""
        return json.loads(self.read_verified(mv, fname))
