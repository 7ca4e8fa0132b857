"""A real OPC UA server (asyncua) that serves the tags of one configured connection.

It exists so the connector, the plant simulator and the demo can be run and
tested against the protocol itself, not a mock: every configured tag becomes a
Double variable, at its ``node_id`` or at its ``browse_path`` (folders created
along the way), with an EURange property when the tag has a ``normal_range``.
Tags given by ``node_id`` hang below one folder per asset so that a browsing
client sees the plant structure.

Writes use the fastest server-side path asyncua has: a prebuilt DataValue
written straight into the address space (no service call, no per-write type
lookup). asyncua's monitored items deep-copy every DataValue they see, which
is ~85 % of a write's cost; the simulator never mutates a DataValue once written,
so its DataValues hand themselves out as their own copy (see
``_SharedDataValue``). That keeps 10,000 writes per second well within one core.

``stop()`` then ``start()`` behaves like a restart of a real server: the new
server instance knows none of the old sessions or subscriptions (clients must
re-create them), listens on the same port and serves the latest values again.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable, Sequence

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.opcua.client import parse_browse_path
from connectors.opcua.security import check_trusted, save_rejected_certificate
from stream.config import AssetConfig, OpcUaConnection, OpcUaSource, TagConfig

_log = logging.getLogger(__name__)

#: accepted names of security_policies -> asyncua endpoint types.
SECURITY_POLICIES = {
    "None": ua.SecurityPolicyType.NoSecurity,
    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    "Aes256Sha256RsaPss_Sign": ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    "Aes256Sha256RsaPss_SignAndEncrypt": ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_UNCERTAIN_INITIAL_VALUE = 0x4092_0000


class _SharedDataValue(ua.DataValue):
    """A DataValue that is never mutated after it is written, so copies may share it.

    asyncua's MonitoredItemValues deep-copies each value "to prevent referencing
    the inner value"; the simulator builds a fresh DataValue per write and never
    touches it again, so the copy is the object itself.
    """

    __slots__ = ()

    def __deepcopy__(self, memo):
        return self


class _PasswordUsers:
    """asyncua user manager: the given user names with their passwords, nobody else."""

    def __init__(self, users: dict[str, str]) -> None:
        self._users = dict(users)

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


def _namespace_uri(index: int) -> str:
    return f"urn:edgewatch:simulator:ns{index}"


class SimOpcUaServer:
    """An OPC UA server with one Double variable per configured tag of ``connection``.

    ``tags`` are the (asset, tag) pairs of the connection (``ServiceConfig.sources``);
    tags whose source is not OPC UA are ignored. ``endpoint`` overrides the
    connection's endpoint (e.g. to listen behind a proxy). ``security_policies``
    lists the endpoints offered ("None", "Basic256Sha256_Sign",
    "Basic256Sha256_SignAndEncrypt", "Aes256Sha256RsaPss_Sign",
    "Aes256Sha256RsaPss_SignAndEncrypt"); secured ones need
    ``server_certificate`` and ``server_private_key`` (files, DER or PEM). With
    ``users`` ({name: password}) only those users may open a session; with
    ``trusted_client_certs_dir`` only clients whose certificate is in that folder
    (refused ones are saved to its sibling ``rejected`` folder, like real servers).
    """

    def __init__(
        self,
        connection: OpcUaConnection,
        tags: list[tuple[AssetConfig, TagConfig]],
        *,
        endpoint: str | None = None,
        security_policies: Sequence[str] = ("None",),
        server_certificate: str | Path | None = None,
        server_private_key: str | Path | None = None,
        users: dict[str, str] | None = None,
        trusted_client_certs_dir: str | Path | None = None,
        application_uri: str = "urn:edgewatch:simulator",
    ) -> None:
        unknown = [p for p in security_policies if p not in SECURITY_POLICIES]
        if unknown:
            raise ValueError(f"unknown security policies {unknown}: use {sorted(SECURITY_POLICIES)}")
        if any(p != "None" for p in security_policies) and not (server_certificate and server_private_key):
            raise ValueError("secured endpoints need server_certificate and server_private_key")
        self.connection = connection
        self.endpoint = endpoint or connection.endpoint
        self.application_uri = application_uri
        self._policies = [SECURITY_POLICIES[p] for p in security_policies]
        self._certificate = server_certificate
        self._private_key = server_private_key
        self._users = users
        self._trusted_dir = Path(trusted_client_certs_dir) if trusted_client_certs_dir else None
        self._tags: list[tuple[AssetConfig, TagConfig, OpcUaSource]] = [
            (asset, tag, tag.source) for asset, tag in tags if isinstance(tag.source, OpcUaSource)
        ]
        self._keys = {(asset.id, tag.id) for asset, tag, _ in self._tags}
        self._node_ids: dict[tuple[str, str], ua.NodeId] = {}
        self._latest: dict[tuple[str, str], ua.DataValue] = {}
        self._statuses: dict[int, ua.StatusCode] = {}
        self._server: Server | None = None
        self._aspace = None

    # --- lifecycle ---------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def server(self) -> Server:
        """The underlying asyncua Server while running (for tests that need more nodes)."""
        if self._server is None:
            raise RuntimeError("the simulated OPC UA server is not running")
        return self._server

    async def start(self) -> None:
        """Build a fresh server, create the nodes and listen on the endpoint."""
        if self._server is not None:
            return
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"edgewatch simulator for {self.connection.id}")
        await server.set_application_uri(self.application_uri)
        server.set_security_policy(self._policies)
        if self._certificate:
            await server.load_certificate(str(self._certificate))
            await server.load_private_key(str(self._private_key))
        if self._users is not None:
            server.iserver.set_user_manager(_PasswordUsers(self._users))
            server.set_identity_tokens([ua.UserNameIdentityToken])
        if self._trusted_dir is not None:
            server.set_certificate_validator(self._validate_client_certificate)
        await self._create_nodes(server)
        await server.start()
        self._server = server
        self._aspace = server.iserver.aspace
        _log.info("simulated OPC UA server for %s listening on %s (%d tags)", self.connection.id, self.endpoint, len(self._node_ids))

    async def stop(self) -> None:
        """Close every connection and stop listening; the latest values are kept for the next start."""
        server, self._server, self._aspace = self._server, None, None
        if server is not None:
            await server.stop()

    async def __aenter__(self) -> "SimOpcUaServer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # --- writes -------------------------------------------------------------------

    def node_id(self, asset_id: str, tag_id: str) -> ua.NodeId:
        """The node a tag lives at (known once the server has started)."""
        try:
            return self._node_ids[(asset_id, tag_id)]
        except KeyError:
            raise KeyError(f"the simulated server of {self.connection.id} has no tag {asset_id}/{tag_id}") from None

    async def write(self, asset_id: str, tag_id: str, value: float, source_ts_us: int, status: int = 0) -> None:
        """Set one tag's value, source timestamp (us since epoch) and StatusCode."""
        await self.write_many([(asset_id, tag_id, value, source_ts_us, status)])

    async def write_many(self, rows: Iterable[tuple[str, str, float, int, int]]) -> None:
        """Set many tags at once: rows of (asset_id, tag_id, value, source_ts_us, status).

        Subscribed clients see each write as a data change (a Bad status makes the
        value null, as the specification requires). While the server is stopped
        the values are kept and served once it starts again.
        """
        now = datetime.now(timezone.utc)
        node_ids, latest, statuses, aspace, keys = self._node_ids, self._latest, self._statuses, self._aspace, self._keys
        value_attr, double = ua.AttributeIds.Value, ua.VariantType.Double
        for asset_id, tag_id, value, ts_us, status in rows:
            key = (asset_id, tag_id)
            if key not in keys:
                raise KeyError(f"the simulated server of {self.connection.id} has no tag {asset_id}/{tag_id}")
            code = statuses.get(status)
            if code is None:
                code = statuses[status] = ua.StatusCode(status)
            dv = _SharedDataValue(
                Value=ua.Variant(float(value), double, None, False),
                StatusCode=code,
                SourceTimestamp=_EPOCH + timedelta(microseconds=ts_us),
                ServerTimestamp=now,
            )
            latest[key] = dv
            if aspace is not None:
                result = await aspace.write_attribute_value(node_ids[key], value_attr, dv)
                if result.value:
                    raise RuntimeError(f"writing {asset_id}/{tag_id} failed: {result.name}")

    # --- address space ------------------------------------------------------------

    async def _create_nodes(self, server: Server) -> None:
        namespaces = await server.get_namespace_array()
        folders: dict[tuple, object] = {}

        async def with_index(node_id: str) -> str:
            """``nsu=<uri>;...`` -> ``ns=<index>;...``, registering the URI."""
            match = re.match(r"^nsu=([^;]+);", node_id)
            if not match:
                return node_id
            index = await server.register_namespace(match.group(1))
            namespaces[:] = await server.get_namespace_array()
            return f"ns={index};{node_id[match.end():]}"

        async def ensure_index(index: int) -> None:
            """Make namespace index ``index`` exist, so configured ``ns=<index>`` ids are valid."""
            while len(namespaces) <= index:
                namespaces.append(_namespace_uri(len(namespaces)))
                await server.register_namespace(namespaces[-1])

        async def folder(parent, parent_key: tuple, name: ua.QualifiedName):
            key = (*parent_key, (name.NamespaceIndex, name.Name))
            if key not in folders:
                node_id = ua.NodeId("sim:" + "/".join(f"{i}:{n}" for i, n in key), name.NamespaceIndex)
                folders[key] = await parent.add_folder(node_id, name)
            return folders[key], key

        objects = server.nodes.objects
        for asset, tag, source in self._tags:
            key = (asset.id, tag.id)
            if source.node_id is not None:
                node_id = ua.NodeId.from_string(await with_index(source.node_id))
                await ensure_index(node_id.NamespaceIndex)
                parent, _ = await folder(objects, (), ua.QualifiedName(asset.id, node_id.NamespaceIndex))
                browse_name = ua.QualifiedName(tag.id, node_id.NamespaceIndex)
            else:
                path = parse_browse_path(source.browse_path)
                for element in path:
                    await ensure_index(element.NamespaceIndex)
                parent, parent_key = objects, ()
                for element in path[:-1]:
                    parent, parent_key = await folder(parent, parent_key, element)
                browse_name = path[-1]
                node_id = ua.NodeId("sim:" + source.browse_path, browse_name.NamespaceIndex)
            variable = await parent.add_variable(node_id, browse_name, ua.Variant(0.0, ua.VariantType.Double))
            if tag.normal_range is not None:
                low, high = tag.normal_range
                await variable.add_property(
                    ua.NodeId(f"sim:{asset.id}/{tag.id}.EURange", node_id.NamespaceIndex),
                    ua.QualifiedName("EURange", 0),
                    ua.Range(Low=low, High=high),
                )
            if key not in self._latest:  # first start: an honest "no process value yet"
                now = datetime.now(timezone.utc)
                self._latest[key] = _SharedDataValue(
                    Value=ua.Variant(0.0, ua.VariantType.Double),
                    StatusCode=ua.StatusCode(_UNCERTAIN_INITIAL_VALUE),
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                )
            await server.write_attribute_value(variable.nodeid, self._latest[key])
            self._node_ids[key] = variable.nodeid

    # --- client certificates ------------------------------------------------------

    async def _validate_client_certificate(self, certificate: x509.Certificate, app_description) -> None:
        """Refuse clients whose certificate is not in the trusted folder (BadCertificateUntrusted)."""
        der = certificate.public_bytes(serialization.Encoding.DER)
        decision = check_trusted(der, self._trusted_dir)
        if not decision.trusted:
            saved = save_rejected_certificate(der, self._trusted_dir)
            _log.warning("simulated server refused client %s: %s (saved to %s)", app_description.ApplicationUri, decision.reason, saved)
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)
