"""The service configuration: one YAML file, validated at start.

Every error names the file, the key (with the asset and tag ids when the key is
inside one) and what is wrong, so that an integrator can fix the file without
reading code. Environment variables override the file: ``EDGEWATCH_`` + the key
path in capitals with ``__`` between levels, e.g.
``EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``EDGEWATCH_WORKER__MAX_FUTURE_S=60``. Their values are read as YAML scalars.

The reference for every key is docs/configuration.md.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stream.topics import TopicNames

# An id of an asset or a tag: what operators read on screens and what Kafka keys carry.
Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]*$")]


class ConfigError(ValueError):
    """The configuration is invalid. The message lists every problem found."""


def _unique_ids(items: list, kind: str) -> list:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise ValueError(f'{kind} id "{item.id}" appears twice')
        seen.add(item.id)
    return items


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    topic_prefix: str = Field("edgewatch", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    #: partitions of the readings topic; workers scale out up to this many.
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1, le=16)

    @property
    def topics(self) -> TopicNames:
        return TopicNames.with_prefix(self.topic_prefix)


class WorkerSettings(_Section):
    #: the Kafka consumer group; also names the state changelog topic.
    app_id: str = Field("edgewatch-worker", pattern=r"^[A-Za-z0-9._-]+$")
    #: a batch with a sample further in the future than this is rejected (clock or unit error at the source).
    max_future_s: float = Field(300.0, gt=0)
    #: faust consumer session timeout; a restarted worker rejoins after at most this long.
    session_timeout_s: float = Field(10.0, ge=6.0, le=300.0)
    #: how often processed offsets are committed.
    commit_interval_s: float = Field(1.0, gt=0, le=60.0)
    #: where faust keeps its local files (the state itself is in a Kafka changelog topic).
    data_dir: str = ".edgewatch/worker"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class Limits(_Section):
    """Static limits of one tag, in the tag's unit. A limit left out is not checked."""

    low: float | None = None
    high: float | None = None
    #: an alert clears only once the value is back inside the limit by this much (ISA-18.2 deadband).
    deadband: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Limits":
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class TagConfig(_Section):
    id: Identifier
    unit: str = ""
    description: str = ""
    #: the range seen in normal operation, shown to operators next to a value.
    normal_range: tuple[float, float] | None = None
    limits: Limits = Limits()

    @field_validator("normal_range")
    @classmethod
    def _range_ordered(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"normal_range must be [low, high] with low < high, got {list(value)}")
        return value


class AssetConfig(_Section):
    id: Identifier
    type: Literal["pump", "motor", "fan", "compressor", "generic"] = "generic"
    criticality: Literal["low", "medium", "high"] = "medium"
    area: str = "default"
    tags: list[TagConfig] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[TagConfig]) -> list[TagConfig]:
        return _unique_ids(tags, "tag")


class LimitRuleSettings(_Section):
    enabled: bool = True


class RuleSettings(_Section):
    limits: LimitRuleSettings = LimitRuleSettings()


class ServiceConfig(_Section):
    kafka: KafkaSettings = KafkaSettings()
    worker: WorkerSettings = WorkerSettings()
    rules: RuleSettings = RuleSettings()
    assets: list[AssetConfig] = Field(min_length=1)

    @field_validator("assets")
    @classmethod
    def _unique_assets(cls, assets: list[AssetConfig]) -> list[AssetConfig]:
        return _unique_ids(assets, "asset")

    def asset(self, asset_id: str) -> AssetConfig | None:
        return self._assets_by_id.get(asset_id)

    @cached_property
    def _assets_by_id(self) -> dict[str, AssetConfig]:
        return {a.id: a for a in self.assets}


_SECTIONS = {name for name in ServiceConfig.model_fields if name != "assets"}
ENV_PREFIX = "EDGEWATCH_"


def _apply_env_overrides(doc: dict, environ: Mapping[str, str]) -> list[str]:
    """Apply EDGEWATCH_SECTION__KEY=value overrides in place; return the names applied."""
    applied = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # EDGEWATCH_CACHE and friends belong to the tooling, not the service
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in _SECTIONS:
            continue
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment variable {name}: value is not a valid YAML scalar: {exc}") from None
        node = doc
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {name}: '{part}' is not a section that can hold keys")
            node = child
        node[path[-1]] = value
        applied.append(name)
    return applied


def _describe_location(doc: Any, loc: tuple) -> str:
    """('assets', 0, 'tags', 2, 'limits', 'high') -> 'assets[0] (asset "pump-1") tags[2] (tag "x") limits.high'."""
    words: list[str] = []
    node = doc
    for part in loc:
        if isinstance(part, int):
            label = ""
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                if isinstance(node, dict) and "id" in node:
                    kind = "tag" if words and words[-1].startswith("tags") else "asset"
                    label = f' ({kind} "{node["id"]}")'
            else:
                node = None
            words[-1] = f"{words[-1]}[{part}]{label}" if words else f"[{part}]"
        else:
            node = node.get(part) if isinstance(node, dict) else None
            if words and not words[-1].endswith(")"):
                words[-1] = f"{words[-1]}.{part}"
            else:
                words.append(str(part))
    return " ".join(words) or "(top level)"


def parse_config(doc: Any, source: str, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Validate a parsed YAML document. ``source`` names the file in error messages."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"configuration invalid in {source}: the file must hold a mapping of sections, got {type(doc).__name__}")
    applied = _apply_env_overrides(doc, os.environ if environ is None else environ)
    try:
        return ServiceConfig.model_validate(doc)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = _describe_location(doc, tuple(error["loc"]))
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (misspelt? see docs/configuration.md)"
            lines.append(f"  {where}: {message}")
        overrides = f" (with environment overrides {', '.join(applied)})" if applied else ""
        raise ConfigError(f"configuration invalid in {source}{overrides}:\n" + "\n".join(lines)) from None


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate the YAML file at ``path``. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist (pass --config with the path of your plant file)") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration invalid in {path}: not valid YAML: {exc}") from None
    return parse_config(doc, str(path), environ)
