"""The configuration file: the sample validates, and every mistake an integrator
can make is reported with the file, the asset / tag and the key."""

from pathlib import Path

import pytest

from edgewatch.localkafka import REPO
from stream.config import ConfigError, load_config, parse_config
from tests.conftest import PLANT


def test_sample_plant_config_is_valid():
    config = load_config(REPO / "config" / "plant.yaml", environ={})
    assert {a.id for a in config.assets} == {"pump-1", "fan-1", "compressor-1"}
    assert config.asset("pump-1").tags[5].limits.high == 80
    assert [a.id for a, _ in config.sources("gw-1")] == ["fan-1"] * 7 + ["compressor-1"] * 9
    assert len(config.sources("plc-1")) == 11
    assert config.kafka.topics.alerts == "edgewatch.alerts"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plant.yaml"
    path.write_text(text)
    return path


def test_error_names_file_asset_tag_and_key(tmp_path):
    path = write(
        tmp_path,
        """
assets:
  - id: pump-3
    tags:
      - {id: bearing_temp, limits: {high: hot}}
""",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert text.startswith('configuration invalid for device "pump-3" tag "bearing_temp": field limits.high:')
    assert str(path) in text
    assert "at assets[0].tags[0].limits.high" in text
    assert "valid number" in text


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"assets": []}, "field assets: List should have at least 1 item"),
        ({"kafka": {"bootstrap_server": "x"}, **PLANT}, "field kafka.bootstrap_server: unknown key"),
        ({"assets": [{"id": "p", "tags": [{"id": "t", "limits": {"low": 5, "high": 1}}]}]}, "low (5.0) must be below high (1.0)"),
        ({"assets": [{"id": "p", "tags": [{"id": "t"}, {"id": "t"}]}]}, 'tag id "t" appears twice'),
        ({"assets": [{"id": "p", "tags": [{"id": "t"}]}, {"id": "p", "tags": [{"id": "t"}]}]}, 'asset id "p" appears twice'),
        ({"assets": [{"id": "bad id!", "tags": [{"id": "t"}]}]}, "String should match pattern"),
        ({"assets": [{"id": "p", "type": "boiler", "tags": [{"id": "t"}]}]}, 'for device "p": field type: Input should be'),
        ({"worker": {"session_timeout_s": 1}, **PLANT}, "field worker.session_timeout_s: Input should be greater than or equal to 6"),
    ],
)
def test_invalid_documents_are_explained(doc, expected):
    with pytest.raises(ConfigError, match="configuration invalid") as err:
        parse_config(doc, "plant.yaml", environ={})
    assert expected in str(err.value)
    assert "plant.yaml" in str(err.value)


def _with_sources(*sources, connections=None):
    tags = [{"id": f"t{i}", "source": s} for i, s in enumerate(sources)]
    return {"connections": connections or {}, "assets": [{"id": "pump-3", "type": "pump", "tags": tags}]}


GATEWAY = {"modbus": [{"id": "gw-1", "host": "10.0.0.5", "poll_groups": {"fast": 0.1}}], "opcua": [{"id": "plc-1", "endpoint": "opc.tcp://plc:4840"}]}


@pytest.mark.parametrize(
    "source, expected",
    [
        ({"modbus": "gw-1", "address": 3, "type": "float33"}, 'for device "pump-3" tag "t0": field source.type: Input should be'),
        ({"modbus": "gw-9", "address": 3}, 'tag "t0": field source.modbus: no Modbus connection "gw-9" under connections.modbus (known: gw-1)'),
        ({"opcua": "plc-2", "node_id": "ns=2;s=x"}, 'field source.opcua: no OPC UA connection "plc-2"'),
        ({"modbus": "gw-1", "address": 3, "poll_group": "slow"}, 'connection "gw-1" has no poll group "slow" (its poll_groups: fast)'),
        ({"modbus": "gw-1", "table": "coil", "address": 3, "type": "uint16"}, "a coil holds one bit: set type: bool"),
        ({"modbus": "gw-1", "address": 65535, "type": "float32"}, "runs past the last address 65535"),
        ({"modbus": "gw-1", "address": 1, "bit": 12, "bits": 8}, "runs past the 16 bits of a register"),
        ({"opcua": "plc-1", "node_id": "Pump1.Flow"}, "is not an OPC UA NodeId: write e.g. ns=2;s=Pump1.Flow"),
        ({"opcua": "plc-1"}, "give exactly one of node_id or browse_path"),
        ({"address": 3}, "a source names its connection: opcua: <connection id> or modbus: <connection id>"),
    ],
)
def test_source_errors_name_device_tag_and_field(source, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(_with_sources(source, connections=GATEWAY), "plant.yaml", environ={})
    assert expected in str(err.value)
    assert str(err.value).startswith('configuration invalid for device "pump-3" tag "t0"')


def test_connection_errors_name_the_connection():
    connections = {"modbus": [{"id": "gw-1", "host": "h", "port": 0}], "opcua": [{"id": "plc-1", "endpoint": "http://plc"}]}
    with pytest.raises(ConfigError) as err:
        parse_config(_with_sources({"modbus": "gw-1", "address": 1}, connections=connections), "plant.yaml", environ={})
    text = str(err.value)
    assert 'for modbus device "gw-1": field port: Input should be greater than or equal to 1' in text
    assert 'for opcua device "plc-1": field endpoint:' in text and "write opc.tcp://host:4840" in text


def test_secured_opcua_connection_needs_certificate_and_trust_list():
    connections = {"opcua": [{"id": "plc-1", "endpoint": "opc.tcp://plc:4840", "security": {"policy": "Basic256Sha256"}}]}
    with pytest.raises(ConfigError, match="needs certificate, private_key, trust_dir"):
        parse_config(_with_sources({"opcua": "plc-1", "node_id": "i=2258"}, connections=connections), "plant.yaml", environ={})


def test_sources_of_a_connection_in_file_order():
    config = parse_config(
        _with_sources({"modbus": "gw-1", "address": 1}, {"opcua": "plc-1", "browse_path": "2:Plant/2:Pump3/2:Flow"}, {"modbus": "gw-1", "address": 7}, connections=GATEWAY),
        "plant.yaml",
        environ={},
    )
    assert [tag.id for _, tag in config.sources("gw-1")] == ["t0", "t2"]
    assert [tag.id for _, tag in config.sources("plc-1")] == ["t1"]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "assets: [\n"), environ={})


def test_environment_overrides_the_file():
    config = parse_config(
        dict(PLANT),
        "plant.yaml",
        environ={
            "EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS": "broker-a:9092,broker-b:9092",
            "EDGEWATCH_WORKER__MAX_FUTURE_S": "60",
            "EDGEWATCH_CACHE": "/not/a/setting",  # tooling variables are ignored
        },
    )
    assert config.kafka.bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert config.worker.max_future_s == 60.0


def test_bad_environment_override_is_named():
    with pytest.raises(ConfigError, match="EDGEWATCH_KAFKA__PARTITIONS") as err:
        parse_config(dict(PLANT), "plant.yaml", environ={"EDGEWATCH_KAFKA__PARTITIONS": "many"})
    assert "kafka.partitions" in str(err.value)


def test_environment_variables_in_the_file(tmp_path):
    path = write(
        tmp_path,
        """
connections:
  opcua: [{id: plc-1, endpoint: "opc.tcp://${PLANT_HOST:-127.0.0.1}:4840", username: op, password: "${PLC_PASSWORD}"}]
assets:
  - id: pump-3
    tags: [{id: flow, description: "$${literal}", source: {opcua: plc-1, node_id: "ns=2;s=flow"}}]
""",
    )
    config = load_config(path, environ={"PLC_PASSWORD": "s3cret"})
    assert config.connections.opcua[0].endpoint == "opc.tcp://127.0.0.1:4840"
    assert config.connections.opcua[0].password == "s3cret"
    assert config.assets[0].tags[0].description == "${literal}"
    assert load_config(path, environ={"PLANT_HOST": "simulator", "PLC_PASSWORD": "x"}).connections.opcua[0].endpoint == "opc.tcp://simulator:4840"
    with pytest.raises(ConfigError, match=r"environment variable PLC_PASSWORD \(line 3\) is not set"):
        load_config(path, environ={})
