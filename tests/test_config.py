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
    assert config.asset("pump-1").tags[4].limits.high == 80
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
    assert str(path) in text
    assert 'assets[0] (asset "pump-3") tags[0] (tag "bearing_temp") limits.high' in text
    assert "valid number" in text


@pytest.mark.parametrize(
    "doc, expected",
    [
        ({"assets": []}, "assets: List should have at least 1 item"),
        ({"kafka": {"bootstrap_server": "x"}, **PLANT}, "kafka.bootstrap_server: unknown key"),
        ({"assets": [{"id": "p", "tags": [{"id": "t", "limits": {"low": 5, "high": 1}}]}]}, "low (5.0) must be below high (1.0)"),
        ({"assets": [{"id": "p", "tags": [{"id": "t"}, {"id": "t"}]}]}, 'tag id "t" appears twice'),
        ({"assets": [{"id": "p", "tags": [{"id": "t"}]}, {"id": "p", "tags": [{"id": "t"}]}]}, 'asset id "p" appears twice'),
        ({"assets": [{"id": "bad id!", "tags": [{"id": "t"}]}]}, "String should match pattern"),
        ({"assets": [{"id": "p", "type": "boiler", "tags": [{"id": "t"}]}]}, "type: Input should be"),
        ({"worker": {"session_timeout_s": 1}, **PLANT}, "worker.session_timeout_s: Input should be greater than or equal to 6"),
    ],
)
def test_invalid_documents_are_explained(doc, expected):
    with pytest.raises(ConfigError, match="configuration invalid in plant.yaml") as err:
        parse_config(doc, "plant.yaml", environ={})
    assert expected in str(err.value)


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
