"""Versioned model artifacts on disk: what `edgewatch train` writes and workers load.

Layout, one folder per version::

    <root>/<quoted target>/<detector>/v<N>/
        manifest.json          what the version is, and the SHA-256 of every file
        <scale>.model          each window scale's detector file ...
        <scale>.json           ... and its calibration sidecar (detectors.model)
    <root>/<quoted target>/<detector>/ACTIVE    the version workers use

The target is an asset id ("pump-1") or an asset type ("type:pump"). Ids may
hold ':' and '/', so folder names are ``urllib.parse.quote(target, safe="")``
("type%3Apump"); scale names too ("1m/10s" -> "1m%2F10s.model").

Guarantees:

* a version is written into a temporary folder and renamed into place, so a
  crash never leaves half a version; a version number is never reused;
* ``ACTIVE`` is replaced atomically (written beside it, then ``os.replace``),
  so a worker reads the old version or the new one, never a torn file;
* ``load`` checks every file's SHA-256 against the manifest BEFORE reading any
  of them. This matters beyond bit rot: the half-space trees file is a pickle,
  and unpickling runs code, so only verified bytes are unpickled.

The manifest's ``sha256`` is the SHA-256 of the canonical JSON of its ``files``
map (sorted keys, no spaces): one digest that pins every file of the version,
which the models-topic announcement carries.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from detectors.model import CalibratedModel

MANIFEST = "manifest.json"
ACTIVE = "ACTIVE"
SCHEMA_VERSION = 1
_VERSION_DIR = re.compile(r"^v([1-9][0-9]*)$")
_DETECTOR_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_LIBRARIES = {"numpy": "numpy", "scikit-learn": "scikit-learn", "river": "river", "torch": "torch", "edgewatch": "edgewatch"}


class RegistryError(Exception):
    """The model registry cannot do what was asked."""


class ModelNotFound(RegistryError, LookupError):
    """No such target, detector or version (or no active version) in the registry."""


class ModelIntegrityError(RegistryError):
    """A version's files do not match its manifest: missing, changed or unreadable."""

    def __init__(self, message: str, path: Path | None = None, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.path, self.expected, self.actual = path, expected, actual


@dataclass(frozen=True)
class ModelVersion:
    """One saved version: where it lies and what its manifest says."""

    target: str
    detector: str
    version: int
    path: Path
    manifest: dict

    @property
    def sha256(self) -> str:
        return self.manifest["sha256"]

    @property
    def created_at(self) -> str:
        return self.manifest["created_at"]


@dataclass(frozen=True)
class LoadedModels:
    """A verified version, loaded: its manifest and one CalibratedModel per window scale."""

    manifest: dict
    models: dict[str, CalibratedModel]

    @property
    def version(self) -> int:
        return self.manifest["version"]


def utc_iso(value: datetime | int | str) -> str:
    """A UTC time as the wire writes it: ``2026-03-14T08:15:00.000000Z``.

    Accepts a timezone-aware datetime, microseconds since the epoch (how windows
    carry event time) or an ISO 8601 string with a zone.
    """
    if isinstance(value, bool):
        raise RegistryError(f"not a time: {value!r}")
    if isinstance(value, int):
        value = datetime.fromtimestamp(value / 1_000_000, tz=timezone.utc)
    elif isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise RegistryError(f"{value!r} is not an ISO 8601 time: write e.g. 2026-03-14T08:15:00Z") from None
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise RegistryError(f"{value!r} has no time zone: give UTC times (a timezone-aware datetime, or a string ending in Z)")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def files_digest(files: Mapping[str, str]) -> str:
    """SHA-256 of the canonical JSON of a manifest's ``files`` map (the version's one digest)."""
    canonical = json.dumps(dict(files), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions of what the models were made with (read from package metadata: nothing is imported)."""
    versions = {"python": platform.python_version()}
    for key, distribution in _LIBRARIES.items():
        try:
            versions[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            pass  # torch is optional; edgewatch may run from a source tree
    return versions


class ModelRegistry:
    """Model versions under ``root`` (a folder; created on first save)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    # -- paths -------------------------------------------------------------------------

    def _detector_dir(self, target: str, detector: str) -> Path:
        if target in ("", ".", ".."):
            raise RegistryError(f"{target!r} is not a target: give an asset id (pump-1) or an asset type (type:pump)")
        if not _DETECTOR_NAME.match(detector):
            raise RegistryError(f"{detector!r} is not a detector name: lower-case letters, digits and _ (e.g. isolation_forest)")
        return self.root / quote(target, safe="") / detector

    def version_dir(self, target: str, detector: str, version: int) -> Path:
        return self._detector_dir(target, detector) / f"v{int(version)}"

    # -- listing -----------------------------------------------------------------------

    def versions(self, target: str, detector: str) -> list[int]:
        """Version numbers on disk, oldest first."""
        base = self._detector_dir(target, detector)
        if not base.is_dir():
            return []
        return sorted(int(m.group(1)) for m in map(_VERSION_DIR.match, os.listdir(base)) if m)

    def active_version(self, target: str, detector: str) -> int | None:
        """The version workers should use, or None if none was activated."""
        path = self._detector_dir(target, detector) / ACTIVE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return int(doc["version"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as error:
            raise ModelIntegrityError(
                f"{path} is unreadable ({error}): activate a version again (ModelRegistry.activate)", path=path
            ) from None

    def get(self, target: str, detector: str, version: int | None = None) -> ModelVersion:
        """A version's manifest and folder (the active one if ``version`` is None); nothing is verified."""
        version = self._resolve(target, detector, version)
        path = self.version_dir(target, detector, version)
        return ModelVersion(target, detector, version, path, self._read_manifest(path))

    # -- writing -----------------------------------------------------------------------

    def save(
        self,
        target: str,
        detector: str,
        models: Mapping[str, CalibratedModel],
        *,
        feature_spec: dict,
        training: dict,
        metrics: dict,
    ) -> ModelVersion:
        """Write a new version of ``detector`` for ``target``: one model per window scale.

        ``feature_spec``: how the feature columns are made (JSON); ``training``:
        ``from`` / ``to`` (event time: datetime, epoch microseconds or ISO),
        ``windows``, ``source`` and anything else worth keeping; ``metrics``:
        e.g. fit_calibrated's metrics per scale. Does not activate the version.
        """
        if not models:
            raise RegistryError(f"no models to save for {target} / {detector}: train at least one window scale")
        wrong = sorted({model.name for model in models.values()} - {detector})
        if wrong:
            raise RegistryError(f"models of detector {', '.join(wrong)} cannot be saved as {detector}")
        training = _training(training)
        try:  # fail before writing anything if the records are not JSON
            json.dumps([feature_spec, training, metrics], allow_nan=False, default=_plain)
        except (TypeError, ValueError) as error:
            raise RegistryError(f"feature_spec, training and metrics must be JSON (finite numbers, str keys): {error}") from None
        base = self._detector_dir(target, detector)
        base.mkdir(parents=True, exist_ok=True)
        incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=base))
        try:
            scales = {}
            for scale, model in models.items():
                stem = quote(scale, safe="")
                model_file, sidecar = model.save(incoming, stem)
                scales[scale] = {"model": model_file, "sidecar": sidecar, "features": len(model.feature_names)}
            files = {name: file_sha256(incoming / name) for name in sorted(os.listdir(incoming))}
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "target": target,
                "detector": detector,
                "version": 0,  # set when the version number is claimed
                "scales": scales,
                "feature_spec": feature_spec,
                "training": training,
                "metrics": metrics,
                "files": files,
                "sha256": files_digest(files),
                "created_at": utc_iso(datetime.now(timezone.utc)),
                "libraries": library_versions(),
            }
            for name in files:
                _fsync(incoming / name)
            version = self._claim(base, incoming, manifest)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
        return ModelVersion(target, detector, version, base / f"v{version}", manifest)

    def _claim(self, base: Path, incoming: Path, manifest: dict) -> int:
        """Rename ``incoming`` to the next free ``v<N>``; a concurrent save that took N makes us try N+1."""
        version = max(self.versions(manifest["target"], manifest["detector"]), default=0) + 1
        while True:
            manifest["version"] = version
            _write_json(incoming / MANIFEST, manifest)
            final = base / f"v{version}"
            if not final.exists():
                try:
                    os.rename(incoming, final)  # atomic; fails if another save created `final` meanwhile
                    _fsync(base)
                    return version
                except OSError:
                    if not final.exists():
                        raise
            version += 1

    def activate(self, target: str, detector: str, version: int) -> None:
        """Make ``version`` the one workers load (atomically replaces ACTIVE)."""
        path = self.version_dir(target, detector, version)
        if not (path / MANIFEST).is_file():
            raise ModelNotFound(
                f"cannot activate {detector} v{version} for {target}: no such version in {self.root} "
                f"(versions: {self.versions(target, detector) or 'none'})"
            )
        base = path.parent
        doc = {"version": int(version), "activated_at": utc_iso(datetime.now(timezone.utc))}
        handle, temporary = tempfile.mkstemp(prefix=".ACTIVE-", dir=base)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                file.write(json.dumps(doc) + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, base / ACTIVE)
            _fsync(base)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    # -- reading -----------------------------------------------------------------------

    def load(self, target: str, detector: str, version: int | None = None) -> LoadedModels:
        """Verify every file of a version against its manifest, then load its models.

        ``version`` None: the active version. Raises ``ModelNotFound`` or
        ``ModelIntegrityError`` (naming the file, the expected and the actual digest).
        """
        found = self.get(target, detector, version)
        manifest = self.verify(found)
        models = {
            scale: CalibratedModel.load(found.path, quote(scale, safe="")) for scale in manifest["scales"]
        }
        return LoadedModels(manifest, models)

    def verify(self, found: ModelVersion) -> dict:
        """Check a version's manifest and every file's SHA-256; returns the manifest."""
        manifest, path = found.manifest, found.path
        redo = (
            f"retrain ({found.detector} for {found.target}) or copy version v{found.version} again from where it was "
            "made, or activate another version"
        )
        where = {"target": found.target, "detector": found.detector, "version": found.version}
        for key, expected in where.items():
            if manifest.get(key) != expected:
                raise ModelIntegrityError(
                    f"{path / MANIFEST} says {key} {manifest.get(key)!r} but lies at {key} {expected!r}: "
                    f"the folder was copied or renamed by hand; {redo}",
                    path=path / MANIFEST,
                )
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise ModelIntegrityError(f"{path / MANIFEST} lists no files: {redo}", path=path / MANIFEST)
        digest = files_digest(files)
        if digest != manifest.get("sha256"):
            raise ModelIntegrityError(
                f"{path / MANIFEST}: the files listed do not match the manifest's sha256 (expected "
                f"{manifest.get('sha256')}, got {digest}): the manifest was edited; {redo}",
                path=path / MANIFEST,
                expected=manifest.get("sha256"),
                actual=digest,
            )
        for name, expected in files.items():
            file = path / name
            if Path(name).name != name:
                raise ModelIntegrityError(f"{path / MANIFEST} lists {name!r}, which is not a file of the version: {redo}", path=file)
            try:
                actual = file_sha256(file)
            except FileNotFoundError:
                raise ModelIntegrityError(
                    f"model file {file} is missing (expected sha256 {expected}): {redo}", path=file, expected=expected
                ) from None
            if actual != expected:
                raise ModelIntegrityError(
                    f"model file {file} is damaged or was changed: sha256 expected {expected}, actual {actual}: {redo}",
                    path=file,
                    expected=expected,
                    actual=actual,
                )
        return manifest

    def _resolve(self, target: str, detector: str, version: int | None) -> int:
        available = self.versions(target, detector)
        if version is None:
            version = self.active_version(target, detector)
            if version is None:
                raise ModelNotFound(
                    f"no active {detector} model for {target} in {self.root} (versions on disk: {available or 'none'}): "
                    + ("activate one (ModelRegistry.activate)" if available else "train one with `edgewatch train`")
                )
        if version not in available:
            raise ModelNotFound(
                f"no {detector} v{version} for {target} in {self.root} (versions on disk: {available or 'none'}): "
                "train one with `edgewatch train`, or pick an existing version"
            )
        return version

    def _read_manifest(self, path: Path) -> dict:
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelIntegrityError(
                f"{path / MANIFEST} is missing, so the version's files cannot be verified: retrain, or copy the "
                "whole version folder again",
                path=path / MANIFEST,
            ) from None
        except (ValueError, UnicodeDecodeError) as error:
            raise ModelIntegrityError(
                f"{path / MANIFEST} is not valid JSON ({error}): retrain, or copy the whole version folder again",
                path=path / MANIFEST,
            ) from None
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            raise ModelIntegrityError(
                f"{path / MANIFEST} is not a schema version {SCHEMA_VERSION} manifest: retrain with this edgewatch",
                path=path / MANIFEST,
            )
        return manifest

    # -- the models topic --------------------------------------------------------------

    def announcement(self, version: ModelVersion) -> dict:
        """The models-topic message for a version (stream/schemas/models.schema.json).

        Key it ``<target>/<detector>``. ``active`` is read from ACTIVE now.
        """
        manifest = version.manifest
        message: dict[str, Any] = {"schema_version": 1, "kind": "model"}
        if version.target.startswith("type:"):
            message["asset_type"] = version.target.removeprefix("type:")
        else:
            message["asset_id"] = version.target
        message |= {
            "detector": version.detector,
            "version": version.version,
            "artifact_uri": version.path.resolve().as_uri(),
            "sha256": manifest["sha256"],
            "created_at": manifest["created_at"],
            "active": self.active_version(version.target, version.detector) == version.version,
        }
        training = manifest.get("training", {})
        if training.get("from"):
            message["trained_from"] = training["from"]
        if training.get("to"):
            message["trained_to"] = training["to"]
        message["scales"] = list(manifest["scales"])
        if manifest.get("metrics"):
            message["metrics"] = manifest["metrics"]
        return message


def _training(training: Mapping[str, Any]) -> dict:
    """The training record with its event times in the wire's UTC form."""
    record = dict(training)
    for key in ("from", "to"):
        if record.get(key) is not None:
            record[key] = utc_iso(record[key])
    return record


def _plain(value: Any) -> Any:
    """numpy numbers and arrays as plain JSON (metrics often hold them)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON")


def _write_json(path: Path, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write(json.dumps(doc, indent=2, allow_nan=False, default=_plain) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _fsync(path: Path) -> None:
    """Flush a file or a folder to disk, so a rename that follows survives a power cut."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
