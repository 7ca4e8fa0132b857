"""The package boundaries of the design: connectors and the pipeline stay free
of faust (an edge box running only connectors must not need it), stream never
imports connectors, and detectors know nothing of Kafka."""

import ast
import subprocess
import sys
from pathlib import Path

from edgewatch.localkafka import REPO


def imported_top_levels(package: str) -> set[str]:
    names = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_connectors_and_pipeline_load_without_faust():
    code = (
        "import sys, connectors.runner, connectors.batcher, connectors.spool, connectors.forwarder, connectors.modbus.client, connectors.simulator.serve, stream.wire, stream.config, stream.pipeline;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'mode', 'aiokafka')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_import_directions():
    assert "connectors" not in imported_top_levels("stream")
    assert "edgewatch" not in imported_top_levels("stream") | imported_top_levels("connectors")
    assert not imported_top_levels("detectors") & {"stream", "connectors", "faust", "aiokafka", "confluent_kafka"}
    assert not imported_top_levels("connectors") & {"faust", "aiokafka"}


def test_top_level_layout():
    for name in ("pyproject.toml", "stream", "detectors", "connectors", "docker-compose.yml", "tests", "Dockerfile", "README.md"):
        assert (REPO / name).exists(), name


def test_a_non_editable_install_carries_every_package_and_schema(tmp_path):
    """The image installs edgewatch with `pip install .`: a subpackage missing from
    the wheel (stream.rules, stream.alarms, connectors.opcua, ...) would only show
    as an ImportError in production."""
    import shutil
    import zipfile

    # From a clean copy: the clone's own build/ and egg-info (left by the editable
    # install) would lend the wheel files that a fresh build leaves out.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", ".edgewatch", "build", "dist", "*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("edgewatch-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in ("edgewatch", "stream", "detectors", "connectors"):
        for init in (REPO / top).rglob("__init__.py"):
            relative = init.relative_to(REPO).as_posix()
            assert relative in names, f"{relative} is not in the wheel: list the package in pyproject.toml"
    for schema in (REPO / "stream" / "schemas").glob("*.json"):
        assert schema.relative_to(REPO).as_posix() in names
