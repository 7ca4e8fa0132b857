"""The OPC UA connector: one server, one session, one subscription, samples to a sink.

Data path. The server pushes data changes through one subscription
(``publishing_interval_ms``) with one monitored item per tag. asyncua's publish
loop hands each PublishResponse to ``_EdgeSubscription.publish_callback``,
which only appends the response's list of MonitoredItemNotifications to a
bounded buffer (``queue_maxsize`` notifications) and returns, so the publish
loop sends its next Publish request at once. A consumer task takes one list at
a time, converts it in one pass (value to float, SourceTimestamp to
microseconds, StatusCode kept as is) and calls ``sink.put_samples`` once per
asset and publish response.

Why subclasses of asyncua's Subscription and Client (asyncua 2.1.0 is pinned).
asyncua's stock iterator mode builds two objects per notification
(DataChangeNotif, a frozen DataChangeEvent), queues each one separately and
cannot tell us how many it dropped; with 10,000 tags that is 10,000 queue
operations per publish where one list append does. The Subscription subclass
also (a) only moves ``last_sequence_number`` on messages that carry data (a
keep-alive carries the *next* number, and counting it would skip a message in
Republish) and (b) republishes only the sequence numbers the server says it
still holds (asyncua 2.1.0 asks for numbers until the server errors, and
asyncua's own server never errors: it answers an empty message forever). The
Client subclass gives the supervisor the configured first backoff delay
(asyncua hard-codes 1 s) and reports each failed attempt to the connector.

Overflow (the client-side buffer is full because the consumer fell behind):
``drop_oldest`` discards the oldest buffered notifications, ``drop_newest`` the
incoming ones, ``disconnect`` discards the incoming ones and forces a reconnect,
so the loss shows as a marked gap. Every dropped notification is counted in
``health.dropped_samples`` and reported as a ``samples_dropped`` event (at most one
per 10 s, with the count). Values the server itself discarded from a full
monitored-item queue arrive flagged with the Overflow info bit and are counted
the same way (one per flagged notification: a lower bound).

Reconnect. After the first connection asyncua's supervisor (``auto_reconnect``)
owns the connection: it detects loss (socket closed, or the server-status probe
failing within ``timeout_s``), reconnects with capped exponential backoff
(``reconnect_initial_delay_s`` .. ``reconnect_max_delay_s``), re-activates the
session if the server still has it (network cut: the subscription is
transferred and missed messages are recovered with Republish and kept) or
creates a new session and re-creates the subscription and its monitored items
(server restart). At loss every tag gets one NaN sample with
BAD_COMMUNICATION_ERROR at the loss time and one ``comm_lost`` event is emitted;
once the subscription is back one ``comm_restored`` (``health.reconnects`` += 1).
The first connection is this module's own loop with the same backoff; so is a
rebuild (a new client, certificate check and node resolution included) when the
supervisor cannot recover: the subscription cannot be restored, a browse path
leads to another node after a server restart, or the server now presents a
different certificate (the supervisor would keep encrypting for the old one).

Problems retrying cannot fix (an untrusted server certificate, a refused user or
client certificate, missing key files) are logged as errors naming the
connection and what to do; the connector keeps retrying at the slowest rate
rather than ending the process, so fixing the server or the trust list is
enough.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Sequence

from asyncua import Client, ua
from asyncua.client.client import _supervisor_owns_requests
from asyncua.common.subscription import Subscription
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import (
    BadCertificateInvalid,
    BadCertificateUntrusted,
    BadMessageNotAvailable,
    BadSecurityChecksFailed,
    BadSecurityPolicyRejected,
    UaStatusCodeError,
)
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from connectors.base import (
    BAD_COMMUNICATION_ERROR,
    BAD_DECODING_ERROR,
    BAD_NO_COMMUNICATION,
    ConnectorEvent,
    DeviceHealth,
    SampleSink,
    now_us,
)
from connectors.opcua import security
from stream.config import AssetConfig, OpcUaConnection, OpcUaSource, TagConfig

_log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_NAN = math.nan
#: StatusCode bits 10-11 (InfoType) = 01 (DataValue) and bit 7 (Overflow): Part 4, 7.39.
_OVERFLOW_MASK, _OVERFLOW_BITS = 0x0C80, 0x0480
_SEVERITY_BAD = 0x8000_0000
#: at most one samples_dropped event per this many seconds (the count accumulates).
DROP_EVENT_INTERVAL_S = 10.0
#: monitored items / browse paths per request: servers limit operations per call.
_CHUNK = 1000
#: the session outlives a network cut this long (ms), so the subscription can be transferred back.
SESSION_TIMEOUT_MS = 600_000
#: a subscription with no changes still sends a keep-alive this often (ms).
KEEPALIVE_MS = 10_000

_S = ua.StatusCodes
_USER_REJECTED = {_S.BadUserAccessDenied, _S.BadIdentityTokenRejected, _S.BadIdentityTokenInvalid}
_CERT_REJECTED = {
    _S.BadCertificateUntrusted,
    _S.BadCertificateInvalid,
    _S.BadCertificateUriInvalid,
    _S.BadCertificateUseNotAllowed,
    _S.BadCertificateTimeInvalid,
    _S.BadCertificateRevoked,
    _S.BadCertificateIssuerRevoked,
    _S.BadSecurityChecksFailed,
}
_FILTER_REJECTED = {_S.BadFilterNotAllowed, _S.BadMonitoredItemFilterUnsupported, _S.BadDeadbandFilterInvalid, _S.BadMonitoredItemFilterInvalid}


def status_name(code: int) -> str:
    """'BadNodeIdUnknown (0x80340000)' for log lines and event details."""
    name, _ = ua.status_codes.get_name_and_doc(code)
    return f"{name} (0x{code:08X})"


def _is_security_failure(exc: BaseException) -> bool:
    if isinstance(exc, UaStatusCodeError):
        return exc.code in _CERT_REJECTED or exc.code == _S.BadSecurityPolicyRejected
    return "certificate mismatch" in str(exc)


class _QuietPublishLoopErrors(logging.Filter):
    """Drop asyncua's traceback for each failed Publish while the connection is down.

    asyncua logs it at ERROR once a second per connection during an outage; the
    connector has already logged the loss once, and marks it in the stream.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Publish iteration crashed") and record.exc_info:
            return not isinstance(record.exc_info[1], ConnectionError)
        return True


if not any(isinstance(f, _QuietPublishLoopErrors) for f in logging.getLogger("asyncua.client.ua_session.UaSession").filters):
    logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_QuietPublishLoopErrors())


# --- addresses --------------------------------------------------------------------


def parse_node_id(text: str, namespaces: Sequence[str] | None = None) -> ua.NodeId:
    """A configured node id as a NodeId; ``nsu=<uri>;`` is looked up in the server's namespace array.

    Raises LookupError when the namespace URI is not on the server.
    """
    node = ua.NodeId.from_string(text)
    if isinstance(node, ua.ExpandedNodeId) and node.NamespaceUri:
        if namespaces is None or node.NamespaceUri not in namespaces:
            raise LookupError(f"the server has no namespace {node.NamespaceUri!r}")
        return ua.NodeId(node.Identifier, list(namespaces).index(node.NamespaceUri), node.NodeIdType)
    return node


def parse_browse_path(text: str) -> list[ua.QualifiedName]:
    """"2:Plant/2:Pump1/2:Flow" -> the browse names below the Objects folder."""
    names = []
    for segment in text.split("/"):
        index, name = segment.split(":", 1)
        names.append(ua.QualifiedName(name, int(index)))
    return names


def _relative_path(names: list[ua.QualifiedName]) -> ua.RelativePath:
    # Built element by element rather than parsed: the text syntax of RelativePath
    # gives meaning to '.', '#', '<' and '&', which tag names may contain.
    return ua.RelativePath(
        Elements=[
            ua.RelativePathElement(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HierarchicalReferences),
                IsInverse=False,
                IncludeSubtypes=True,
                TargetName=name,
            )
            for name in names
        ]
    )


# --- the tags of a connection -------------------------------------------------------


@dataclass(eq=False)
class _Tag:
    """One configured tag and what the connector learnt about it on the server."""

    handle: int  # client handle of its monitored item: stable across reconnects
    asset_id: str
    tag_id: str
    source: OpcUaSource
    node_id: ua.NodeId | None = None
    monitored: bool = False
    #: the StatusCode of the last failure to subscribe it; logged once per distinct code.
    problem: int = 0
    non_numeric_logged: bool = False

    @property
    def name(self) -> str:
        return f"{self.asset_id}/{self.tag_id}"

    @property
    def address(self) -> str:
        return f"node {self.source.node_id}" if self.source.node_id else f"browse path {self.source.browse_path}"


class NotificationBuffer:
    """The bounded client-side buffer between the publish loop and the consumer.

    Holds the notification lists of whole publish responses; the bound counts
    notifications. ``put`` applies the overflow policy and returns how many
    notifications were dropped, and whether the policy asks for a reconnect.
    """

    def __init__(self, maxsize: int, policy: str) -> None:
        self.maxsize = maxsize
        self.policy = policy
        self._batches: deque[list] = deque()  # [items, start, replayed]
        self.size = 0
        self.ready = asyncio.Event()

    def put(self, items: list, replayed: bool) -> tuple[int, bool]:
        count = len(items)
        if not count:
            return 0, False
        room = self.maxsize - self.size
        dropped = 0
        if count > room:
            if self.policy == "drop_oldest":
                if count >= self.maxsize:  # the newest maxsize of this response, nothing older
                    dropped = self.size + count - self.maxsize
                    self._batches.clear()
                    self._batches.append([items, count - self.maxsize, replayed])
                    self.size = self.maxsize
                    self.ready.set()
                    return dropped, False
                need = count - room
                while need:
                    oldest = self._batches[0]
                    left = len(oldest[0]) - oldest[1]
                    if left <= need:
                        self._batches.popleft()
                        need -= left
                        dropped += left
                        self.size -= left
                    else:
                        oldest[1] += need
                        dropped += need
                        self.size -= need
                        need = 0
            elif self.policy == "drop_newest":
                dropped = count - room
                if room <= 0:
                    return count, False
                items = items[:room]
                count = room
            else:  # disconnect: keep nothing of this response, reconnect to make the loss a marked gap
                return count, True
        self._batches.append([items, 0, replayed])
        self.size += count
        self.ready.set()
        return dropped, False

    def pop(self) -> tuple[list, bool] | None:
        if not self._batches:
            self.ready.clear()
            return None
        items, start, replayed = self._batches.popleft()
        self.size -= len(items) - start
        return (items[start:] if start else items), replayed


# --- asyncua extensions ----------------------------------------------------------------


class _EdgeSubscription(Subscription):
    """asyncua Subscription feeding the connector's buffer; see the module docstring for why."""

    def __init__(self, session, params: ua.CreateSubscriptionParameters, connector: "OpcUaConnector") -> None:
        super().__init__(session, params, handler=None, queue_maxsize=1)
        self._connector = connector

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        data = message.NotificationData
        if not data:
            return  # keep-alive: its SequenceNumber is the next one, not a received one
        self.last_sequence_number = int(message.SequenceNumber)
        for notification in data:
            if type(notification) is ua.DataChangeNotification:
                self._connector._on_data_change(notification.MonitoredItems, self._replaying)
            elif type(notification) is ua.StatusChangeNotification:
                self._connector._on_status_change(notification.Status)

    async def _republish_gaps(self, available: list[int]) -> bool:
        """Fetch the messages the server still holds that we have not seen (Part 4, 5.13.6)."""
        if self.subscription_id is None:
            return True
        last = self.last_sequence_number or 0
        self._replaying = True
        try:
            for seq in sorted(n for n in available if n > last):
                try:
                    message = await self.server.republish(self.subscription_id, seq)
                except BadMessageNotAvailable:
                    continue
                if message.NotificationData:
                    await self.publish_callback(ua.PublishResult(self.subscription_id, NotificationMessage=message))
        except Exception:
            _log.warning("republish failed for subscription %s", self.subscription_id, exc_info=True)
            return False
        finally:
            self._replaying = False
        return True

    async def restore(self) -> None:
        """Called by the supervisor after a reconnect: transfer or re-create, then re-check the tags."""
        try:
            await super().restore()
        except Exception as exc:
            self._connector._restore_failed(exc)
            return
        await self._connector._after_restore(self)

    async def recreate(self) -> None:
        """Re-create on a server that lost the subscription (a restart), after checking that
        the browse paths still lead to the nodes found before: the old node ids could now
        name other variables, and no notification may come from those."""
        await self._connector._check_browse_paths()
        await super().recreate()

    def live_handles(self) -> set[int]:
        """Client handles of the monitored items the server accepted."""
        return {h for h, item in self._monitored_items.items() if item.server_handle is not None}


class _EdgeClient(Client):
    """asyncua Client whose supervisor uses the configured first backoff delay and reports failures.

    ``_reconnect_with_backoff`` mirrors asyncua 2.1.0's (pinned), which
    hard-codes a first delay of 1 s and keeps each attempt's error to itself.
    """

    reconnect_initial_delay_s: float = 1.0
    connector: "OpcUaConnector | None" = None

    def register_subscription(self, subscription: Subscription) -> None:
        """Let the supervisor restore this subscription after a reconnect (what create_subscription does)."""
        self._subscriptions.append(subscription)

    async def _reconnect_with_backoff(self) -> bool:
        token = _supervisor_owns_requests.set(True)
        try:
            delay = self.reconnect_initial_delay_s
            while not self.uaclient.is_disconnect_requested:
                await self._teardown_transport_only()
                try:
                    reused = await self._try_reactivate_existing_session()
                except (BadCertificateInvalid, BadCertificateUntrusted, BadSecurityChecksFailed, BadSecurityPolicyRejected) as exc:
                    await self._report_attempt(exc, delay)
                    await self._refresh_endpoints_quiet()
                except Exception as exc:
                    await self._report_attempt(exc, delay)
                else:
                    await self._finalize_reconnect(reused)
                    return True
                self.uaclient.enter_reconnecting()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max_delay)
            return False
        finally:
            _supervisor_owns_requests.reset(token)

    async def _report_attempt(self, exc: Exception, delay: float) -> None:
        if self.connector is not None:
            await self.connector._reconnect_attempt_failed(exc, delay, self)


class _Refused(Exception):
    """A problem retrying cannot fix; the message says what to do."""


class _Rebuild(Exception):
    """The supervisor cannot recover the connection: start over with a new client (certificate check included)."""


# --- the connector ------------------------------------------------------------------------


class OpcUaConnector:
    """Reads the configured tags of one OPC UA server into a SampleSink until cancelled.

    ``tags`` are the (asset, tag) pairs of the connection (``ServiceConfig.sources``).
    ``config_path`` only improves error messages (the ``edgewatch opcua trust``
    command line they suggest).
    """

    def __init__(
        self,
        connection: OpcUaConnection,
        tags: list[tuple[AssetConfig, TagConfig]],
        sink: SampleSink,
        *,
        config_path: str | None = None,
    ) -> None:
        self.connection = connection
        self.sink = sink
        self.config_path = config_path
        self._tags = [
            _Tag(handle=i + 1, asset_id=asset.id, tag_id=tag.id, source=tag.source)
            for i, (asset, tag) in enumerate((a, t) for a, t in tags if isinstance(t.source, OpcUaSource))
        ]
        self._by_handle = {t.handle: t for t in self._tags}
        self._assets = tuple(dict.fromkeys(t.asset_id for t in self._tags))
        self.health = DeviceHealth(connector="opcua", device=connection.id)
        self.health.extra.update(
            endpoint=connection.endpoint,
            security=f"{connection.security.policy}/{connection.security.mode}" if connection.security.policy != "None" else "None",
            monitored_items=0,
            bad_tags=0,
            server_overflows=0,
            replayed_samples=0,
        )
        self._buffer = NotificationBuffer(connection.queue_maxsize, connection.overflow)
        self._client: _EdgeClient | None = None
        self._ever_connected = False
        self._lost = False
        self._rebuild = asyncio.Event()
        self._rebuild_reason = ""
        self._drops_pending = 0
        self._drop_reason = ""
        self._last_drop_event = -math.inf
        self._drop_timer: asyncio.TimerHandle | None = None
        self._refused_server_certificate: str | None = None

    # --- the loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Connect, subscribe and deliver samples until cancelled; never raises on server or network problems."""
        conn = self.connection
        delay = conn.reconnect_initial_delay_s
        consumer = asyncio.create_task(self._consume(), name=f"opcua-{conn.id}-consumer")
        try:
            while True:
                try:
                    self._rebuild.clear()
                    await self._open_session()
                    delay = conn.reconnect_initial_delay_s
                    await self._rebuild.wait()
                    raise _Rebuild(self._rebuild_reason)
                except asyncio.CancelledError:
                    raise
                except _Refused as exc:
                    wait = conn.reconnect_max_delay_s
                    self._failed(str(exc), permanent=True, retry_s=wait)
                except _Rebuild as exc:
                    wait = conn.reconnect_initial_delay_s
                    self._failed(f"OPC UA server {conn.id} ({conn.endpoint}): {exc}; starting a new session", permanent=False, retry_s=wait)
                except Exception as exc:
                    wait = delay
                    delay = min(delay * 2, conn.reconnect_max_delay_s)
                    message, permanent = self._explain(exc)
                    if permanent:
                        wait = conn.reconnect_max_delay_s
                    self._failed(message, permanent=permanent, retry_s=wait)
                finally:
                    if self._client is not None:
                        await self._close(self._client)
                await asyncio.sleep(wait)
        finally:
            consumer.cancel()
            self._drain()
            self._emit_drop_event()
            self.health.connected = False

    async def _open_session(self) -> _EdgeClient:
        """Connect (secured as configured), create the subscription and the monitored items."""
        conn = self.connection
        self._refused_server_certificate = None
        client = _EdgeClient(
            conn.endpoint,
            timeout=conn.timeout_s,
            watchdog_intervall=conn.timeout_s,
            reconnect_max_delay=conn.reconnect_max_delay_s,
        )
        client.reconnect_initial_delay_s = conn.reconnect_initial_delay_s
        client.connector = self
        client.name = client.description = f"edgewatch {conn.id}"
        client.application_uri = conn.application_uri
        client.product_uri = "urn:edgewatch"
        client.session_timeout = SESSION_TIMEOUT_MS
        client.connection_lost_callback = self._on_connection_lost
        if conn.username is not None:
            client.set_user(conn.username)
            password = self._secret(conn.password_env, "password_env") if conn.password_env else conn.password
            if password is not None:
                client.set_password(password)
        if conn.security.policy != "None":
            await self._apply_security(client)
        try:
            await client.connect(auto_reconnect=True, reconnect_max_delay=conn.reconnect_max_delay_s)
        except BaseException:
            client.disconnect_socket()
            raise
        self._client = client  # from here on run() disconnects it, whatever happens
        subscription = await self._create_subscription(client)
        await self._subscribe_tags(client, subscription, self._tags)
        self._connected()
        return client

    async def _close(self, client: _EdgeClient) -> None:
        self._client = None
        try:
            await asyncio.wait_for(client.disconnect(), self.connection.timeout_s)
        except Exception:  # the server may be gone: closing the socket is all that is left
            _log.debug("disconnect from %s failed", self.connection.id, exc_info=True)
            client.disconnect_socket()

    # --- security -----------------------------------------------------------------

    def _secret(self, env_name: str, key: str) -> str:
        value = os.environ.get(env_name)
        if value is None:
            raise _Refused(
                f"OPC UA connection {self.connection.id}: environment variable {env_name} ({key}) is not set"
            )
        return value

    def trust_command(self) -> str:
        config = self.config_path or "<config file>"
        return f"edgewatch opcua trust --config {config} --connection {self.connection.id}"

    async def _apply_security(self, client: _EdgeClient) -> None:
        """Check the server's certificate against the trust folder, then set up the secure channel."""
        conn, sec = self.connection, self.connection.security
        try:
            server_der = await security.fetch_server_certificate(conn.endpoint, sec.policy, sec.mode, conn.timeout_s)
        except LookupError as exc:
            raise _Refused(f"OPC UA server {conn.id}: {exc}; change security.policy/mode of the connection") from None
        self._check_server_certificate(server_der)
        try:
            cert_der = security.load_certificate_file(sec.certificate)
            password = self._secret(sec.private_key_password_env, "private_key_password_env") if sec.private_key_password_env else None
            key = security.load_private_key_file(sec.private_key, password)
        except security.CertificateError as exc:
            raise _Refused(f"OPC UA connection {conn.id}: {exc}") from None
        names = x509.load_der_x509_certificate(cert_der).extensions
        try:
            uris = names.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
        except x509.ExtensionNotFound:
            uris = []
        if conn.application_uri not in uris:
            _log.warning(
                "OPC UA connection %s: certificate %s does not name application_uri %s (it names %s); most servers refuse it. "
                "Create a matching one with `edgewatch opcua certificate`",
                conn.id, sec.certificate, conn.application_uri, uris or "none",
            )
        key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        policy = getattr(security_policies, security.POLICY_CLASS_NAMES[sec.policy])
        await client.set_security(
            policy, cert_der, key_der, server_certificate=server_der, mode=getattr(ua.MessageSecurityMode, sec.mode)
        )
        client.certificate_validator = self._validate_server_certificate

    def _check_server_certificate(self, der: bytes) -> None:
        conn, sec = self.connection, self.connection.security
        decision = security.check_trusted(der, sec.trust_dir)
        if decision.trusted:
            _log.debug("OPC UA server %s certificate trusted: %s", conn.id, decision.reason)
            return
        saved = security.save_rejected_certificate(der, sec.trust_dir)
        cert = x509.load_der_x509_certificate(der)
        message = (
            f"OPC UA server {conn.id} ({conn.endpoint}) presented a certificate that is not trusted "
            f"(subject {cert.subject.rfc4514_string()}, thumbprint sha1 {security.thumbprint_sha1(der)}): {decision.reason}. "
            f"If this is your server, trust it: {self.trust_command()} (or copy {saved} into {sec.trust_dir})"
        )
        self._refused_server_certificate = message
        raise _Refused(message)

    async def _validate_server_certificate(self, certificate: x509.Certificate, app_description) -> None:
        """asyncua hook at CreateSession (also on every reconnect): the server must still be trusted."""
        try:
            self._check_server_certificate(certificate.public_bytes(serialization.Encoding.DER))
        except _Refused:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted) from None

    def _explain(self, exc: BaseException) -> tuple[str, bool]:
        """A log line for a failed connection attempt, and whether retrying can fix it."""
        conn = self.connection
        where = f"OPC UA server {conn.id} ({conn.endpoint})"
        if self._refused_server_certificate:
            return self._refused_server_certificate, True
        if isinstance(exc, UaStatusCodeError):
            code = exc.code
            if code in _USER_REJECTED:
                if conn.username is None:
                    return f"{where} refused an anonymous session ({status_name(code)}): set username and password_env", True
                source = f"environment variable {conn.password_env}" if conn.password_env else "password"
                return (
                    f'{where} rejected user "{conn.username}": wrong password or unknown user ({status_name(code)}); '
                    f"check the {source} of connection {conn.id}",
                    True,
                )
            if code in _CERT_REJECTED and conn.security.policy != "None":
                try:
                    thumbprint = security.thumbprint_sha1(security.load_certificate_file(conn.security.certificate))
                except security.CertificateError:
                    thumbprint = "unknown"
                return (
                    f"{where} refused this connector's certificate {conn.security.certificate} "
                    f"(thumbprint sha1 {thumbprint}, {status_name(code)}): add it to the server's "
                    f"trusted client certificates",
                    True,
                )
            if code == _S.BadSecurityPolicyRejected:
                return f"{where} does not accept security {self.health.extra['security']} ({status_name(code)})", True
            return f"{where}: {status_name(code)}", False
        if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
            return f"{where} did not answer within {conn.timeout_s} s", False
        if isinstance(exc, OSError):
            return f"{where} cannot be reached: {exc.strerror or exc}", False
        return f"{where}: {type(exc).__name__}: {exc}", False

    # --- subscription and monitored items --------------------------------------------

    async def _create_subscription(self, client: _EdgeClient) -> _EdgeSubscription:
        interval = self.connection.publishing_interval_ms
        # keep-alive every ~10 s when nothing changes, so a dead subscription is noticed;
        # lifetime as long as the session, so a network cut does not delete it on the server.
        keepalive = max(1, math.ceil(KEEPALIVE_MS / interval))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval,
            RequestedLifetimeCount=max(3 * keepalive, math.ceil(SESSION_TIMEOUT_MS / interval)),
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=10_000,
            PublishingEnabled=True,
            Priority=0,
        )
        subscription = _EdgeSubscription(client.uaclient.session, params, self)
        result = await subscription.init()
        _log.debug(
            "OPC UA server %s: subscription %s, publishing every %s ms, keep-alive count %s, lifetime count %s",
            self.connection.id, result.SubscriptionId, result.RevisedPublishingInterval,
            result.RevisedMaxKeepAliveCount, result.RevisedLifetimeCount,
        )
        client.register_subscription(subscription)
        return subscription

    async def _resolve(self, client: _EdgeClient, tags: list[_Tag]) -> list[_Tag]:
        """Find the node of each tag; return those found (the others are reported and marked Bad)."""
        found: list[_Tag] = []
        namespaces = None
        if any(t.source.node_id and t.source.node_id.startswith("nsu=") for t in tags):
            namespaces = await client.get_namespace_array()
        by_path: list[_Tag] = []
        for tag in tags:
            if tag.source.node_id is None:
                by_path.append(tag)
                continue
            try:
                tag.node_id = parse_node_id(tag.source.node_id, namespaces)
            except LookupError as exc:
                self._tag_problem(tag, _S.BadNodeIdUnknown, str(exc))
                continue
            found.append(tag)
        for tag, result in zip(by_path, await self._translate(client, by_path)):
            if isinstance(result, ua.NodeId):
                tag.node_id = result
                found.append(tag)
            else:
                self._tag_problem(tag, result, "no node at this browse path")
        return found

    async def _translate(self, client: _EdgeClient, tags: list[_Tag]) -> list[ua.NodeId | int]:
        """The node each tag's browse path leads to now, or the StatusCode why none."""
        objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)
        out: list[ua.NodeId | int] = []
        for start in range(0, len(tags), _CHUNK):
            chunk = tags[start : start + _CHUNK]
            paths = [ua.BrowsePath(StartingNode=objects, RelativePath=_relative_path(parse_browse_path(t.source.browse_path))) for t in chunk]
            for result in await client.uaclient.translate_browsepaths_to_nodeids(paths):
                if result.StatusCode.is_good() and result.Targets:
                    target = result.Targets[0].TargetId
                    out.append(ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType))
                else:
                    out.append(result.StatusCode.value or _S.BadNoMatch)
        return out

    def _item_request(self, tag: _Tag, with_filter: bool = True) -> ua.MonitoredItemCreateRequest:
        source = tag.source
        params = ua.MonitoringParameters(
            ClientHandle=tag.handle,
            SamplingInterval=source.sampling_interval_ms if source.sampling_interval_ms is not None else self.connection.publishing_interval_ms,
            QueueSize=source.queue_size,
            DiscardOldest=True,
        )
        if with_filter and source.deadband > 0:
            params.Filter = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=ua.DeadbandType.Percent if source.deadband_type == "percent" else ua.DeadbandType.Absolute,
                DeadbandValue=source.deadband,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=tag.node_id, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=params,
        )

    async def _subscribe_tags(self, client: _EdgeClient, subscription: _EdgeSubscription, tags: list[_Tag]) -> None:
        """Create the monitored items of ``tags``; a node the server rejects is reported, the rest goes on."""
        resolved = await self._resolve(client, tags)
        retry_without_filter: list[_Tag] = []
        for with_filter, batch in ((True, resolved), (False, retry_without_filter)):
            for start in range(0, len(batch), _CHUNK):
                chunk = batch[start : start + _CHUNK]
                results = await subscription.create_monitored_items([self._item_request(t, with_filter) for t in chunk])
                for tag, result in zip(chunk, results):
                    if not isinstance(result, ua.StatusCode):
                        tag.monitored, tag.problem = True, 0
                    elif with_filter and tag.source.deadband > 0 and result.value in _FILTER_REJECTED:
                        need = " (a percent deadband needs an EURange property on the node)" if tag.source.deadband_type == "percent" else ""
                        _log.warning(
                            "OPC UA server %s rejected the %s deadband %s of %s (%s) with %s%s; subscribing it without deadband",
                            self.connection.id, tag.source.deadband_type, tag.source.deadband, tag.name, tag.address,
                            status_name(result.value), need,
                        )
                        retry_without_filter.append(tag)
                    else:
                        self._tag_problem(tag, result.value, "the server rejected the monitored item")
        self._update_item_counts()

    def _tag_problem(self, tag: _Tag, code: int, what: str) -> None:
        """Log a tag that cannot be subscribed (once per distinct code) and mark it Bad in the stream."""
        tag.monitored = False
        if tag.problem != code:
            _log.error(
                "OPC UA server %s: asset %s tag %s (%s) cannot be read: %s, %s; the other tags go on",
                self.connection.id, tag.asset_id, tag.tag_id, tag.address, what, status_name(code),
            )
        tag.problem = code
        self.sink.put_samples(tag.asset_id, [tag.tag_id], [now_us()], [_NAN], [code])

    def _update_item_counts(self) -> None:
        monitored = sum(t.monitored for t in self._tags)
        self.health.extra["monitored_items"] = monitored
        self.health.extra["bad_tags"] = len(self._tags) - monitored

    # --- connection state: gap marking -----------------------------------------------

    def _connected(self) -> None:
        """The subscription is up (first time, after a reconnect, or after a rebuild)."""
        self.health.connected = True
        self.health.last_error = ""
        self._ever_connected = True
        if self._lost:
            self._lost = False
            self.health.reconnects += 1
            self._event("comm_restored", f"subscribed again to {self.health.extra['monitored_items']} of {len(self._tags)} tags")
            _log.info("OPC UA server %s (%s): communication restored", self.connection.id, self.connection.endpoint)

    def _mark_lost(self, reason: str) -> None:
        """Start of a gap: one Bad sample per tag at the loss time and one comm_lost event (once per gap)."""
        self.health.connected = False
        self.health.last_error = reason
        if self._lost:
            return
        self._lost = True
        self._drain()  # what arrived before the loss goes out before the gap marker
        ts = now_us()
        code = BAD_COMMUNICATION_ERROR if self._ever_connected else BAD_NO_COMMUNICATION
        by_asset: dict[str, list[str]] = {}
        for tag in self._tags:
            by_asset.setdefault(tag.asset_id, []).append(tag.tag_id)
        for asset_id, tag_ids in by_asset.items():
            n = len(tag_ids)
            self.sink.put_samples(asset_id, tag_ids, [ts] * n, [_NAN] * n, [code] * n)
        self._event("comm_lost", reason, ts)

    async def _on_connection_lost(self, exc: Exception) -> None:
        """asyncua supervisor callback: the connection is gone; it reconnects after this returns."""
        conn = self.connection
        reason = f"OPC UA server {conn.id} ({conn.endpoint}): connection lost ({type(exc).__name__}: {exc})"
        _log.warning("%s; reconnecting", reason)
        self._mark_lost(reason)

    async def _reconnect_attempt_failed(self, exc: Exception, delay: float, client: _EdgeClient) -> None:
        """The supervisor's attempt failed. If the server now presents another certificate,
        start over with a new session: the supervisor keeps using the old certificate
        (the server cannot even decrypt its OpenSecureChannel), and only a fresh check
        of the trust list can accept the new one or explain why not."""
        self.health.reads_failed += 1
        if _is_security_failure(exc):
            self._request_rebuild(f"the secure reconnect failed ({status_name(exc.code) if isinstance(exc, UaStatusCodeError) else exc})")
            return
        if await self._server_certificate_changed(client):
            self._request_rebuild("the server presents a different certificate than before")
            return
        message, permanent = self._explain(exc)
        self.health.last_error = message
        if permanent:
            _log.error("%s; retrying in %.1f s", message, delay)
        else:
            _log.info("%s; retrying in %.1f s", message, delay)

    async def _server_certificate_changed(self, client: _EdgeClient) -> bool:
        sec = self.connection.security
        if sec.policy == "None":
            return False
        try:
            der = await security.fetch_server_certificate(self.connection.endpoint, sec.policy, sec.mode, self.connection.timeout_s)
        except Exception:  # unreachable, or no such endpoint any more: the next attempt tells
            return False
        return der != client.security_policy.peer_certificate

    def _restore_failed(self, exc: Exception) -> None:
        self._request_rebuild(f"restoring the subscription after the reconnect failed ({exc})")

    def _request_rebuild(self, reason: str) -> None:
        """Leave the supervisor: run() closes this client and starts over (certificate check included)."""
        if not self._rebuild.is_set():
            self._rebuild_reason = reason
            self._rebuild.set()

    async def _check_browse_paths(self) -> None:
        """Raise if a browse path that was resolved now leads to another node (or none)."""
        by_path = [t for t in self._tags if t.source.browse_path and t.node_id is not None]
        if not by_path or self._client is None:
            return
        now = await self._translate(self._client, by_path)
        moved = [t.name for t, node in zip(by_path, now) if node != t.node_id]
        if moved:
            raise LookupError(f"the browse paths of {', '.join(moved[:5])} lead to other nodes than before")

    async def _after_restore(self, subscription: _EdgeSubscription) -> None:
        """After the supervisor restored the subscription: subscribe what is missing, then end the gap."""
        try:
            live = subscription.live_handles()
            missing = [t for t in self._tags if t.handle not in live]
            for tag in missing:
                tag.monitored = False
            if missing:
                await self._subscribe_tags(self._client, subscription, missing)
        except Exception as exc:
            self._restore_failed(exc)
            return
        self._update_item_counts()
        self._connected()

    def _failed(self, message: str, permanent: bool, retry_s: float) -> None:
        """A connection attempt (or session) failed: log, count, and mark the gap."""
        self.health.reads_failed += 1
        retry = f"; retrying in {retry_s:.1f} s"
        if permanent:
            _log.error("%s%s", message, retry)
        else:
            _log.warning("%s%s", message, retry)
        self._mark_lost(message)

    # --- notifications -> samples --------------------------------------------------

    def _on_data_change(self, items: list, replayed: bool) -> None:
        """From the publish loop: buffer one publish response's notifications, nothing else."""
        dropped, disconnect = self._buffer.put(items, replayed)
        if dropped:
            self._count_dropped(dropped, f"client buffer full (queue_maxsize {self._buffer.maxsize}, overflow {self._buffer.policy})")
        if disconnect and self._client is not None:
            _log.warning("OPC UA server %s: client buffer full, reconnecting (overflow: disconnect)", self.connection.id)
            self._client.uaclient.notify_transport_lost()

    def _on_status_change(self, status: ua.StatusCode) -> None:
        _log.warning("OPC UA server %s: subscription status changed to %s", self.connection.id, status_name(status.value))

    async def _consume(self) -> None:
        buffer = self._buffer
        while True:
            await buffer.ready.wait()
            batch = buffer.pop()
            if batch is not None:
                self._deliver_safely(batch)
                await asyncio.sleep(0)  # let the publish loop in between large responses

    def _drain(self) -> None:
        while (batch := self._buffer.pop()) is not None:
            self._deliver_safely(batch)

    def _deliver_safely(self, batch: tuple[list, bool]) -> None:
        try:
            self._deliver(*batch)
        except Exception:  # a failing sink must not stop the data path for good
            _log.exception("OPC UA server %s: delivering %d notifications failed", self.connection.id, len(batch[0]))

    def _deliver(self, items: list, replayed: bool) -> None:
        """Convert one publish response's notifications in one pass and hand them on per asset."""
        by_handle = self._by_handle
        groups: dict[str, tuple[list, list, list, list]] = {}
        received = now_us()
        overflows = 0
        count = 0
        for item in items:
            tag = by_handle.get(item.ClientHandle)
            if tag is None:
                continue
            dv = item.Value
            status = dv.StatusCode
            code = status.value if status is not None else 0
            variant = dv.Value
            raw = variant.Value if variant is not None else None
            kind = type(raw)
            if kind is float:
                value = raw
            elif kind is int or kind is bool:
                value = float(raw)
            elif raw is None:
                value = _NAN
            else:
                value = _NAN
                if not code & _SEVERITY_BAD:
                    code = BAD_DECODING_ERROR
                if not tag.non_numeric_logged:
                    tag.non_numeric_logged = True
                    _log.error(
                        "OPC UA server %s: asset %s tag %s (%s) has a non-numeric value (%s %r); it is delivered as NaN with %s",
                        self.connection.id, tag.asset_id, tag.tag_id, tag.address, kind.__name__, raw, status_name(code),
                    )
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            ts = (stamp - _EPOCH) // _ONE_US if stamp is not None else received
            if ts <= 0:
                ts = received
            if code & _OVERFLOW_MASK == _OVERFLOW_BITS:
                overflows += 1
            group = groups.get(tag.asset_id)
            if group is None:
                group = groups[tag.asset_id] = ([], [], [], [])
            group[0].append(tag.tag_id)
            group[1].append(ts)
            group[2].append(value)
            group[3].append(code)
            count += 1
        put = self.sink.put_samples
        for asset_id, (tag_ids, stamps, values, codes) in groups.items():
            put(asset_id, tag_ids, stamps, values, codes)
        health = self.health
        health.samples += count
        health.reads_ok += 1
        health.last_ok_us = received
        if replayed:
            health.extra["replayed_samples"] += count
        if overflows:
            health.extra["server_overflows"] += overflows
            self._count_dropped(overflows, "server monitored-item queue overflow (Overflow bit)")

    # --- events ------------------------------------------------------------------------

    def _event(self, name: str, detail: str, ts: int | None = None, count: int = 0) -> None:
        self.sink.put_event(
            ConnectorEvent(
                event=name,
                connector="opcua",
                device=self.connection.id,
                ts_us=ts or now_us(),
                assets=self._assets,
                detail=detail,
                count=count,
            )
        )

    def _count_dropped(self, count: int, why: str) -> None:
        """Count dropped samples; report them at most once per DROP_EVENT_INTERVAL_S."""
        self.health.dropped_samples += count
        self._drops_pending += count
        self._drop_reason = why
        wait = self._last_drop_event + DROP_EVENT_INTERVAL_S - time.monotonic()
        if wait <= 0:
            self._emit_drop_event()
        elif self._drop_timer is None:
            self._drop_timer = asyncio.get_running_loop().call_later(wait, self._emit_drop_event)

    def _emit_drop_event(self) -> None:
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        if not self._drops_pending:
            return
        count, self._drops_pending = self._drops_pending, 0
        self._last_drop_event = time.monotonic()
        _log.warning("OPC UA server %s: %d samples dropped (%s)", self.connection.id, count, self._drop_reason)
        self._event("samples_dropped", self._drop_reason, count=count)
