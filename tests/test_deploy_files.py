"""The deployment files (Dockerfile, .dockerignore, docker-compose.yml) checked
against the project without Docker: every command the containers run is a real
CLI command with valid options, the mounted configuration validates as the
container sees it (image ENV + compose environment), the services find the
broker on the listener it advertises, volumes and dependencies line up, the
broker is the release kafka/pom.xml pins, and the image installs the locked
dependencies without torch. The image's health check script is run for real
against a process with and without a connection to a (local, fake) broker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
import typer.main
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from typer.testing import CliRunner

from edgewatch.cli import app
from edgewatch.localkafka import kafka_version
from stream.config import ServiceConfig, load_config
from stream.topics import TopicNames

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# The packages torch pulls in that the image leaves out (torch is the optional extra).
TORCH_STACK = re.compile(r"^(torch|triton|nvidia-|cuda-)", re.IGNORECASE)


# ----------------------------------------------------------------------------- Dockerfile parsing


@dataclass
class Instruction:
    keyword: str
    args: str
    heredocs: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for inst in self.all("ENV"):
            for token in shlex.split(inst.args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV in the legacy 'ENV key value' form: {inst.args}"
                env[key] = value
        return env


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions per stage: comments dropped, continuation lines joined, heredoc bodies kept."""
    lines = text.splitlines()
    instructions: list[Instruction] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):
            following = lines[i]
            i += 1
            if following.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + following.strip()
        keyword, _, args = line.strip().partition(" ")
        heredocs = {}
        for match in re.finditer(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2", args):
            strip_tabs, word = match.group(1), match.group(3)
            body = []
            while i < len(lines) and (lines[i].lstrip("\t") if strip_tabs else lines[i]) != word:
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"heredoc {word} is not terminated"
            i += 1
            heredocs[word] = "\n".join(body) + "\n"
        instructions.append(Instruction(keyword.upper(), args.strip(), heredocs))
    stages: list[Stage] = []
    for inst in instructions:
        if inst.keyword == "FROM":
            words = inst.args.split()
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name, []))
        else:
            assert stages, f"{inst.keyword} before the first FROM"
            stages[-1].instructions.append(inst)
    return stages


def copy_parts(inst: Instruction) -> tuple[dict[str, str], list[str], str]:
    """COPY flags, sources and destination."""
    words = shlex.split(inst.args)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return flags, words[:-1], words[-1]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


@pytest.fixture(scope="module")
def build_stage(stages) -> Stage:
    """The stage that installs the project (runs `pip install ... .`)."""
    for stage in stages:
        if any(re.search(r"pip install .*\s\.(\s|$)", i.args) for i in stage.all("RUN")):
            return stage
    pytest.fail("no stage of the Dockerfile installs the project with `pip install .`")


# ----------------------------------------------------------------------------- compose helpers


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def kafka_service(services) -> tuple[str, dict]:
    found = [(name, svc) for name, svc in services.items() if str(svc.get("image", "")).startswith("apache/kafka:")]
    assert len(found) == 1, "docker-compose.yml must run exactly one apache/kafka broker"
    return found[0]


def edgewatch_services(services: dict) -> dict[str, dict]:
    """The services that run the edgewatch image (built from this repository)."""
    return {name: svc for name, svc in services.items() if "build" in svc}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) for each entry of `volumes:` (short or long syntax)."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mode = "ro" if entry.get("read_only") else "rw"
            mounts.append((str(entry.get("source", "")), entry["target"], mode))
        else:
            parts = entry.split(":")
            mounts.append((parts[0], parts[1], parts[2] if len(parts) > 2 else "rw"))
    return mounts


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def command_list(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value)


def container_argv(service: dict, final: Stage) -> list[str]:
    entrypoint = service.get("entrypoint")
    entrypoint = command_list(entrypoint) if entrypoint is not None else final.last("ENTRYPOINT").exec_form()
    command = service.get("command")
    command = command_list(command) if command is not None else final.last("CMD").exec_form()
    return entrypoint + command


def resolve_cli(argv: list[str]) -> tuple[list[str], object, list[str]]:
    """`edgewatch a b --opt x` -> (["a", "b"], the (click) command, ["--opt", "x"])."""
    assert argv and argv[0] == "edgewatch", f"not an edgewatch command: {argv}"
    command = typer.main.get_command(app)
    path, rest = [], list(argv[1:])
    while hasattr(command, "list_commands"):  # a group (typer carries its own copy of click)
        assert rest, f"{argv}: names a command group, not a command"
        sub = command.get_command(command.context_class(command), rest[0])
        assert sub is not None, f"{argv}: edgewatch has no command {' '.join([*path, rest[0]])!r}"
        path.append(rest.pop(0))
        command = sub
    return path, command, rest


def parse_cli(argv: list[str]) -> tuple[list[str], dict]:
    """Parse (not run) a command line as the CLI would: option names, types and values."""
    path, command, rest = resolve_cli(argv)
    ctx = command.make_context(" ".join(["edgewatch", *path]), rest)
    return path, ctx.params


def container_config(service: dict, final: Stage) -> tuple[Path, ServiceConfig]:
    """The config file a service's command reads, and the config it gets (image ENV + compose env)."""
    _, params = parse_cli(container_argv(service, final))
    target = str(params["config"])
    binds = {t: s for s, t, _ in volume_mounts(service) if is_bind(s)}
    if target in binds:
        source = (COMPOSE_FILE.parent / binds[target]).resolve()
    else:  # the copy baked into the image
        source = image_file(final, target)
    environ = {k: v for k, v in final.env().items() if k.startswith("EDGEWATCH_")} | env_of(service)
    return source, load_config(source, environ=environ)


def image_file(final: Stage, path: str) -> Path:
    """The repository file that a COPY of the final stage puts at ``path``."""
    for inst in final.all("COPY"):
        flags, sources, dest = copy_parts(inst)
        if "from" in flags or inst.heredocs:
            continue
        for source in sources:
            src = REPO / source.rstrip("/")
            if src.is_dir() and dest.endswith("/") and PurePosixPath(path).parent == PurePosixPath(dest):
                candidate = src / PurePosixPath(path).name
                if candidate.exists():
                    return candidate
            if src.is_file() and PurePosixPath(dest) == PurePosixPath(path):
                return src
    pytest.fail(f"the image has no file {path} copied from the repository")


def healthcheck_command(inst: Instruction) -> list[str]:
    """The command of a Dockerfile HEALTHCHECK (options dropped)."""
    _, sep, command = inst.args.partition("CMD")
    assert sep, f"HEALTHCHECK {inst.args}: no CMD"
    command = command.strip()
    return json.loads(command) if command.startswith("[") else ["/bin/sh", "-c", command]


def kafka_listeners(kafka_env: dict) -> dict[str, tuple[str, int]]:
    """KAFKA_LISTENERS or KAFKA_ADVERTISED_LISTENERS -> {name: (host, port)}."""
    out = {}
    for entry in kafka_env.split(","):
        name, _, address = entry.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


# ----------------------------------------------------------------------------- compose: commands and config


def test_edgewatch_services_run_real_cli_commands(services, final):
    runner = CliRunner()
    ours = edgewatch_services(services)
    assert {"topics", "simulator", "worker"} <= set(ours), f"edgewatch services in compose: {sorted(ours)}"
    scripts = PYPROJECT["project"]["scripts"]
    for name, service in ours.items():
        argv = container_argv(service, final)
        assert argv[0] in scripts, f"{name}: runs {argv[0]!r}, which pyproject.toml does not install"
        path, params = parse_cli(argv)  # raises on a wrong command, option name or value
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{name}: `edgewatch {' '.join(path)} --help` failed:\n{result.output}"
        assert "config" in params, f"{name}: `edgewatch {' '.join(path)}` takes no --config"
    expected = {"topics": ["topics", "create"], "simulator": ["simulate"], "worker": ["worker"]}
    for name, path in expected.items():
        assert resolve_cli(container_argv(ours[name], final))[0] == path, f"{name} does not run `edgewatch {' '.join(path)}`"


def test_mounted_config_exists_and_validates_as_the_containers_see_it(services, final):
    sources = set()
    for name, service in edgewatch_services(services).items():
        _, params = parse_cli(container_argv(service, final))
        mounts = {target: (source, mode) for source, target, mode in volume_mounts(service)}
        target = str(params["config"])
        assert target in mounts, f"{name}: --config {target} is not mounted from the repository"
        source, mode = mounts[target]
        assert is_bind(source) and mode == "ro", f"{name}: {target} should be a read-only bind mount, got {source}:{mode}"
        path = (COMPOSE_FILE.parent / source).resolve()
        assert path.is_file(), f"{name}: mounts {source}, which does not exist"
        container_config(service, final)  # raises ConfigError with the reason
        sources.add(path)
    # The simulator, the topics job and the worker must agree on topics and assets.
    assert len(sources) == 1, f"the edgewatch services mount different configs: {sorted(map(str, sources))}"


def test_bootstrap_servers_are_the_brokers_internal_listener(services, kafka_service, final):
    kafka_name, kafka = kafka_service
    kenv = env_of(kafka)
    listeners = kafka_listeners(kenv["KAFKA_LISTENERS"])
    advertised = kafka_listeners(kenv["KAFKA_ADVERTISED_LISTENERS"])
    broker_hosts = {kafka_name, kafka.get("hostname", kafka_name)}
    for name, service in edgewatch_services(services).items():
        assert "EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS" in env_of(service), f"{name}: bootstrap servers not set for the compose network"
        _, config = container_config(service, final)
        for server in config.kafka.bootstrap_servers.split(","):
            host, _, port = server.strip().rpartition(":")
            assert host in broker_hosts, f"{name}: bootstrap host {host!r} is not the kafka service ({kafka_name})"
            matching = [ln for ln, (h, p) in advertised.items() if h == host and p == int(port)]
            assert matching, f"{name}: {server} is not an advertised listener of the broker ({kenv['KAFKA_ADVERTISED_LISTENERS']})"
            assert listeners[matching[0]][1] == int(port), f"{name}: listener {matching[0]} does not listen on {port}"


def test_topics_are_created_for_the_brokers_size(services, kafka_service, final):
    """The topics job asks for what one broker can give, and nothing else creates topics."""
    _, kafka = kafka_service
    kenv = env_of(kafka)
    assert kenv.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    brokers = len(kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
    _, config = container_config(services["topics"], final)
    assert config.kafka.replication_factor <= brokers, (
        f"config/plant.yaml asks for replication_factor {config.kafka.replication_factor}; "
        f"the compose broker set has {brokers} broker(s): `edgewatch topics create` would fail"
    )
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert int(kenv[key]) <= brokers, f"{key}={kenv[key]} with {brokers} broker(s): consumer groups would never start"


def test_worker_data_dir_is_on_a_named_volume_the_image_user_owns(services, compose, final):
    worker = services["worker"]
    _, config = container_config(worker, final)
    data_dir = config.worker.data_dir
    assert env_of(worker).get("EDGEWATCH_WORKER__DATA_DIR") == data_dir
    mounts = {target: source for source, target, _ in volume_mounts(worker)}
    assert data_dir in mounts, f"the worker's data dir {data_dir} is not a volume (lost on every re-create)"
    source = mounts[data_dir]
    assert not is_bind(source) and source in (compose.get("volumes") or {}), f"{data_dir} is on {source!r}, not a declared named volume"
    # A fresh named volume takes the owner of the image's directory: it must exist and be the USER's.
    user = final.last("USER").args.split(":")[0]
    assert any(
        re.search(rf"mkdir -p [^&;]*{re.escape(data_dir)}", i.args) and re.search(rf"chown [^&;]*{user}[^&;]*{re.escape(data_dir)}", i.args)
        for i in final.all("RUN")
    ), f"the image does not create {data_dir} owned by {user}: the worker could not write to its volume"


def test_every_named_volume_is_declared_and_every_declared_one_used(services, compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for source, target, _ in volume_mounts(service):
            if not is_bind(source):
                assert source, f"{name}: anonymous volume at {target}"
                assert source in declared, f"{name}: volume {source!r} is not declared under top-level volumes:"
                used.add(source)
            else:
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: bind mount source {source} does not exist"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"


def test_dependencies_exist_and_wait_for_the_right_state(services, kafka_service):
    kafka_name, _ = kafka_service
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for target, spec in depends.items():
            assert target in services, f"{name} depends on {target!r}, which is not a service"
            if spec.get("condition") == "service_healthy":
                check = services[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{name} waits for {target} to be healthy; it has no health check"
    # Topics must exist before anything produces or consumes (the broker does not auto-create them).
    assert services["topics"]["depends_on"][kafka_name]["condition"] == "service_healthy"
    assert str(services["topics"].get("restart", "no")) == "no", "a one-shot job that restarts never completes"
    for name in ("simulator", "worker"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully", name


def test_health_checks_of_kafka_and_worker(services, kafka_service, final):
    _, kafka = kafka_service
    test = command_list(kafka["healthcheck"]["test"])
    assert test[0] in ("CMD", "CMD-SHELL")
    shell = " ".join(test[1:])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in shell
    server = re.search(r"--bootstrap-server\s+(\S+)", shell).group(1)
    host, _, port = server.rpartition(":")
    controller = env_of(kafka)["KAFKA_CONTROLLER_LISTENER_NAMES"]
    client_ports = {p for n, (_, p) in kafka_listeners(env_of(kafka)["KAFKA_LISTENERS"]).items() if n != controller}
    assert host == "localhost" and int(port) in client_ports, f"kafka health check asks {server}, not one of its listeners"

    worker = services["worker"]
    assert worker.get("restart") == "unless-stopped"
    check = worker.get("healthcheck") or {}
    assert not check.get("disable"), "the worker's health check is disabled"
    if "test" in check:
        test = command_list(check["test"])
        assert test[0] == "CMD", f"worker health check: {test}"
        executable = test[1]
    else:
        executable = healthcheck_command(final.last("HEALTHCHECK"))[0]
    installed = {copy_parts(i)[2] for i in final.all("COPY") if i.heredocs}
    on_path = {str(PurePosixPath(p).name): p for p in installed if PurePosixPath(p).parent.as_posix() in ("/usr/local/bin", "/usr/bin")}
    assert executable in installed or executable in on_path, f"the worker health check runs {executable!r}, which the image does not install"


def test_published_ports_are_advertised_to_the_host(kafka_service):
    _, kafka = kafka_service
    kenv = env_of(kafka)
    listeners = kafka_listeners(kenv["KAFKA_LISTENERS"])
    advertised = kafka_listeners(kenv["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in kenv["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), f"listeners without a security protocol: {set(listeners) - set(protocols)}"
    assert kenv["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    for entry in kafka.get("ports") or []:
        if isinstance(entry, dict):
            container, published = str(entry["target"]), str(entry.get("published", entry["target"]))
        else:
            parts = str(entry).split("/")[0].split(":")
            container, published = parts[-1], parts[-2] if len(parts) > 1 else parts[-1]
        names = [n for n, (_, p) in listeners.items() if p == int(container)]
        assert names, f"port {container} is published but no listener is on it"
        assert names[0] in advertised, f"listener {names[0]} is published but not advertised"
        # A client on the host is redirected to the advertised address: it must be the published one.
        assert advertised[names[0]] == ("localhost", int(published)), f"{entry}: advertised as {advertised[names[0]]}"


def test_kafka_runs_in_kraft_combined_mode_with_persistent_storage(kafka_service, compose):
    kafka_name, kafka = kafka_service
    kenv = env_of(kafka)
    assert set(kenv["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = kafka_listeners(kenv["KAFKA_LISTENERS"])
    for voter in kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","):
        node, _, address = voter.partition("@")
        host, _, port = address.rpartition(":")
        assert node == kenv["KAFKA_NODE_ID"], f"quorum voter {voter} is not this node ({kenv['KAFKA_NODE_ID']})"
        assert host in (kafka_name, kafka.get("hostname")), f"quorum voter {voter}: {host} is not the kafka service"
        assert int(port) == listeners[kenv["KAFKA_CONTROLLER_LISTENER_NAMES"]][1], f"quorum voter {voter}: not the controller port"
    mounts = {target: source for source, target, _ in volume_mounts(kafka)}
    assert mounts.get(kenv["KAFKA_LOG_DIRS"]) in (compose.get("volumes") or {}), "the broker's log dir is not on a named volume"


def test_kafka_image_is_the_release_the_project_pins(kafka_service):
    _, kafka = kafka_service
    repo, _, tag = kafka["image"].partition(":")
    assert repo == "apache/kafka"
    pinned = Version(kafka_version())
    image = Version(tag)
    assert (image.major, image.minor) == (pinned.major, pinned.minor), (
        f"compose runs Kafka {tag}, the project is tested against {pinned} (kafka/pom.xml)"
    )


def test_edgewatch_services_share_one_image_tagged_with_the_version(services):
    images = set()
    for name, service in edgewatch_services(services).items():
        build = service["build"]
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (COMPOSE_FILE.parent / context / dockerfile).resolve() == DOCKERFILE, f"{name} builds another Dockerfile"
        images.add(service.get("image"))
    assert len(images) == 1 and None not in images, f"edgewatch services should share one image name, got {images}"
    name, _, tag = images.pop().partition(":")
    assert tag == PYPROJECT["project"]["version"], f"image tag {tag} is not the project version"


def test_simulator_faults_name_configured_assets_and_tags(services, final):
    from connectors.simulator.serve import SimulatedPlant

    _, params = parse_cli(container_argv(services["simulator"], final))
    _, config = container_config(services["simulator"], final)
    assert params["fault"], "the simulator injects no fault: the compose demo would never raise an alert"
    SimulatedPlant(config, params["fault"], listen_host=params["listen_host"])  # raises for an unknown asset, kind or tag


def test_connectors_reach_the_simulator_and_keep_their_spool(services, final):
    from urllib.parse import urlparse

    connect, simulator = services["connect"], services["simulator"]
    _, config = container_config(connect, final)
    hosts = {urlparse(c.endpoint).hostname for c in config.connections.opcua} | {c.host for c in config.connections.modbus}
    assert hosts == {simulator.get("hostname", "simulator")}, f"the connectors would read {hosts}, not the simulator"
    _, params = parse_cli(container_argv(simulator, final))
    assert params["listen_host"] == "0.0.0.0", "the simulator listens on loopback only: other containers cannot reach it"
    mounts = {target: source for source, target, _ in volume_mounts(connect)}
    spool = config.connect.spool_dir
    volume = next((t for t in mounts if spool == t or spool.startswith(t.rstrip("/") + "/")), None)
    assert volume and not is_bind(mounts[volume]), f"the spool {spool} is not on a named volume: a re-created container would lose it"
    assert Path(config.connect.health_file).parent.as_posix().startswith(volume)
    assert "connect-health.json" in " ".join(command_list(connect["healthcheck"]["test"]))


def test_topic_names_in_the_files_are_the_services_topics(compose_text, services, final):
    _, config = container_config(services["worker"], final)
    prefix = config.kafka.topic_prefix
    names = set(TopicNames.with_prefix(prefix).all().values())
    pattern = re.compile(rf"(?<![\w.-]){re.escape(prefix)}\.[A-Za-z0-9_-]+")
    for path, text in ((COMPOSE_FILE, compose_text), (DEPLOY_DOC, DEPLOY_DOC.read_text())):
        mentioned = set(pattern.findall(text))
        assert mentioned - names == set(), f"{path.name} mentions topics the service does not have: {mentioned - names}"
        assert TopicNames.with_prefix(prefix).alerts in mentioned, f"{path.name} does not say where the alerts are"


def test_bootstrap_addresses_in_the_files_reach_the_broker(compose_text, kafka_service):
    _, kafka = kafka_service
    kenv = env_of(kafka)
    advertised = {f"{h}:{p}" for h, p in kafka_listeners(kenv["KAFKA_ADVERTISED_LISTENERS"]).values()}
    local = {f"localhost:{p}" for n, (_, p) in kafka_listeners(kenv["KAFKA_LISTENERS"]).items() if n != kenv["KAFKA_CONTROLLER_LISTENER_NAMES"]}
    texts = {COMPOSE_FILE.name: compose_text, DEPLOY_DOC.name: DEPLOY_DOC.read_text()}
    for file, text in texts.items():
        addresses = re.findall(r"--bootstrap-server[ =]+(\S+)", text) + re.findall(r"BOOTSTRAP_SERVERS[=:] *([\w.-]+:\d+)", text)
        assert addresses, f"{file} does not show a bootstrap address"
        for address in addresses:
            assert address in advertised | local, f"{file}: {address} is neither advertised ({sorted(advertised)}) nor a local listener"


# ----------------------------------------------------------------------------- Dockerfile


def test_python_base_image_satisfies_requires_python(stages):
    versions = set()
    for stage in stages:
        match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", stage.base)
        assert match, f"stage base {stage.base} is not a python:X.Y-slim image"
        versions.add(match.group(1))
    # The virtual environment is copied from the build stage: both must be one Python.
    assert len(versions) == 1, f"the stages use different Pythons: {versions}"
    version = versions.pop()
    assert Version(version) in SpecifierSet(PYPROJECT["project"]["requires-python"]), (
        f"python:{version} does not satisfy requires-python {PYPROJECT['project']['requires-python']}"
    )


def _runtime_closure() -> set[str]:
    """Canonical names of edgewatch's runtime dependencies, transitively (no extras), in this environment."""
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(req.name)
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    return seen


def test_image_installs_the_lock_without_torch(build_stage):
    runs = [i.args for i in build_stage.all("RUN")]
    copies = [copy_parts(i)[1] for i in build_stage.all("COPY")]
    assert any("requirements.lock" in sources for sources in copies), "requirements.lock is not copied into the build"
    filter_run = next((r for r in runs if "grep" in r and "requirements.lock" in r), None)
    assert filter_run, "the Dockerfile does not filter requirements.lock with grep"
    match = re.search(r"grep (-Ev|-vE) '([^']+)' requirements\.lock > (\S+)", filter_run)
    assert match, f"cannot read the filter: {filter_run}"
    pattern, filtered = match.group(2), match.group(3)
    assert re.search(rf"pip install (\S+ )*-r {re.escape(filtered)}", filter_run), f"the filtered lock {filtered} is not installed"

    # Apply the Dockerfile's own filter to the lock, with grep as the build does.
    kept_text = subprocess.run(["grep", "-Ev", pattern, str(REPO / "requirements.lock")], capture_output=True, text=True, check=True).stdout
    pins = {}
    for line in kept_text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    left_in = sorted(n for n in pins if TORCH_STACK.match(n))
    assert not left_in, f"the image would install the torch stack: {left_in}"
    for requirement in PYPROJECT["project"]["dependencies"]:
        req = Requirement(requirement)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (a dependency in pyproject.toml) is filtered out of the image"
        assert pins[name] in req.specifier, f"requirements.lock pins {req.name}=={pins[name]}, pyproject.toml wants {req.specifier}"
    missing = sorted(_runtime_closure() - set(pins))
    assert not missing, f"runtime dependencies missing from the filtered lock (the image would lack them): {missing}"

    # The project on top, without letting pip resolve (and upgrade) anything else.
    project_runs = [r for r in runs if re.search(r"pip install .*\s\.(\s|$)", r)]
    assert project_runs and "--no-deps" in project_runs[-1], "the project must be installed with --no-deps over the locked set"
    assert runs.index(project_runs[-1]) > runs.index(filter_run)


def test_image_copies_every_package_and_the_config(build_stage, final):
    copied = set()
    for inst in build_stage.all("COPY"):
        copied.update(s.rstrip("/") for s in copy_parts(inst)[1])
    # the top-level packages pyproject.toml installs (with their subpackages)
    packages = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]
    missing = [p for p in packages if p not in copied and "." not in copied]
    assert not missing, f"packages not copied into the build (the installed command would fail to import them): {missing}"
    # The default command's config is in the image, so `docker run edgewatch` works without a mount.
    _, params = parse_cli(final.last("ENTRYPOINT").exec_form() + final.last("CMD").exec_form())
    image_file(final, str(params["config"]))
    assert final.env().get("EDGEWATCH_CONFIG") == str(params["config"]), "EDGEWATCH_CONFIG is not the image's config"


def test_image_runs_as_a_non_root_user(final):
    user = final.last("USER")
    assert user is not None, "the image runs as root"
    name = user.args.split(":")[0]
    assert name not in ("root", "0"), f"USER {user.args} is root"
    assert any(re.search(rf"useradd .*\b{re.escape(name)}\b", i.args) for i in final.all("RUN")), f"user {name} is never created"


def test_entrypoint_is_edgewatch_and_the_default_command_is_the_worker(final):
    entrypoint = final.last("ENTRYPOINT").exec_form()
    assert entrypoint == ["edgewatch"], f"ENTRYPOINT {entrypoint}"
    assert "edgewatch" in PYPROJECT["project"]["scripts"]
    path, _ = parse_cli(entrypoint + final.last("CMD").exec_form())
    assert path == ["worker"]


def test_dockerignore_keeps_local_state_out_but_not_what_the_build_copies(stages):
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for pattern in patterns:
            regex = re.escape(pattern.rstrip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
            if any(re.fullmatch(regex, prefix) for prefix in prefixes):
                return True
        return False

    for path in (".venv", ".git", ".edgewatch", "stream/__pycache__", ".pytest_cache"):
        assert ignored(path), f".dockerignore does not exclude {path}"
    for stage in stages:
        for inst in stage.all("COPY"):
            flags, sources, _ = copy_parts(inst)
            if "from" in flags or inst.heredocs:
                continue
            for source in sources:
                for match in REPO.glob(source.rstrip("/")):
                    assert not ignored(str(match.relative_to(REPO))), f".dockerignore excludes {source}, which the Dockerfile copies"


# ----------------------------------------------------------------------------- the health check script, run


@pytest.fixture(scope="module")
def healthcheck_script(final, tmp_path_factory) -> Path:
    executable = healthcheck_command(final.last("HEALTHCHECK"))[0]
    for inst in final.all("COPY"):
        if inst.heredocs and PurePosixPath(copy_parts(inst)[2]).name == PurePosixPath(executable).name:
            body = next(iter(inst.heredocs.values()))
            break
    else:
        pytest.fail(f"the image's HEALTHCHECK runs {executable}, which no COPY heredoc writes")
    path = tmp_path_factory.mktemp("health") / "edgewatch-healthcheck"
    path.write_text(body)
    return path


@pytest.fixture
def fake_broker():
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    yield server
    server.close()


def _edgewatch_like_process(tmp_path: Path, bootstrap: str, connect_to: int | None | str) -> subprocess.Popen:
    """A process whose command line is the image's (`python .../edgewatch worker -c FILE`),
    holding a connection to 127.0.0.1:``connect_to`` (none if None); "P+Q": two child
    processes (the worker's roles) connected to P and Q (0: not connected)."""
    program = tmp_path / "edgewatch"
    program.write_text(
        "import socket, subprocess, sys, time\n"
        "if '+' in sys.argv[-1]:\n"
        "    # like `edgewatch worker` with role all: one child process per role, each with its own connection\n"
        "    roles = [subprocess.Popen([sys.executable] + sys.argv[:-1] + [port], stdout=subprocess.PIPE, text=True) for port in sys.argv[-1].split('+')]\n"
        "    assert all(role.stdout.readline().strip() == 'ready' for role in roles)\n"
        "else:\n"
        "    port = int(sys.argv[-1])\n"
        "    s = socket.create_connection(('127.0.0.1', port)) if port else None\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEWATCH_")}
    env["EDGEWATCH_KAFKA__BOOTSTRAP_SERVERS"] = bootstrap
    process = subprocess.Popen(
        [sys.executable, str(program), "worker", "-c", str(REPO / "config" / "plant.yaml"), str(connect_to or 0)],
        start_new_session=True,  # killpg stops its role children too
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def _run_check(script: Path, pid: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), str(pid)], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_health_check_passes_only_while_connected_to_the_configured_broker(healthcheck_script, stages, fake_broker, tmp_path):
    # It runs with the image's virtual environment, where stream.config is installed.
    venvs = {m.group(1) for s in stages for i in s.all("RUN") for m in [re.search(r"python -m venv (\S+)", i.args)] if m}
    shebang = healthcheck_script.read_text().splitlines()[0]
    assert shebang in {f"#!{v}/bin/python" for v in venvs}, f"{shebang}: not the image's virtual environment"

    port = fake_broker.getsockname()[1]
    connected = _edgewatch_like_process(tmp_path, f"127.0.0.1:{port}", connect_to=port)
    try:
        peer, _ = fake_broker.accept()
        result = _run_check(healthcheck_script, connected.pid)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "healthy" in result.stdout

        # Same broker address, but this process holds no connection to it.
        idle = _edgewatch_like_process(tmp_path, f"127.0.0.1:{port}", connect_to=None)
        try:
            result = _run_check(healthcheck_script, idle.pid)
            assert result.returncode == 1, result.stdout + result.stderr
            assert "unhealthy" in result.stdout
        finally:
            idle.kill()
            idle.wait()

        # Broker gone: the connection closes and the check fails.
        peer.close()
        fake_broker.close()
        deadline = time.monotonic() + 10
        while (result := _run_check(healthcheck_script, connected.pid)).returncode == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert result.returncode == 1, result.stdout + result.stderr
    finally:
        connected.kill()
        connected.wait()

    result = _run_check(healthcheck_script, connected.pid)  # the process is gone
    assert result.returncode == 1 and "no process" in result.stdout


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc (Linux)")
def test_health_check_wants_every_worker_role_connected(healthcheck_script, fake_broker, tmp_path):
    """`edgewatch worker` (role all) is a parent with a rules and an analytics child:
    healthy only while both children hold a connection to the broker."""
    port = fake_broker.getsockname()[1]
    both = _edgewatch_like_process(tmp_path, f"127.0.0.1:{port}", connect_to=f"{port}+{port}")
    one = None
    peers = []  # held: a dropped peer socket closes the connection
    try:
        peers += [fake_broker.accept()[0], fake_broker.accept()[0]]
        result = _run_check(healthcheck_script, both.pid)
        assert result.returncode == 0, result.stdout + result.stderr

        one = _edgewatch_like_process(tmp_path, f"127.0.0.1:{port}", connect_to=f"{port}+0")
        peers.append(fake_broker.accept()[0])
        result = _run_check(healthcheck_script, one.pid)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "unhealthy" in result.stdout
    finally:
        for peer in peers:
            peer.close()
        for process in (both, one):
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
