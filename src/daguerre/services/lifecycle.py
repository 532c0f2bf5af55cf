"""Paid work, one way for every endpoint: the credits are taken before the work starts (so
concurrent requests cannot overspend), the work is recorded, and if anything fails, a refusal by
the engine, a broken model or a client gone away, the credits go back and the record says why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread

from daguerre.errors import DaguerreError
from daguerre.services.accounts import AccountService
from daguerre.services.records import InferenceStore, new_inference_id
from daguerre.services.storage import Storage


class JobLifecycle:
    def __init__(self, accounts: AccountService, inferences: InferenceStore, storage: Storage) -> None:
        self.accounts = accounts
        self.inferences = inferences
        self.storage = storage

    @asynccontextmanager
    async def charged(
        self, token_id: int, cost: int, kind: str, model_id: str, version: str, params: dict[str, Any]
    ) -> AsyncIterator[str]:
        """Charge `cost` millicredits and record the work; yields its inference id. The block
        ends with `deliver`; any exception out of it refunds the charge."""
        inf_id = new_inference_id()
        await to_thread.run_sync(self.accounts.charge, token_id, cost, inf_id)
        try:
            await to_thread.run_sync(self.inferences.create, inf_id, token_id, kind, model_id, version, params, cost)
            yield inf_id
        except BaseException as exc:
            await to_thread.run_sync(self._undo, token_id, cost, inf_id, exc)
            raise

    async def deliver(self, inf_id: str, files: dict[str, bytes], outputs: list[str]) -> None:
        """Store the files and mark the work done with `outputs`, the keys the client is given
        (and may upscale later)."""

        def store() -> None:
            for key, data in files.items():
                self.storage.put(key, data)
            self.inferences.finish(inf_id, outputs)

        await to_thread.run_sync(store)

    def _undo(self, token_id: int, cost: int, inf_id: str, exc: BaseException) -> None:
        message = exc.message if isinstance(exc, DaguerreError) else type(exc).__name__
        self.accounts.refund(token_id, cost, inf_id, note=message)
        self.inferences.fail(inf_id, message)
