"""The operator HTTP API of the analytics role: read alarms, send commands.

An HMI or MES that does not speak Kafka acknowledges, shelves, comments on and
gives feedback about fault alarms here. Every request needs
``Authorization: Bearer <api.token>``. A command is checked first (complete, and
naming an alarm this worker knows), then put on the ``alert-commands`` topic
like any other command and applied from there: one ordered path per asset,
replayable, and the same whether a command came from Kafka or HTTP. The answer
(202) comes once Kafka has the command; the alarm's new state follows on the
alerts and alarm-state topics within the worker's next iteration.

Routes (JSON in and out):

* ``GET  /health``: no token needed; ``{"status": "ok"}``.
* ``GET  /alarms``: the open alarms' state records (alarm-state.schema.json);
  ``?all=true`` adds the closed ones still kept.
* ``GET  /alarms/{alert_id}``: one alarm's record, 404 if unknown.
* ``POST /alarms/{alert_id}/{acknowledge|shelve|unshelve|comment|feedback}``
  with ``{"user": ..., "comment"?, "duration_s"?, "label"?, "fault"?, "command_id"?}``.
* ``POST /assets/{asset_id}/{suppress|unsuppress}`` with ``{"user": ..., "comment"?}``.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from typing import Awaitable, Callable

from aiohttp import web

from stream.alarms.commands import ALARM_COMMANDS, ASSET_COMMANDS, parse
from stream.wire import SCHEMA_VERSION, utc_iso

log = logging.getLogger("edgewatch.api")

#: a command body larger than this is refused (comments are at most 2,000 characters)
MAX_BODY = 16 * 1024


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def build_app(
    token: str,
    book,
    submit: Callable[[dict], Awaitable[None]],
    clock: Callable[[], float],
) -> web.Application:
    """The aiohttp application. ``book``: the worker's stream.alarms.AlarmBook (read
    only here); ``submit``: puts a command on the alert-commands topic."""

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if request.path == "/health":
            return await handler(request)
        given = request.headers.get("Authorization", "")
        scheme, _, presented = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            return _error(401, "send the API token as 'Authorization: Bearer <token>' (api.token of the worker's configuration)")
        return await handler(request)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def list_alarms(request: web.Request) -> web.Response:
        include_closed = request.query.get("all", "").lower() in ("1", "true", "yes")
        records = [r for r in (book.snapshot(a) for a in book.known_alarms()) if r is not None]
        if not include_closed:
            records = [r for r in records if not r.get("closed")]
        return web.json_response({"alarms": records})

    async def one_alarm(request: web.Request) -> web.Response:
        record = book.snapshot(request.match_info["alert_id"])
        if record is None:
            return _error(404, f"no alarm {request.match_info['alert_id']} on this worker (closed ones are kept for a while; check the alert id)")
        return web.json_response(record)

    async def read_body(request: web.Request) -> dict | web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error(413, f"request body over {MAX_BODY} bytes")
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the request body must be a JSON object, e.g. {\"user\": \"j.smith\"}")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object, e.g. {\"user\": \"j.smith\"}")
        return body

    async def send(command: dict) -> web.Response:
        parsed, problem = parse(command)
        if problem is not None:
            return _error(400, problem)
        await submit(command)
        log.info("API: %s %s on %s by %s (command %s)", parsed.command, parsed.alert_id or "", parsed.asset_id, parsed.user, parsed.command_id)
        return web.json_response({"status": "accepted", "command_id": parsed.command_id}, status=202)

    def command_doc(body: dict, name: str, asset_id, alert_id) -> dict:
        doc = {
            "schema_version": SCHEMA_VERSION,
            "kind": "alert_command",
            "command_id": body.get("command_id") or str(uuid.uuid4()),
            "command": name,
            "asset_id": asset_id,
            "user": body.get("user"),
            "issued_at": utc_iso(int(clock() * 1e6)),
        }
        if alert_id is not None:
            doc["alert_id"] = alert_id
        for key in ("comment", "duration_s", "label", "fault"):
            if key in body:
                doc[key] = body[key]
        unknown = sorted(set(body) - {"user", "command_id", "comment", "duration_s", "label", "fault"})
        if unknown:
            doc["_unknown"] = unknown
        return doc

    async def alarm_command(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        if name not in ALARM_COMMANDS:
            return _error(404, f"unknown command {name!r}: one of {', '.join(ALARM_COMMANDS)}")
        alert_id = request.match_info["alert_id"]
        record = book.snapshot(alert_id)
        if record is None:
            return _error(404, f"no alarm {alert_id} on this worker (check the alert id on the alerts topic)")
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        doc = command_doc(body, name, record.get("asset_id") or _flood_asset(record), alert_id)
        if "_unknown" in doc:
            return _error(400, f"unknown field(s) {', '.join(doc['_unknown'])}: send user, and comment, duration_s, label, fault or command_id")
        return await send(doc)

    async def asset_command(request: web.Request) -> web.Response:
        name = request.match_info["command"]
        if name not in ASSET_COMMANDS:
            return _error(404, f"unknown command {name!r}: one of {', '.join(ASSET_COMMANDS)}")
        asset_id = request.match_info["asset_id"]
        if not book.knows_asset(asset_id):
            return _error(404, f"no asset {asset_id} on this worker")
        body = await read_body(request)
        if isinstance(body, web.Response):
            return body
        doc = command_doc(body, name, asset_id, None)
        if "_unknown" in doc:
            return _error(400, f"unknown field(s) {', '.join(doc['_unknown'])}: send user, and comment or command_id")
        return await send(doc)

    app = web.Application(middlewares=[authenticate], client_max_size=MAX_BODY)
    app.router.add_get("/health", health)
    app.router.add_get("/alarms", list_alarms)
    app.router.add_get("/alarms/{alert_id}", one_alarm)
    app.router.add_post("/alarms/{alert_id}/{command}", alarm_command)
    app.router.add_post("/assets/{asset_id}/{command}", asset_command)
    return app


def _flood_asset(record: dict) -> str | None:
    """A flood alarm has no asset of its own: commands on it name one of its members."""
    members = (record.get("flood") or {}).get("members") or []
    return members[0]["asset_id"] if members else None
