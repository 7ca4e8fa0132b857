"""OPC UA message security and users, against a real secured server (the simulator).

Certificates are generated once for the module (RSA 2048). One server offers
Basic256Sha256 and Aes256Sha256RsaPss, each with Sign and SignAndEncrypt,
accepts one user, and trusts only the connector's certificate.
"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path

import pytest
import pytest_asyncio

from connectors.base import now_us
from connectors.opcua.security import (
    check_trusted,
    create_certificate,
    fetch_server_certificate,
    load_trusted,
    thumbprint_sha1,
    trust_server_certificate,
)
from connectors.opcua.simserver import SimOpcUaServer
from tests.opcua_helpers import Running, wait_for
from edgewatch.localkafka import REPO, free_port
from stream.config import load_config, parse_config

pytestmark = pytest.mark.asyncio(loop_scope="module")

COMBINATIONS = [(p, m) for p in ("Basic256Sha256", "Aes256Sha256RsaPss") for m in ("Sign", "SignAndEncrypt")]
USER, PASSWORD = "operator", "s3cret-Pa55"
PASSWORD_ENV = "EDGEWATCH_TEST_OPCUA_PASSWORD"
KEY_PASSWORD_ENV = "EDGEWATCH_TEST_OPCUA_KEY_PASSWORD"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    """Client certificate (key encrypted), server certificate, trust folders: made once."""
    root = tmp_path_factory.mktemp("pki")
    client_cert, client_key = create_certificate(root / "own" / "cert.der", root / "own" / "key.pem", "urn:edgewatch:connector", key_password="key-pw")
    server_cert, server_key = create_certificate(root / "server" / "cert.der", root / "server" / "key.pem", "urn:edgewatch:simulator", hostname="127.0.0.1")
    stranger_cert, stranger_key = create_certificate(root / "stranger" / "cert.der", root / "stranger" / "key.pem", "urn:edgewatch:connector")
    renewed_cert, renewed_key = create_certificate(root / "renewed" / "cert.der", root / "renewed" / "key.pem", "urn:edgewatch:simulator", hostname="127.0.0.1")
    trusted = root / "trusted"
    trust_server_certificate(server_cert.read_bytes(), trusted)
    server_trusts = root / "server-trusted-clients"
    server_trusts.mkdir()
    (server_trusts / "edgewatch.der").write_bytes(client_cert.read_bytes())
    os.environ[PASSWORD_ENV] = PASSWORD
    os.environ[KEY_PASSWORD_ENV] = "key-pw"
    yield {
        "root": root,
        "client_cert": client_cert,
        "client_key": client_key,
        "server_cert": server_cert,
        "server_key": server_key,
        "stranger_cert": stranger_cert,
        "stranger_key": stranger_key,
        "renewed_cert": renewed_cert,
        "renewed_key": renewed_key,
        "trusted": trusted,
        "server_trusts": server_trusts,
    }
    os.environ.pop(PASSWORD_ENV, None)
    os.environ.pop(KEY_PASSWORD_ENV, None)


def secured_plant(port: int, pki: dict, policy: str, mode: str, trust_dir: Path, **connection) -> tuple:
    security = {
        "policy": policy,
        "mode": mode,
        "certificate": str(pki["client_cert"]),
        "private_key": str(pki["client_key"]),
        "private_key_password_env": KEY_PASSWORD_ENV,
        "trust_dir": str(trust_dir),
    }
    doc = {
        "connections": {
            "opcua": [
                {
                    "id": "plc-1",
                    "endpoint": f"opc.tcp://127.0.0.1:{port}",
                    "publishing_interval_ms": 50,
                    "timeout_s": 3,
                    "reconnect_initial_delay_s": 0.2,
                    "reconnect_max_delay_s": 0.5,
                    "security": security,
                    "username": USER,
                    "password_env": PASSWORD_ENV,
                    **connection,
                }
            ]
        },
        "assets": [{"id": "pump-1", "tags": [{"id": "flow", "source": {"opcua": "plc-1", "node_id": "ns=2;s=Pump1.Flow"}}]}],
    }
    config = parse_config(doc, "secured.yaml", environ={})
    return config, config.connections.opcua[0]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server(pki):
    config, connection = secured_plant(free_port(), pki, "Basic256Sha256", "SignAndEncrypt", pki["trusted"])
    sim = SimOpcUaServer(
        connection,
        config.sources("plc-1"),
        security_policies=[
            "Basic256Sha256_Sign",
            "Basic256Sha256_SignAndEncrypt",
            "Aes256Sha256RsaPss_Sign",
            "Aes256Sha256RsaPss_SignAndEncrypt",
        ],
        server_certificate=pki["server_cert"],
        server_private_key=pki["server_key"],
        users={USER: PASSWORD},
        trusted_client_certs_dir=pki["server_trusts"],
    )
    await sim.start()
    yield sim
    await sim.stop()






def port_of(server: SimOpcUaServer) -> int:
    return int(server.endpoint.rsplit(":", 1)[1].rstrip("/"))


@pytest.mark.parametrize("policy,mode", COMBINATIONS)
async def test_trusted_server_secured_session_delivers_values(server, pki, policy, mode):
    config, connection = secured_plant(port_of(server), pki, policy, mode, pki["trusted"])
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.connected, what=f"a {policy}/{mode} session: {running.connector.health.last_error}")
        ts = now_us()
        value = float(COMBINATIONS.index((policy, mode)))  # a new value: an unchanged one is no data change
        await server.write("pump-1", "flow", value, ts)
        await wait_for(lambda: any(s.ts_us == ts for s in running.sink.of("pump-1", "flow")), what="the value")
        assert [s.value for s in running.sink.of("pump-1", "flow") if s.ts_us == ts] == [value]
        assert running.connector.health.to_dict()["security"] == f"{policy}/{mode}"
    finally:
        await running.stop()


@pytest.mark.parametrize("policy,mode", COMBINATIONS)
async def test_untrusted_server_certificate_is_refused_with_how_to_trust_it(server, pki, policy, mode, tmp_path):
    trust_dir = tmp_path / "pki" / "trusted"
    config, connection = secured_plant(port_of(server), pki, policy, mode, trust_dir)
    running = Running(connection, config.sources("plc-1"), config_path="plant.yaml")
    try:
        await wait_for(lambda: "not trusted" in running.connector.health.last_error, what="the refusal")
        message = running.connector.health.last_error
        thumbprint = thumbprint_sha1(pki["server_cert"].read_bytes())
        rejected = list((tmp_path / "pki" / "rejected").iterdir())
        assert len(rejected) == 1 and rejected[0].read_bytes() == pki["server_cert"].read_bytes()
        assert f"OPC UA server plc-1 ({connection.endpoint}) presented a certificate that is not trusted" in message
        assert f"thumbprint sha1 {thumbprint}" in message and "subject CN=simulator@127.0.0.1" in message
        assert "If this is your server, trust it: edgewatch opcua trust --config plant.yaml --connection plc-1" in message
        assert f"(or copy {rejected[0]} into {trust_dir})" in message
        assert not running.connector.health.connected and not running.task.done()
        assert all(math.isnan(s.value) for s in running.sink.samples)  # nothing but the no-communication mark
    finally:
        await running.stop()


async def test_trusting_the_fetched_certificate_lets_the_connector_in(server, pki, tmp_path):
    """The `edgewatch opcua trust` path: fetch the server's certificate, trust it, the retry connects."""
    trust_dir = tmp_path / "trusted"
    config, connection = secured_plant(port_of(server), pki, "Aes256Sha256RsaPss", "SignAndEncrypt", trust_dir)
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: "not trusted" in running.connector.health.last_error, what="the refusal")
        der = await fetch_server_certificate(connection.endpoint, "Aes256Sha256RsaPss", "SignAndEncrypt")
        assert der == pki["server_cert"].read_bytes() and not check_trusted(der, trust_dir).trusted
        path = trust_server_certificate(der, trust_dir)
        assert path.parent == trust_dir and list(load_trusted(trust_dir).values()) == [der]
        assert not list((tmp_path / "rejected").iterdir())  # trusting removes the rejected copy
        await wait_for(lambda: running.connector.health.connected, what="the connection after trusting")
        assert running.sink.event_names() == ["comm_lost", "comm_restored"]
    finally:
        await running.stop()


async def test_server_restarting_with_a_new_certificate_is_refused_until_trusted(pki, tmp_path):
    """The supervisor's reconnect cannot accept a new server certificate: the connector checks it like a first one."""
    trust_dir = tmp_path / "trusted"
    trust_server_certificate(pki["server_cert"].read_bytes(), trust_dir)
    config, connection = secured_plant(free_port(), pki, "Basic256Sha256", "SignAndEncrypt", trust_dir)
    options = dict(security_policies=["Basic256Sha256_SignAndEncrypt"], users={USER: PASSWORD})
    old = SimOpcUaServer(connection, config.sources("plc-1"), server_certificate=pki["server_cert"], server_private_key=pki["server_key"], **options)
    new = SimOpcUaServer(connection, config.sources("plc-1"), server_certificate=pki["renewed_cert"], server_private_key=pki["renewed_key"], **options)
    await old.start()
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.connected, what="the first session")
        await old.stop()
        await new.start()
        await wait_for(lambda: "not trusted" in running.connector.health.last_error, timeout=15, what="the refusal of the new certificate")
        assert thumbprint_sha1(pki["renewed_cert"].read_bytes()) in running.connector.health.last_error
        assert running.sink.event_names() == ["comm_lost"]
        trust_server_certificate(pki["renewed_cert"].read_bytes(), trust_dir)
        await wait_for(lambda: running.connector.health.connected, timeout=15, what="the session after trusting")
        assert running.sink.event_names() == ["comm_lost", "comm_restored"]
    finally:
        await running.stop()
        await old.stop()
        await new.stop()


async def test_wrong_password_gives_a_clear_error_naming_connection_and_user(server, pki):
    config, connection = secured_plant(port_of(server), pki, "Basic256Sha256", "SignAndEncrypt", pki["trusted"], password_env=None, password="wrong")
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: "rejected user" in running.connector.health.last_error, what="the user refusal")
        message = running.connector.health.last_error
        assert f'OPC UA server plc-1 ({connection.endpoint}) rejected user "{USER}": wrong password or unknown user' in message
        assert "check the password of connection plc-1" in message
        assert not running.connector.health.connected and not running.task.done()
    finally:
        await running.stop()


async def test_server_refusing_our_certificate_says_to_trust_it_on_the_server(server, pki):
    config, connection = secured_plant(port_of(server), pki, "Basic256Sha256", "Sign", pki["trusted"])
    stranger = connection.security.model_copy(
        update={"certificate": str(pki["stranger_cert"]), "private_key": str(pki["stranger_key"]), "private_key_password_env": None}
    )
    connection = connection.model_copy(update={"security": stranger})
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: "refused this connector's certificate" in running.connector.health.last_error, what="the refusal")
        message = running.connector.health.last_error
        assert str(pki["stranger_cert"]) in message and thumbprint_sha1(pki["stranger_cert"].read_bytes()) in message
        assert "add it to the server's trusted client certificates" in message
    finally:
        await running.stop()


async def test_missing_password_variable_is_named(server, pki):
    config, connection = secured_plant(port_of(server), pki, "Basic256Sha256", "Sign", pki["trusted"], password_env="EDGEWATCH_TEST_UNSET_VARIABLE")
    running = Running(connection, config.sources("plc-1"))
    try:
        await wait_for(lambda: running.connector.health.last_error, what="the error")
        assert "environment variable EDGEWATCH_TEST_UNSET_VARIABLE (password_env) is not set" in running.connector.health.last_error
    finally:
        await running.stop()


async def test_sample_config_validates():
    config = load_config(REPO / "connectors" / "opcua" / "sample.yaml", environ={})
    plc1, plc2 = config.connections.opcua
    assert plc1.security.policy == "None"
    assert (plc2.security.policy, plc2.security.mode, plc2.username) == ("Basic256Sha256", "SignAndEncrypt", "edgewatch")
    sources = [t.source for _, t in config.sources("plc-1") + config.sources("plc-2")]
    assert any(s.node_id for s in sources) and any(s.browse_path for s in sources)
