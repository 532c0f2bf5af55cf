"""Paid work, one way for every endpoint: the credits are taken before the work starts (so
concurrent requests cannot overspend) in the same transaction that records the work, and if
anything fails, a refusal by the engine, a broken model, a client gone away or a server shutting
down, the credits go back in the transaction that marks the record failed and says why. Work a
crash interrupted is failed and refunded when the server next starts (InferenceStore.fail_unfinished).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread

from daguerre.errors import DaguerreError
from daguerre.services.records import InferenceStore, new_inference_id
from daguerre.services.storage import Storage


class JobLifecycle:
    def __init__(self, inferences: InferenceStore, storage: Storage) -> None:
        self.inferences = inferences
        self.storage = storage

    @asynccontextmanager
    async def charged(
        self, token_id: int, cost: int, kind: str, model_id: str, version: str, params: dict[str, Any]
    ) -> AsyncIterator[str]:
        """Charge `cost` millicredits and record the work; yields its inference id. The block
        ends with `deliver`; any exception out of it refunds the charge."""
        inf_id = new_inference_id()
        await to_thread.run_sync(self.inferences.open, inf_id, token_id, kind, model_id, version, params, cost)
        try:
            yield inf_id
        except BaseException as exc:
            message = exc.message if isinstance(exc, DaguerreError) else type(exc).__name__
            # Shielded from cancellation by anyio: a cancelled request still refunds.
            await to_thread.run_sync(self.inferences.fail, inf_id, message)
            raise

    async def deliver(self, inf_id: str, files: dict[str, bytes], outputs: list[str]) -> None:
        """Store the files and mark the work done with `outputs`, the keys the client is given
        (and may upscale later)."""

        def store() -> None:
            for key, data in files.items():
                self.storage.put(key, data)
            self.inferences.finish(inf_id, outputs)

        await to_thread.run_sync(store)
