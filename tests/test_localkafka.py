"""The local broker tooling: clear errors when Java or Maven is missing, and a
start / status / stop life that leaves nothing running."""

import os
import shutil
from pathlib import Path

import pytest

from edgewatch import localkafka
from edgewatch.localkafka import KafkaSetupError, LocalKafka, free_port


def test_missing_java_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it
    with pytest.raises(KafkaSetupError, match="needs Java 17 or newer: install a JDK"):
        localkafka.java_command()


def test_missing_maven_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEWATCH_CACHE", str(tmp_path / "empty-cache"))  # jars not cached yet
    java_dir = tmp_path / "bin"
    java_dir.mkdir()
    os.symlink(shutil.which("java"), java_dir / "java")
    monkeypatch.setenv("PATH", str(java_dir))  # java but no mvn
    with pytest.raises(KafkaSetupError, match="'mvn' was not found on PATH.*apt-get install maven"):
        localkafka.fetch(quiet=True)


def test_cache_is_keyed_by_the_pinned_version():
    libs = localkafka.libs_dir()
    assert libs.parent.name.startswith(localkafka.kafka_version() + "-")
    assert not str(libs).startswith(str(localkafka.REPO))  # outside the clone


@pytest.mark.kafka
def test_start_status_stop(tmp_path):
    broker = LocalKafka(tmp_path / "kafka", port=free_port())
    assert broker.status()["running"] is False
    broker.start()
    try:
        pid = broker.pid()
        assert pid is not None and Path(f"/proc/{pid}").exists()
        # A second handle on the same data dir (another shell) sees it and can stop it.
        other = LocalKafka(tmp_path / "kafka", port=broker.port)
        assert other.status() == {"running": True, "pid": pid, "bootstrap": broker.bootstrap, "data_dir": str(tmp_path / "kafka")}
        assert other.stop() is True
        assert broker.pid() is None
        # Restart on existing storage: no re-format, the broker comes back.
        broker.start()
        assert broker.pid() is not None
    finally:
        broker.stop()
    assert broker.status()["running"] is False
