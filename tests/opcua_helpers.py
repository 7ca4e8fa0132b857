"""Helpers shared by the OPC UA connector tests: a connector running as a task
with its own collecting sink, and an async wait with a deadline."""

from __future__ import annotations

import asyncio
import time

from connectors.base import CollectingSink
from connectors.opcua.client import OpcUaConnector


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


class Running:
    """A connector task and its sink."""

    def __init__(self, connection, tags, **kwargs) -> None:
        self.sink = CollectingSink()
        self.connector = OpcUaConnector(connection, tags, self.sink, **kwargs)
        self.task = asyncio.create_task(self.connector.run())

    async def stop(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass
        assert self.task.cancelled(), "run() ended on its own"
