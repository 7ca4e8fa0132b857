"""Which trained model serves which asset: the worker's view of the registry.

At start the worker loads, for every configured asset and trained detector,
the active version for the asset itself (``pump-1``) or else for its type
(``type:pump``). A version whose files do not match their checksums is refused
with an error in the log naming the file, and the asset runs on without it
(the online detector still covers it): a damaged file must never be scored
with, nor stop the plant's stream.

The hot-swap issue will feed this same lookup from the ``models`` topic
(announcements carry target, detector, version and sha256), so a new version
replaces the old one per (target, detector) without a restart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from stream.config import ServiceConfig
from stream.detection import ScaledModel
from stream.training import TRAINED_DETECTORS

log = logging.getLogger(__name__)

@dataclass
class ModelCatalog:
    """The loaded models per asset, and what could not be loaded and why."""

    by_asset: dict[str, list[ScaledModel]] = field(default_factory=dict)
    #: (target, detector) -> the error that kept it out
    refused: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (target, detector) -> version loaded
    loaded: dict[tuple[str, str], int] = field(default_factory=dict)

    def for_asset(self, asset_id: str) -> list[ScaledModel]:
        return self.by_asset.get(asset_id, [])


def load_catalog(config: ServiceConfig, registry_dir: str | None = None) -> ModelCatalog:
    """Load the active model of every (asset or type, trained detector) from the registry."""
    from detectors.registry import ModelNotFound, ModelRegistry, RegistryError

    registry = ModelRegistry(registry_dir or config.detectors.registry_dir)
    catalog = ModelCatalog()
    cache: dict[tuple[str, str], object | None] = {}
    scales = {s.name for s in config.detector_scales}

    def load(target: str, detector: str):
        key = (target, detector)
        if key not in cache:
            try:
                cache[key] = registry.load(target, detector)
                catalog.loaded[key] = cache[key].version
                log.info("loaded %s v%d for %s", detector, cache[key].version, target)
            except ModelNotFound:
                cache[key] = None
            except (RegistryError, OSError, ValueError, ImportError) as exc:  # ImportError: torch not installed
                cache[key] = None
                catalog.refused[key] = str(exc)
                log.error("refused the %s model of %s: %s", detector, target, exc)
        return cache[key]

    for asset in config.assets:
        models: list[ScaledModel] = []
        for detector in TRAINED_DETECTORS:
            if not getattr(config.detectors, detector).enabled:
                continue
            found = load(asset.id, detector) or load(f"type:{asset.type}", detector)
            if found is None:
                continue
            for scale, model in found.models.items():
                if scale not in scales:
                    continue
                if detector == "lstm_autoencoder":
                    _place_on_device(model.detector, config)
                models.append(ScaledModel(detector, scale, found.version, model))
        if models:
            catalog.by_asset[asset.id] = models
        else:
            log.info("no trained model for %s (nor for type %s): the online detector covers it", asset.id, asset.type)
    return catalog


def _place_on_device(detector, config: ServiceConfig) -> None:
    """Move a loaded LSTM autoencoder to the configured device (auto: CUDA when present)."""
    from detectors.lstm_autoencoder import resolve_device

    settings = config.detectors.lstm_autoencoder
    device = resolve_device(settings.device)
    detector.device = device
    detector.model = detector.model.to(device)
    detector._scaler_cache = None  # center/spread tensors live on the old device
    detector.micro_batch = settings.micro_batch
