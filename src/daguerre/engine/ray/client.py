"""The gateway's engine when `engine = "ray"`: jobs go to the workers of a Ray Serve application
(replica.py) through a streaming deployment handle.

`submit` admits the job against this gateway's `max_queue`, then calls the replicas' `run` with
the job's checkpoint as the multiplexed model id; the router (routing.py, by default) picks the
replica. The streamed items are the replica LocalEngine's own events, pushed onto the JobHandle as
they come, and ReplicaStatus reports, kept per replica for `health` and the metrics. `cancel`
cancels the response: the replica's coroutine gets CancelledError and cancels the job there.

A replica that dies while it runs a job (its node lost, the process killed) ends the stream with
an actor error: the job runs again, on another replica or on the one Ray starts in its place, up to
`retries_on_replica_loss` times (the same seeds give the same result), then fails (refunded by the
job lifecycle). The first start of a gateway against a cluster without the application deploys it
(`deploy`); later gateways attach to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from daguerre import metrics
from daguerre.engine.client import EngineClient, JobHandle
from daguerre.engine.jobs import (
    BUSY,
    CANCELLED,
    FINAL_EVENTS,
    SHUTTING_DOWN,
    STOPPED,
    Cancelled,
    EngineStatus,
    Failed,
    Job,
    JobEvent,
    Queued,
    ReplicaStatus,
    Started,
)
from daguerre.engine.ray.replica import EngineReplica, model_key
from daguerre.engine.ray.routing import ModelAffinityRouter
from daguerre.engine.runtime.failures import new_error_id
from daguerre.errors import ServerBusy
from daguerre.settings import RaySettings

log = logging.getLogger(__name__)

DEPLOYMENT = "engine"
REPLICA_LOST = "the GPU worker running this job stopped (its replica was lost) {times}; its credits were refunded"
ROUTERS = {
    "affinity": f"{ModelAffinityRouter.__module__}.{ModelAffinityRouter.__name__}",
    "serve": "ray.serve._private.request_router.pow_2_router.PowerOfTwoChoicesRequestRouter",
    "round_robin": "ray.serve.experimental.round_robin_router.RoundRobinRouter",
}


def application(settings: RaySettings, engine_options: dict[str, Any]) -> serve.Application:
    """The Serve application of the workers; `engine_options` are LocalEngine's keyword arguments."""
    scaling: dict[str, Any]
    if settings.min_replicas == settings.max_replicas:
        scaling = {"num_replicas": settings.max_replicas}
    else:
        scaling = {
            "autoscaling_config": {
                "min_replicas": settings.min_replicas,
                "max_replicas": settings.max_replicas,
                "target_ongoing_requests": settings.target_ongoing_requests,
            }
        }
    deployment = serve.deployment(
        name=DEPLOYMENT,
        ray_actor_options={"num_gpus": settings.num_gpus, "num_cpus": settings.num_cpus},
        max_ongoing_requests=settings.max_ongoing_requests,
        request_router_config={
            "request_router_class": ROUTERS[settings.router],
            "request_router_kwargs": {
                "affinity_wait_s": settings.affinity_wait_s,
                "max_models_per_replica": settings.max_models_per_replica,
            }
            if settings.router == "affinity"
            else {},
        },
        **scaling,
    )(EngineReplica)
    return deployment.bind(engine_options, settings.max_models_per_replica)


@dataclass(eq=False)
class _Remote:
    """A job of this gateway, from admission to its final event."""

    job_id: str
    job: Job
    owner: str
    handle: JobHandle
    task: asyncio.Task[None] | None = None
    response: DeploymentResponseGenerator[Any] | None = None
    started: bool = False
    cancelled: bool = False
    ended: bool = False
    attempts: int = 0
    position: int | None = None
    replica: str | None = None  # the actor name of the replica running the current attempt

    def end(self, event: JobEvent) -> None:
        if not self.ended:
            self.ended = True
            self.handle.push(event)

    def stop(self) -> None:
        if self.response is not None:
            self.response.cancel()


class RayEngineClient(EngineClient):
    def __init__(
        self,
        settings: RaySettings,
        engine_options: dict[str, Any],
        max_queue: int = 32,
        shutdown_grace_s: float = 30.0,
        deploy: bool = True,
    ) -> None:
        self.settings = settings
        self._engine_options = engine_options
        self._max_queue = max_queue
        self._shutdown_grace_s = shutdown_grace_s
        self._deploy = deploy
        self._handle: DeploymentHandle[Any] | None = None
        self._jobs: dict[str, _Remote] = {}
        self._replicas: dict[str, ReplicaStatus] = {}  # by actor name, the latest report of each
        self._closing = False

    # Connecting

    async def start(self) -> None:
        self._closing = False
        if self._handle is None:
            self._handle = await asyncio.to_thread(self._connect)

    def _connect(self) -> DeploymentHandle[Any]:
        if not ray.is_initialized():
            # The replicas' logs stay on their nodes (and in Ray's log folder), not in the gateway's.
            ray.init(address=self.settings.address, namespace=self.settings.namespace, log_to_driver=False)
        name = self.settings.app_name
        if name not in serve.status().applications:
            if not self._deploy:
                raise RuntimeError(f"the Ray cluster has no Serve application {name!r} and deploy is off")
            log.info("deploying the Serve application %r (router %s)", name, self.settings.router)
            # No HTTP proxy: gateways reach the workers through handles only.
            serve.start(proxy_location="Disabled")
            serve.run(application(self.settings, self._engine_options), name=name, route_prefix=None)
        return serve.get_app_handle(name)

    # Jobs

    async def submit(self, job_id: str, job: Job, owner: str, *, readmitted: bool = False) -> JobHandle:
        if self._handle is None or self._closing:
            raise ServerBusy(SHUTTING_DOWN if self._closing else "the engine is not running; try again shortly")
        if len(self._jobs) >= self._max_queue and not readmitted:
            raise ServerBusy(
                f"server busy: {len(self._jobs)} jobs are queued (max_queue {self._max_queue}); try again shortly"
            )
        if job_id in self._jobs:
            raise ValueError(f"job {job_id} is already in the engine")
        remote = _Remote(job_id, job, owner, JobHandle(job_id, self.cancel))
        self._jobs[job_id] = remote
        # Until a replica takes it, its place is behind this gateway's jobs that have not started.
        self._queued(remote, sum(1 for other in self._jobs.values() if not other.started) - 1)
        remote.task = asyncio.create_task(self._follow(remote), name=f"ray job {job_id}")
        return remote.handle

    def _queued(self, remote: _Remote, position: int) -> None:
        if not remote.started and position != remote.position:
            remote.position = position
            remote.handle.push(Queued(position))

    async def _follow(self, remote: _Remote) -> None:
        try:
            while not remote.ended:
                try:
                    await self._attempt(remote)
                except RequestCancelledError:
                    remote.end(Cancelled(CANCELLED))
                except RayActorError as exc:
                    if remote.cancelled:
                        remote.end(Cancelled(CANCELLED))
                    elif remote.attempts > self.settings.retries_on_replica_loss:
                        times = "twice" if remote.attempts == 2 else f"{remote.attempts} times"
                        log.warning("job %s lost its replica %s: %s", remote.job_id, times, exc)
                        remote.end(Failed(REPLICA_LOST.format(times=times)))
                    else:
                        log.warning("job %s lost its replica; running it again: %s", remote.job_id, exc)
        except Exception:
            error_id = new_error_id()
            log.exception("job %s failed on the Ray cluster; error id %s", remote.job_id, error_id)
            remote.end(Failed(f"generation failed; error id {error_id}: the server log has the details", error_id))
        finally:
            self._jobs.pop(remote.job_id, None)

    async def _attempt(self, remote: _Remote) -> None:
        if remote.cancelled:
            remote.end(Cancelled(CANCELLED))
            return
        assert self._handle is not None
        remote.attempts += 1
        key = model_key(remote.job) if self.settings.router != "round_robin" else None
        options = self._handle.options(stream=True, multiplexed_model_id=key or "")
        response = options.run.remote(remote.job_id, remote.job, remote.owner)
        assert isinstance(response, DeploymentResponseGenerator)  # stream=True
        remote.response = response
        async for item in response:
            if isinstance(item, ReplicaStatus):
                remote.replica = item.actor_name
                self._record(item)
            elif isinstance(item, Queued):
                self._queued(remote, item.position)
            elif isinstance(item, Started):
                if not remote.started:  # a job run again after a replica loss has started already
                    remote.started = True
                    remote.handle.push(item)
            else:
                if isinstance(item, FINAL_EVENTS):
                    remote.end(item)
                    return
                remote.handle.push(item)
        raise RayActorError("the replica's stream ended before the job did")

    def cancel(self, job_id: str) -> bool:
        remote = self._jobs.get(job_id)
        if remote is None or remote.ended or remote.cancelled:
            return False
        remote.cancelled = True
        remote.stop()
        return True

    # Status

    def _record(self, report: ReplicaStatus) -> None:
        known = self._replicas.get(report.actor_name)
        if known is None or (report.model_loads, report.reported_at) >= (known.model_loads, known.reported_at):
            self._replicas[report.actor_name] = report
            metrics.replica_model_loads(report.replica, report.model_loads)

    def replicas(self) -> list[ReplicaStatus]:
        """The latest report of each replica that has run a job of this gateway."""
        return sorted(self._replicas.values(), key=lambda report: report.replica)

    def replica_of(self, job_id: str) -> str | None:
        """The actor name of the replica running a job of this gateway, once one has taken it."""
        remote = self._jobs.get(job_id)
        return remote.replica if remote is not None else None

    def alive_replicas(self) -> set[str]:
        """The actor names of the application's live replicas (a blocking call to Ray's GCS)."""
        prefix = f"SERVE_REPLICA::{self.settings.app_name}#{DEPLOYMENT}#"
        return {
            actor["name"]
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if actor["namespace"] == "serve" and actor["name"].startswith(prefix)
        }

    async def health(self) -> EngineStatus:
        alive = await asyncio.to_thread(self.alive_replicas) if self._handle is not None else set()
        for gone in set(self._replicas) - alive:
            metrics.forget_replica(self._replicas.pop(gone).replica)
        replicas = self.replicas()
        waiting = sum(1 for remote in self._jobs.values() if not remote.started)
        return EngineStatus(
            device=f"ray: {len(alive)} replicas" + (f" ({replicas[0].device})" if replicas else ""),
            dtype=replicas[0].dtype if replicas else "",
            queued=len(self._jobs),
            waiting=waiting,
            loaded_models=tuple(sorted({name for report in replicas for name in report.loaded_models})),
            replicas=tuple(replicas),
        )

    async def close(self, grace_s: float | None = None) -> None:
        """Jobs no replica has started fail at once; running ones get `grace_s` to finish, then
        fail and are cancelled on their replicas. The application keeps running for the other
        gateways (and the next start)."""
        self._closing = True
        grace = self._shutdown_grace_s if grace_s is None else grace_s
        for remote in list(self._jobs.values()):
            if not remote.started:
                remote.end(Failed(SHUTTING_DOWN, status=BUSY))
                remote.cancelled = True
                remote.stop()
        tasks = [remote.task for remote in self._jobs.values() if remote.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for remote in list(self._jobs.values()):
            log.warning("a job outlived the shutdown grace period (%ss); failing it", grace)
            remote.end(Failed(STOPPED, status=BUSY))
            remote.cancelled = True
            remote.stop()
            if remote.task is not None:
                remote.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await remote.task
