"""A Ray Serve replica: one GPU worker running the same LocalEngine as `daguerre serve` does
in-process (its fair queue, worker thread, model cache, pipelines), fed by the gateways.

Jobs arrive through `run`, a streaming method: the replica submits the job to its LocalEngine and
yields the engine's events as they come (plain dataclasses, pickled by Ray), with its own status
(ReplicaStatus) before the first and before the final event, so the gateway learns each replica's
model loads and resident models without asking. When the gateway cancels the response, Serve
cancels this coroutine (CancelledError) and the job is cancelled in the LocalEngine: a running one
stops at its next step, a waiting one leaves the queue.

Routing: each job carries its checkpoint as Serve's multiplexed model id, `model_id@version`
(`model_key`). The replica registers the id with `serve.multiplexed`, which reports the ids a
replica holds to the routers and keeps at most `max_models_per_replica` of them, least recently
used first; the LocalEngine's cache is capped at the same count, so the two evict alike. The
checkpoint itself is loaded by the LocalEngine's worker thread when the job runs, as in-process:
that thread owns the device and the cache, and the load is counted where every load is.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import serve

from daguerre.engine.jobs import (
    FINAL_EVENTS,
    HiresFixJob,
    Job,
    JobEvent,
    ReplicaStatus,
    UpscaleJob,
)

if TYPE_CHECKING:
    from daguerre.engine.runtime.local import LocalEngine


def model_key(job: Job) -> str | None:
    """The checkpoint a job needs resident, as `model_id@version`: the key jobs are routed by.
    None for an upscale, whose upscaler is a small model every replica may load."""
    if isinstance(job, UpscaleJob):
        return None
    model = job.render.model if isinstance(job, HiresFixJob) else job.model
    return f"{model.id}@{model.version}"


class EngineReplica:
    """The deployment's class; `engine_options` are LocalEngine's keyword arguments."""

    def __init__(self, engine_options: dict[str, Any], max_models: int) -> None:
        from daguerre.engine.runtime.local import LocalEngine  # torch, in the replica's process only

        self._engine: LocalEngine = LocalEngine(**{**engine_options, "max_loaded_models": max_models})
        context = serve.get_replica_context()
        self._replica = context.replica_id.unique_id
        self._actor_name = context.replica_id.to_full_id_str()

        async def hold(model_id: str) -> str:
            # Nothing to load here: the worker thread loads when the job runs. Registering the id
            # is what tells the routers that this replica holds the model.
            return model_id

        self._hold = serve.multiplexed(max_num_models_per_replica=max_models)(hold)

    async def run(self, job_id: str, job: Job, owner: str) -> AsyncIterator[JobEvent | ReplicaStatus]:
        await self._engine.start()
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self._hold(model_id)
        # The gateway admitted it against its own max_queue; here it only waits its turn.
        handle = await self._engine.submit(job_id, job, owner, readmitted=True)
        ended = False
        try:
            yield self.status()
            async for event in handle.events():
                if isinstance(event, FINAL_EVENTS):
                    ended = True
                    yield self.status()
                yield event
        finally:
            # The gateway cancelled the response (CancelledError here) or went away.
            if not ended:
                self._engine.cancel(job_id)

    async def health(self) -> ReplicaStatus:
        return self.status()

    def status(self) -> ReplicaStatus:
        status = self._engine.status()
        return ReplicaStatus(
            replica=self._replica,
            actor_name=self._actor_name,
            device=status.device,
            dtype=status.dtype,
            queued=status.queued,
            model_loads=self._engine.cache.loads,
            loaded_models=status.loaded_models,
            reported_at=time.time(),
        )
