"""Model affinity that holds under load: a Ray Serve request router (Serve's custom request router
API, `serve.request_router`) that sends a job only to replicas holding its checkpoint.

Serve's own multiplexed routing is a preference. Measured here (bench/fleet.py, and infra-facts:
40 concurrent calls for 2 models on 2 replicas loaded one replica 6 times) it misses in three ways:
a burst for a model nobody holds yet is spread over every replica with the fewest models (the
replicas report what they hold through the controller, which takes a moment to come back); a
request whose holders are all busy goes after a second or so to the replicas with the fewest
models, then to any; and a replica found for one request may be handed to the oldest waiting one,
whatever its model (FIFO matching).

This router:
- remembers where it placed a model the moment it decides, not when the replica's report comes
  back, so a burst for a new model lands on one replica;
- sends a job only to the replicas holding its model while they have room, so a job waits for a
  slot there (each replica queues up to max_ongoing_requests; its LocalEngine runs them in turn)
  rather than loading its model elsewhere;
- lets a job go elsewhere only after `affinity_wait_s` without room (a hot model then spreads to a
  second replica, which loads it), to the replica with the fewest models and the shortest queue;
- places a model nobody holds on the replica with room for another model (fewer than
  `max_models_per_replica`), the fewest models and the shortest queue;
- matches a found replica only to the request it was found for (no FIFO mixin).

Jobs without a model id (upscales) go to the replica with the shortest queue. Each gateway has its
own router; they agree once the replicas' reports arrive (a fraction of a second).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from typing import Any

from ray.serve.request_router import MultiplexMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

# How long this router trusts a placement of its own that the replica has not reported yet.
PLACEMENT_TTL_S = 5.0


class ModelAffinityRouter(MultiplexMixin, RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._affinity_wait_s = float(kwargs.get("affinity_wait_s", 10.0))
        self._max_models = int(kwargs.get("max_models_per_replica", 3))
        # model id -> {replica: when this router last sent it there}
        self._placed: dict[str, dict[ReplicaID, float]] = {}

    def _holders(self, model_id: str, now: float) -> set[ReplicaID]:
        reported: set[ReplicaID] = self._multiplexed_model_id_to_replica_ids.get(model_id, set())
        placed = {replica for replica, at in self._placed.get(model_id, {}).items() if now - at < PLACEMENT_TTL_S}
        alive: set[ReplicaID] = self._replica_id_set
        return (reported | placed) & alive

    def _models_on(self, replica: RunningReplica, now: float) -> int:
        models = set(replica.multiplexed_model_ids)
        for model_id, places in self._placed.items():
            at = places.get(replica.replica_id)
            if at is not None and now - at < PLACEMENT_TTL_S:
                models.add(model_id)
        return len(models)

    def _queue_len(self, replica: RunningReplica) -> int:
        cached = self._replica_queue_len_cache.get(replica.replica_id)
        return int(cached) if cached is not None else 0

    def _best_new_home(self, replicas: Sequence[RunningReplica], now: float) -> RunningReplica:
        def score(replica: RunningReplica) -> tuple[bool, int, int, float]:
            models = self._models_on(replica, now)
            return (models >= self._max_models, models, self._queue_len(replica), random.random())

        return min(replicas, key=score)

    def _place(self, model_id: str, replica: RunningReplica, now: float) -> None:
        self._placed.setdefault(model_id, {})[replica.replica_id] = now

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        model_id = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        if pending_request is None or not model_id:
            return [candidate_replicas]  # the shortest queue among all
        # Sleep between rounds when every candidate is full, rather than spin.
        pending_request.routing_context.should_backoff = True
        now = time.monotonic()
        holders = self._holders(model_id, now)
        if not holders:
            home = self._best_new_home(candidate_replicas, now)
            self._place(model_id, home, now)
            return [[home]]
        for replica_id in holders:
            if replica_id in self._placed.get(model_id, {}):
                self._placed[model_id][replica_id] = now
        ranked = [[replica for replica in candidate_replicas if replica.replica_id in holders]]
        others = [replica for replica in candidate_replicas if replica.replica_id not in holders]
        if others and time.time() - pending_request.created_at >= self._affinity_wait_s:
            spill = self._best_new_home(others, now)
            self._place(model_id, spill, now)
            ranked.append([spill])
        return ranked
