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
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

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
    #: which stages `edgewatch worker` runs: "rules" (fast rules, alerts, dead letters),
    #: "analytics" (windows, features, detectors; its own consumer group, app_id + "-analytics"),
    #: or "all": both, as two processes, so the alert path never waits for stream 2.
    role: Literal["all", "rules", "analytics"] = "all"


class Limits(_Section):
    """Static limits of one tag, in the tag's unit. A limit left out is not checked.

    H and L are the warning pair, HH and LL the critical pair (ISA-18.2 style);
    each limit raises its own alert, so a value passing H then HH raises two.
    """

    low_low: float | None = None
    low: float | None = None
    high: float | None = None
    high_high: float | None = None
    #: an alert clears only once the value is back inside the limit by this much (ISA-18.2 deadband).
    deadband: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Limits":
        given = [(name, getattr(self, name)) for name in ("low_low", "low", "high", "high_high")]
        given = [(name, value) for name, value in given if value is not None]
        for (name_a, a), (name_b, b) in zip(given, given[1:]):
            if not a < b:
                raise ValueError(f"{name_a} ({a}) must be below {name_b} ({b}): limits go low_low < low < high < high_high")
        return self


ByteOrder = Literal["ABCD", "DCBA", "BADC", "CDAB"]
ModbusType = Literal["int16", "uint16", "int32", "uint32", "int64", "float32", "float64", "bool"]
#: registers (16 bit) each Modbus type occupies.
MODBUS_TYPE_WORDS = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "float32": 2, "float64": 4, "bool": 1}
# ns=2;s=Pump1.Flow, i=2258, nsu=urn:plant;s=x, g=..., b=...
_NODE_ID = r"^((ns=\d+|nsu=[^;]+);)?[isgb]=.+$"
_BROWSE_PATH = r"^\d+:[^/]+(/\d+:[^/]+)*$"


class OpcUaSource(_Section):
    """A tag read from an OPC UA server through a monitored item (not polled)."""

    #: the id of an entry under connections.opcua.
    opcua: Identifier
    #: the node, e.g. "ns=2;s=Pump1.BearingTemp"; or give browse_path.
    node_id: str | None = None
    #: path below the Objects folder, "ns:BrowseName" segments, e.g. "2:Plant/2:Pump1/2:BearingTemp".
    browse_path: str | None = None
    #: how often the server samples the value; default: the connection's publishing interval.
    sampling_interval_ms: float | None = Field(None, ge=0)
    #: values the server queues between publishes (oldest discarded first, flagged Overflow).
    queue_size: int = Field(10, ge=1, le=100_000)
    #: report a change only when it exceeds this (0: every change).
    deadband: float = Field(0.0, ge=0)
    deadband_type: Literal["absolute", "percent"] = "absolute"

    @field_validator("node_id")
    @classmethod
    def _node_id_form(cls, value):
        if value is not None and not re.match(_NODE_ID, value):
            raise ValueError(f"{value!r} is not an OPC UA NodeId: write e.g. ns=2;s=Pump1.Flow or ns=3;i=1001")
        return value

    @field_validator("browse_path")
    @classmethod
    def _browse_path_form(cls, value):
        if value is not None and not re.match(_BROWSE_PATH, value):
            raise ValueError(f"{value!r} is not a browse path: write namespace:Name segments below Objects, e.g. 2:Plant/2:Pump1/2:Flow")
        return value

    @model_validator(mode="after")
    def _one_address(self) -> "OpcUaSource":
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("give exactly one of node_id or browse_path")
        if self.deadband_type == "percent" and self.deadband > 100:
            raise ValueError(f"a percent deadband must be 0..100, got {self.deadband}")
        return self


class ModbusSource(_Section):
    """A tag read from a Modbus register, coil or discrete input.

    The engineering value is ``raw * scale + offset``.
    """

    #: the id of an entry under connections.modbus.
    modbus: Identifier
    #: the unit (slave) id behind the connection; gateways serve several.
    unit_id: int = Field(1, ge=0, le=255)
    table: Literal["holding", "input", "coil", "discrete"] = "holding"
    #: zero-based protocol address (holding register 40001 is address 0).
    address: int = Field(ge=0, le=65535)
    type: ModbusType = "uint16"
    #: byte and word order of multi-byte values; default: the connection's.
    byte_order: ByteOrder | None = None
    #: read one bit field of a 16-bit register: the lowest bit's number (0..15)...
    bit: int | None = Field(None, ge=0, le=15)
    #: ...and how many bits (1 gives 0/1).
    bits: int = Field(1, ge=1, le=16)
    scale: float = 1.0
    offset: float = 0.0
    #: a name from the connection's poll_groups; default: its poll_interval_s.
    poll_group: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ModbusSource":
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.type != "bool":
            raise ValueError(f"a {self.table} holds one bit: set type: bool (got {self.type})")
        if not bit_table and self.type == "bool" and self.bit is None:
            raise ValueError(f"type bool on a {self.table} register needs bit: <0..15> (which bit of the register)")
        if self.bit is not None:
            if bit_table:
                raise ValueError(f"bit applies to registers, not to a {self.table}")
            if self.type not in ("uint16", "int16", "bool"):
                raise ValueError(f"a bit field is read from one 16-bit register: use type uint16 (got {self.type})")
            if self.bit + self.bits > 16:
                raise ValueError(f"bit {self.bit} + bits {self.bits} runs past the 16 bits of a register")
        if self.scale == 0:
            raise ValueError("scale 0 makes every reading equal to offset: use 1 for the raw value")
        if self.bits != 1 and self.bit is None:
            raise ValueError("bits needs bit: the lowest bit of the field (0..15)")
        if self.address + MODBUS_TYPE_WORDS[self.type] > 65536:
            raise ValueError(f"a {self.type} at address {self.address} runs past the last address 65535")
        return self

    @property
    def words(self) -> int:
        return 1 if self.table in ("coil", "discrete") else MODBUS_TYPE_WORDS[self.type]


def _source_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        return "opcua" if "opcua" in value else "modbus" if "modbus" in value else None
    return "opcua" if isinstance(value, OpcUaSource) else "modbus" if isinstance(value, ModbusSource) else None


TagSource = Annotated[
    Annotated[OpcUaSource, Tag("opcua")] | Annotated[ModbusSource, Tag("modbus")],
    Discriminator(
        _source_kind,
        custom_error_type="source_kind",
        custom_error_message="a source names its connection: opcua: <connection id> or modbus: <connection id>",
    ),
]


class TagConfig(_Section):
    id: Identifier
    unit: str = ""
    description: str = ""
    #: the range seen in normal operation, shown to operators next to a value.
    normal_range: tuple[float, float] | None = None
    limits: Limits = Limits()
    #: fast rule: the largest change per second that is still plausible (a faster one
    #: means a broken sensor, a burst pipe or a trip); unset: not checked.
    max_rate_per_s: float | None = Field(None, gt=0)
    #: fast rule: a value that stays within flatline_tolerance for this long is stuck
    #: (frozen transmitter, dead PLC input); unset: not checked.
    flatline_after_s: float | None = Field(None, gt=0)
    flatline_tolerance: float = Field(0.0, ge=0)
    #: where the connectors read the tag; a tag without one is published by other means.
    source: TagSource | None = None

    @field_validator("normal_range")
    @classmethod
    def _range_ordered(cls, value):
        if value is not None and not value[0] < value[1]:
            raise ValueError(f"normal_range must be [low, high] with low < high, got {list(value)}")
        return value


class AssetConfig(_Section):
    id: Identifier
    #: a built-in type (pump, motor, fan, compressor, generic: stream/fusion/faults.py) or
    #: one declared under fusion.asset_types (checked with the whole file, _cross_check)
    type: Identifier = "generic"
    criticality: Literal["low", "medium", "high"] = "medium"
    area: str = "default"
    tags: list[TagConfig] = Field(min_length=1)

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[TagConfig]) -> list[TagConfig]:
        return _unique_ids(tags, "tag")


class LimitRuleSettings(_Section):
    enabled: bool = True


class RuleSwitch(_Section):
    enabled: bool = True


class BadQualityRuleSettings(_Section):
    enabled: bool = True
    #: a tag must read Bad this long, in event time, before it alerts (Uncertain does not
    #: count); 0 alerts at the first Bad sample. The default rides out a connection that
    #: comes up a few seconds after the connector (one Bad sample per tag at start).
    after_s: float = Field(5.0, ge=0)


class RuleSettings(_Section):
    """The fast rule path: judged sample by sample, evidence at once (not at window close)."""

    limits: LimitRuleSettings = LimitRuleSettings()
    #: per tag: max_rate_per_s
    rate_of_change: RuleSwitch = RuleSwitch()
    #: per tag: flatline_after_s, flatline_tolerance
    flatline: RuleSwitch = RuleSwitch()
    bad_quality: BadQualityRuleSettings = BadQualityRuleSettings()


_DURATION = re.compile(r"^([1-9][0-9]*)(ms|s|m|h)$")
_DURATION_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}


def duration_us(text: str) -> int:
    """'500ms', '10s', '1m', '2h' -> microseconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration: write e.g. 500ms, 1s, 10s, 1m or 2h")
    return int(match.group(1)) * _DURATION_US[match.group(2)]


class WindowScale(_Section):
    """One window scale: event-time windows of ``length``, starting every ``hop``.

    Windows are aligned to the epoch (a 10s window starts at :00, :10, ...), so
    replaying last week's data gives the same windows as live did.
    """

    #: e.g. 1s, 10s, 1m
    length: str
    #: unset: tumbling (hop = length); shorter than length: hopping (overlapping) windows.
    hop: str | None = None

    @field_validator("length", "hop")
    @classmethod
    def _duration(cls, value):
        if value is not None:
            duration_us(value)
        return value

    @model_validator(mode="after")
    def _hop_divides(self) -> "WindowScale":
        if self.hop is not None:
            length, hop = duration_us(self.length), duration_us(self.hop)
            if hop > length or length % hop:
                raise ValueError(f"hop {self.hop} must divide length {self.length} (e.g. length 1m, hop 10s)")
        return self

    @property
    def name(self) -> str:
        """What messages call the scale: the length, plus '/hop' for hopping windows."""
        return self.length if self.hop in (None, self.length) else f"{self.length}/{self.hop}"

    @property
    def length_us(self) -> int:
        return duration_us(self.length)

    @property
    def hop_us(self) -> int:
        return duration_us(self.hop or self.length)


class WindowSettings(_Section):
    """Event-time windows per asset and tag (stream/windows.py states the rules)."""

    scales: list[WindowScale] = Field(
        default_factory=lambda: [WindowScale(length="1s"), WindowScale(length="10s"), WindowScale(length="1m")], min_length=1
    )
    #: how long past a window's end samples for it are still accepted: the watermark is
    #: the latest event time seen minus this. Later samples are counted as late and left out.
    grace: str = "2s"

    @field_validator("grace")
    @classmethod
    def _grace(cls, value):
        duration_us(value)
        return value

    @field_validator("scales")
    @classmethod
    def _unique_scales(cls, scales):
        names = [s.name for s in scales]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"window scale {name} appears twice")
        return scales


FeatureName = Literal["mean", "std", "min", "max", "rms", "ptp", "skew", "kurtosis", "crest", "slope", "autocorr", "fft"]


class FeatureSettings(_Section):
    """What is computed per window and tag (stream/features.py defines each)."""

    #: every window carries count, mean, std, min and max; these are the rest ("fft" = the bands).
    names: list[FeatureName] = ["mean", "std", "min", "max", "rms", "ptp", "skew", "kurtosis", "crest", "slope", "autocorr", "fft"]
    #: autocorrelation at this many samples of lag.
    autocorr_lag: int = Field(1, ge=1, le=1000)
    #: FFT magnitude bands, equal slices of 0..Nyquist of each window's own sampling.
    fft_bands: int = Field(4, ge=1, le=64)


class IsolationForestSettings(_Section):
    enabled: bool = True
    n_estimators: int = Field(200, ge=10, le=5000)
    #: windows sampled per tree (scikit-learn's max_samples).
    max_samples: int = Field(256, ge=16)


class LstmAutoencoderSettings(_Section):
    enabled: bool = True
    #: auto: CUDA when torch sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: the window scale whose feature vectors form the sequences.
    scale: str = "1s"
    #: windows per sequence (with scale 1s: the last 16 seconds).
    sequence_length: int = Field(16, ge=2, le=1024)
    hidden_size: int = Field(32, ge=4, le=1024)
    epochs: int = Field(30, ge=1, le=10_000)
    #: sequences per forward pass; the worker gathers them across assets.
    micro_batch: int = Field(1024, ge=1, le=65_536)


class HalfSpaceTreesSettings(_Section):
    enabled: bool = True
    n_trees: int = Field(25, ge=1, le=1000)
    height: int = Field(8, ge=2, le=20)
    #: windows per reference mass update (river's window_size).
    window_size: int = Field(100, ge=10)
    #: windows learned before its scores count (its first minutes on a new asset).
    warmup_windows: int = Field(60, ge=1)


class DetectorSettings(_Section):
    """The anomaly detectors over window features (detectors/)."""

    #: where `edgewatch train` writes model versions and the worker loads them from.
    registry_dir: str = ".edgewatch/models"
    #: the calibrated threshold: the share of normal windows expected to score as anomalous.
    false_alarm_rate: float = Field(0.001, gt=0, lt=0.5)
    #: tags listed with every score, largest contribution first.
    top_tags: int = Field(3, ge=1, le=10)
    #: scales the detectors score (names as in windows.scales); default: all.
    scales: list[str] | None = None
    isolation_forest: IsolationForestSettings = IsolationForestSettings()
    lstm_autoencoder: LstmAutoencoderSettings = LstmAutoencoderSettings()
    halfspace_trees: HalfSpaceTreesSettings = HalfSpaceTreesSettings()


class OpcUaSecurity(_Section):
    """Message security of an OPC UA connection (Part 2 / Part 7 security policies)."""

    policy: Literal["None", "Basic256Sha256", "Aes256Sha256RsaPss"] = "None"
    mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    #: this connector's application instance certificate (DER or PEM) and its private key.
    certificate: str | None = None
    private_key: str | None = None
    #: environment variable holding the private key's password, if it has one.
    private_key_password_env: str | None = None
    #: folder of trusted server certificates (DER or PEM). A server whose certificate is
    #: not in it is refused; `edgewatch opcua trust` adds one.
    trust_dir: str | None = None

    @model_validator(mode="after")
    def _secured_needs_files(self) -> "OpcUaSecurity":
        if self.policy != "None":
            missing = [k for k in ("certificate", "private_key", "trust_dir") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"policy {self.policy} needs {', '.join(missing)} (create a certificate with `edgewatch opcua certificate`)")
        return self


class OpcUaConnection(_Section):
    """One OPC UA server. All its tags share one session and one subscription."""

    id: Identifier
    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value):
        if not re.match(r"^opc\.tcp://[^/:\s]+(:\d+)?(/\S*)?$", value):
            raise ValueError(f"{value!r} is not an OPC UA endpoint: write opc.tcp://host:4840 or opc.tcp://host:4840/path")
        return value

    security: OpcUaSecurity = OpcUaSecurity()
    username: str | None = None
    #: environment variable holding the password (keep passwords out of the file)...
    password_env: str | None = None
    #: ...or the password itself, for development.
    password: str | None = None
    #: how often the server sends the changes it collected.
    publishing_interval_ms: float = Field(100.0, ge=10)
    #: seconds a request may take before the connection counts as lost.
    timeout_s: float = Field(4.0, gt=0, le=120)
    #: reconnect backoff: the first wait, doubled per failure up to the cap.
    reconnect_initial_delay_s: float = Field(1.0, gt=0, le=60)
    reconnect_max_delay_s: float = Field(30.0, gt=0, le=3600)
    #: notifications buffered in the client before the overflow policy applies.
    queue_maxsize: int = Field(100_000, ge=100)
    #: what to do when that buffer is full; drops are counted and reported either way.
    overflow: Literal["drop_oldest", "drop_newest", "disconnect"] = "drop_oldest"
    application_uri: str = "urn:edgewatch:connector"

    @model_validator(mode="after")
    def _one_password(self) -> "OpcUaConnection":
        if self.password is not None and self.password_env is not None:
            raise ValueError("give password or password_env, not both")
        if (self.password is not None or self.password_env is not None) and self.username is None:
            raise ValueError("a password needs a username")
        return self


class ModbusConnection(_Section):
    """One Modbus TCP endpoint: a device, or a gateway with several unit ids behind it."""

    id: Identifier
    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    #: tcp: Modbus TCP (MBAP header); rtu: RTU frames tunnelled over TCP (serial gateways).
    framer: Literal["tcp", "rtu"] = "tcp"
    timeout_s: float = Field(1.0, gt=0, le=60)
    #: extra attempts of a failed request before the device counts as offline.
    retries: int = Field(2, ge=0, le=10)
    #: how often tags without a poll_group are read.
    poll_interval_s: float = Field(1.0, gt=0, le=3600)
    #: named poll intervals, e.g. {fast: 0.1, slow: 10}, chosen per tag with poll_group.
    poll_groups: dict[str, Annotated[float, Field(gt=0, le=3600)]] = {}
    #: byte and word order of multi-register values, unless a tag says otherwise.
    byte_order: ByteOrder = "ABCD"
    #: registers left unread between two tags that are still read in one request.
    max_read_gap: int = Field(8, ge=0, le=100)
    #: the most registers per request (the protocol allows 125).
    max_registers_per_read: int = Field(125, ge=1, le=125)
    reconnect_max_delay_s: float = Field(30.0, gt=0, le=3600)


class Connections(_Section):
    opcua: list[OpcUaConnection] = []
    modbus: list[ModbusConnection] = []

    @model_validator(mode="after")
    def _unique(self) -> "Connections":
        _unique_ids([*self.opcua, *self.modbus], "connection")
        return self


class ConnectSettings(_Section):
    """The connector process (`edgewatch connect`): batching and the store-and-forward spool."""

    #: the durable spool; one folder per connector process.
    spool_dir: str = ".edgewatch/spool"
    #: the spool's bound; when full the oldest data is dropped, counted and reported.
    spool_max_mb: float = Field(1024.0, gt=0)
    #: fsync the spool this often (survives power loss); unset: the OS writes it back (survives a crash).
    spool_fsync_interval_s: float | None = Field(None, gt=0)
    #: data older than this when it is finally sent counts as backfill and is marked replayed.
    replay_after_s: float = Field(5.0, gt=0)
    #: samples of an asset collected this long go out as one reading batch.
    batch_interval_s: float = Field(0.5, gt=0, le=60)
    #: (22 bytes a sample: 20,000 stay well below Kafka's default 1 MiB message limit)
    max_batch_samples: int = Field(20_000, ge=1, le=1_000_000)
    #: where the connector writes its health (JSON), every health_interval_s.
    health_file: str | None = ".edgewatch/connect/health.json"
    health_interval_s: float = Field(5.0, gt=0)


class SimulatorSettings(_Section):
    """`edgewatch simulate`: the simulated plant behind the configured connections."""

    #: value updates per second on every simulated server.
    rate_hz: float = Field(10.0, gt=0, le=1000)
    seed: int = 0
    #: the daily load cycle's period; shorten it (e.g. 600) to see load changes in a demo.
    load_cycle_period_s: float = Field(86_400.0, gt=0)
    #: the fault schedule: {asset, kind, start_s, duration_s, severity, tag, ramp_s};
    #: see connectors/simulator/faults.py for the kinds. `--fault` on the command line adds more.
    faults: list[dict[str, Any]] = []
    #: where the ground truth of the fault schedule is written (JSON Lines).
    ground_truth_file: str = ".edgewatch/simulator/ground-truth.jsonl"
    #: the simulator's own OPC UA server certificate, for connections with security.
    pki_dir: str = ".edgewatch/simulator/pki"


class ApiSettings(_Section):
    """The operator HTTP API of the worker's analytics role (acknowledge, shelve, ...)."""

    #: off by default: it accepts commands that silence alarms, so it is opened on purpose
    enabled: bool = False
    #: 0.0.0.0 in a container; 127.0.0.1 keeps it on this machine
    host: str = "127.0.0.1"
    port: int = Field(8088, ge=1, le=65535)
    #: the bearer token every request must carry (Authorization: Bearer <token>); set it
    #: through EDGEWATCH_API__TOKEN rather than in the file
    token: str = ""

    @model_validator(mode="after")
    def _token_when_enabled(self) -> "ApiSettings":
        if self.enabled and len(self.token) < 16:
            raise ValueError(
                "api.enabled needs api.token of at least 16 characters (set EDGEWATCH_API__TOKEN, e.g. to `openssl rand -hex 24`)"
            )
        return self


# Fusion and alarm settings live with their code; they need _Section and AssetConfig above.
from stream.alarms.settings import AlarmSettings  # noqa: E402
from stream.fusion.faults import ASSET_TYPES  # noqa: E402
from stream.fusion.settings import FusionSettings, check_cpt_overrides  # noqa: E402


class ServiceConfig(_Section):
    kafka: KafkaSettings = KafkaSettings()
    worker: WorkerSettings = WorkerSettings()
    rules: RuleSettings = RuleSettings()
    windows: WindowSettings = WindowSettings()
    features: FeatureSettings = FeatureSettings()
    detectors: DetectorSettings = DetectorSettings()
    connections: Connections = Connections()
    connect: ConnectSettings = ConnectSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    fusion: FusionSettings = FusionSettings()
    alarms: AlarmSettings = AlarmSettings()
    api: ApiSettings = ApiSettings()
    assets: list[AssetConfig] = Field(min_length=1)

    @field_validator("assets")
    @classmethod
    def _unique_assets(cls, assets: list[AssetConfig]) -> list[AssetConfig]:
        return _unique_ids(assets, "asset")

    @model_validator(mode="after")
    def _detector_scales_exist(self) -> "ServiceConfig":
        names = [scale.name for scale in self.windows.scales]
        for name in (self.detectors.scales or []):
            if name not in names:
                raise ValueError(f"detectors.scales names {name!r}, which is not in windows.scales ({', '.join(names)})")
        assets = {a.id: a for a in self.assets}
        for asset_id, entry in self.alarms.assets.items():
            if asset_id not in assets:
                raise ValueError(f"alarms.assets names {asset_id!r}, which is not among the assets")
            mapping = entry.machine_state
            if mapping is not None and mapping.tag not in {t.id for t in assets[asset_id].tags}:
                raise ValueError(
                    f"alarms.assets.{asset_id}.machine_state.tag is {mapping.tag!r}, which is not a tag of asset {asset_id!r}: "
                    "name the tag that carries its run state"
                )
        if self.api.enabled and not self.fusion.enabled:
            raise ValueError("api.enabled needs fusion.enabled: the API serves the fault alarms, which fusion raises (the analytics role serves it)")
        lstm = self.detectors.lstm_autoencoder
        if lstm.enabled and lstm.scale not in names:
            raise ValueError(f"detectors.lstm_autoencoder.scale is {lstm.scale!r}, which is not in windows.scales ({', '.join(names)})")
        return self

    @property
    def detector_scales(self) -> list[WindowScale]:
        wanted = self.detectors.scales
        return [s for s in self.windows.scales if wanted is None or s.name in wanted]

    def sources(self, connection_id: str) -> list[tuple[AssetConfig, TagConfig]]:
        """The (asset, tag) pairs read through one connection, in file order."""
        return [
            (asset, tag)
            for asset in self.assets
            for tag in asset.tags
            if tag.source is not None and connection_id in (getattr(tag.source, "opcua", None), getattr(tag.source, "modbus", None))
        ]

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


def _describe_location(doc: Any, loc: tuple, from_pydantic: bool = True) -> tuple[str, str, str]:
    """Turn a pydantic error location into (device, field, where) for the message.

    ('assets', 0, 'tags', 2, 'limits', 'high') -> ('device "pump-1" tag "flow"',
    'limits.high', 'assets[0].tags[2].limits.high'). Devices are assets and
    connections, as integrators call both.
    """
    loc = list(loc)
    # a tag's source is a union told apart by its connection key: pydantic puts
    # that tag ("opcua" / "modbus") in the location; it is not a key of the file.
    for i in range(len(loc) - 1):
        if from_pydantic and loc[i] == "source" and loc[i + 1] in ("opcua", "modbus"):
            del loc[i + 1]
            break
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    device: list[str] = []
    consumed = 0
    node = doc
    try:
        if loc[:1] == ["assets"] and len(loc) > 1 and isinstance(loc[1], int):
            node = doc["assets"][loc[1]]
            device.append(f'device "{node.get("id", f"assets[{loc[1]}]")}"')
            consumed = 2
            if loc[2:3] == ["tags"] and len(loc) > 3 and isinstance(loc[3], int):
                tag = node["tags"][loc[3]]
                device.append(f'tag "{tag.get("id", f"tags[{loc[3]}]")}"')
                consumed = 4
        elif loc[:1] == ["connections"] and len(loc) > 2 and isinstance(loc[2], int):
            node = doc["connections"][loc[1]][loc[2]]
            device.append(f'{loc[1]} device "{node.get("id", f"{loc[1]}[{loc[2]}]")}"')
            consumed = 3
    except (KeyError, IndexError, TypeError, AttributeError):
        pass  # the location points into something that is not the expected shape
    field = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc[consumed:]).replace(".[", "[")
    return " ".join(device), field, where or "(top level)"


def _cross_check(config: ServiceConfig) -> list[tuple[tuple, str]]:
    """What pydantic cannot see inside one entry: asset types that are built in or
    declared under fusion.asset_types, table overrides of a declared type naming its
    tags, tags naming connections that exist."""
    problems = []
    declared = config.fusion.asset_types
    for a, asset in enumerate(config.assets):
        if asset.type not in ASSET_TYPES and asset.type not in declared:
            known = f"; declared there: {', '.join(declared)}" if declared else ""
            problems.append(
                (
                    ("assets", a, "type"),
                    f"Input should be a built-in asset type ({', '.join(ASSET_TYPES)}) or one declared under fusion.asset_types, "
                    f"got {asset.type!r}: declare it under fusion.asset_types (with its faults) or use one of the built-in types{known}",
                )
            )
    tag_typed = {name for name, learned in declared.items() if learned.roles == "tags"}
    type_of = {asset.id: asset.type for asset in config.assets}
    for key in config.fusion.tag_roles:
        asset_type = key if key in tag_typed else type_of.get(key)
        if asset_type in tag_typed:
            problems.append(
                (
                    ("fusion", "tag_roles", key),
                    f"{asset_type} is declared with roles: tags (fusion.asset_types.{asset_type}.roles): every tag of it is its own role, "
                    "so tag_roles does not apply; leave it out, or declare the type with roles: names",
                )
            )
    by_tags = [name for name in tag_typed if name in config.fusion.cpt]
    if by_tags:  # a roles: tags type's table overrides name its assets' tags
        tags_of = {name: list(dict.fromkeys(t.id for asset in config.assets if asset.type == name for t in asset.tags)) for name in by_tags}
        try:
            check_cpt_overrides({name: config.fusion.cpt[name] for name in by_tags}, declared, tags_of)
        except ValueError as exc:
            problems.append((("fusion", "cpt"), str(exc)))
    opcua = {c.id for c in config.connections.opcua}
    modbus = {c.id: c for c in config.connections.modbus}
    for a, asset in enumerate(config.assets):
        for t, tag in enumerate(asset.tags):
            source, loc = tag.source, ("assets", a, "tags", t, "source")
            if isinstance(source, OpcUaSource) and source.opcua not in opcua:
                known = ", ".join(sorted(opcua)) or "none configured"
                problems.append((loc + ("opcua",), f'no OPC UA connection "{source.opcua}" under connections.opcua (known: {known})'))
            elif isinstance(source, ModbusSource):
                connection = modbus.get(source.modbus)
                if connection is None:
                    known = ", ".join(sorted(modbus)) or "none configured"
                    problems.append((loc + ("modbus",), f'no Modbus connection "{source.modbus}" under connections.modbus (known: {known})'))
                elif source.poll_group is not None and source.poll_group not in connection.poll_groups:
                    known = ", ".join(sorted(connection.poll_groups)) or "none defined"
                    problems.append(
                        (loc + ("poll_group",), f'connection "{connection.id}" has no poll group "{source.poll_group}" (its poll_groups: {known})')
                    )
    return problems


def _raise_problems(doc: Any, source: str, problems: list[tuple[tuple, str]], applied: list[str], from_pydantic: bool = True) -> None:
    """One ConfigError naming the file, and per problem the device, tag and field."""
    overrides = f" (with environment overrides {', '.join(applied)})" if applied else ""
    lines = []
    for loc, message in problems:
        device, field, where = _describe_location(doc, loc, from_pydantic)
        subject = f"for {device}: " if device else ": "
        lines.append((subject, f"field {field}: {message}" if field else message, where))
    if len(lines) == 1:
        subject, text, where = lines[0]
        raise ConfigError(f"configuration invalid {subject.removeprefix(' ')}{text} (in {source}{overrides}, at {where})".replace("invalid : ", "invalid: "))
    body = "\n".join(f"  {subject.removeprefix(': ')}{text} (at {where})" for subject, text, where in lines)
    raise ConfigError(f"configuration invalid in {source}{overrides}, {len(lines)} problems:\n{body}")


def parse_config(doc: Any, source: str, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Validate a parsed YAML document. ``source`` names the file in error messages."""
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"configuration invalid in {source}: the file must hold a mapping of sections, got {type(doc).__name__}")
    applied = _apply_env_overrides(doc, os.environ if environ is None else environ)
    try:
        config = ServiceConfig.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (misspelt? see docs/configuration.md)"
            problems.append((tuple(error["loc"]), message))
        _raise_problems(doc, source, problems, applied)
    problems = _cross_check(config)
    if problems:
        _raise_problems(doc, source, problems, applied, from_pydantic=False)
    return config


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_variables(text: str, environ: Mapping[str, str], source: str) -> str:
    """Replace ``${NAME}`` and ``${NAME:-default}`` with environment variables, so one
    plant file serves several hosts (and passwords stay out of it). ``$${`` is a literal ``${``."""
    missing = []

    def value(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        line = text.count("\n", 0, match.start()) + 1
        missing.append(f"{name} (line {line})")
        return ""

    escaped = text.replace("$${", "\0")
    expanded = _VARIABLE.sub(value, escaped).replace("\0", "${")
    if missing:
        raise ConfigError(
            f"configuration invalid in {source}: environment variable {', '.join(missing)} is not set; "
            "set it, or give a default as ${NAME:-default}"
        )
    return expanded


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read and validate the YAML file at ``path``. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist (pass --config with the path of your plant file)") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc.strerror}") from None
    environ = os.environ if environ is None else environ
    text = expand_variables(text, environ, str(path))
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration invalid in {path}: not valid YAML: {exc}") from None
    return parse_config(doc, str(path), environ)
