"""Paid work, one way for every endpoint: the credits are taken before the work starts (so
concurrent requests cannot overspend) in the same transaction that records the work, and if
anything fails, a refusal by the engine, a broken model, a client gone away or a server shutting
down, the credits go back in the transaction that marks the record failed and says why. Work a
crash interrupted is failed and refunded when the server next starts (InferenceStore.fail_unfinished).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import get_cancelled_exc_class, to_thread

from daguerre import metrics
from daguerre.errors import DaguerreError
from daguerre.services.records import InferenceStore, new_inference_id
from daguerre.services.storage import Storage

log = logging.getLogger(__name__)


class JobLifecycle:
    def __init__(self, inferences: InferenceStore, storage: Storage) -> None:
        self.inferences = inferences
        self.storage = storage

    @asynccontextmanager
    async def charged(
        self, token_id: int, cost: int, kind: str, model_id: str, version: str, params: dict[str, Any]
    ) -> AsyncIterator[str]:
        """Charge `cost` millicredits and record the work; yields its inference id. The block
        ends with `deliver`; any exception out of it refunds the charge. Log lines written inside
        the block carry the inference id (metrics.job_context)."""
        inf_id = new_inference_id()
        submitted = time.monotonic()
        await to_thread.run_sync(self.inferences.open, inf_id, token_id, kind, model_id, version, params, cost)
        metrics.job_submitted(kind)
        metrics.credits_charged(cost)
        with metrics.job_context(inf_id):
            try:
                yield inf_id
            except BaseException as exc:
                message = exc.message if isinstance(exc, DaguerreError) else type(exc).__name__
                # Shielded from cancellation by anyio: a cancelled request still refunds.
                if await to_thread.run_sync(self.inferences.fail, inf_id, message):
                    metrics.credits_refunded(cost)
                # Cancelled: the request was stopped (a shutdown past its grace, a client gone), not failed.
                status = "cancelled" if isinstance(exc, get_cancelled_exc_class()) else "failed"
                self._ended(inf_id, kind, status, submitted, message)
                raise
            self._ended(inf_id, kind, "done", submitted)

    @staticmethod
    def _ended(inf_id: str, kind: str, status: str, submitted: float, error: str = "") -> None:
        duration = time.monotonic() - submitted
        metrics.job_ended(kind, status, duration)
        log.info("%s job %s %s in %.3f s%s", kind, inf_id, status, duration, f": {error}" if error else "")

    async def deliver(self, inf_id: str, files: dict[str, bytes], outputs: list[str]) -> None:
        """Store the files and mark the work done with `outputs`, the keys the client is given
        (and may upscale later)."""

        def store() -> None:
            for key, data in files.items():
                self.storage.put(key, data)
            self.inferences.finish(inf_id, outputs)

        await to_thread.run_sync(store)
