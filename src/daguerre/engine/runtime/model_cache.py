"""Loaded models, kept resident between requests within a byte budget; the least recently used
are evicted to make room.

Loading a checkpoint costs seconds (several images' worth of GPU time), so a request never
reloads a model that is resident. The budget is in bytes because a count means nothing when a
2 GB SD 1.5 pipeline and a 40 GB Wan pipeline share one cache. Before a load, entries are evicted
until the model's estimated size (its files) fits; once loaded it is measured (its tensors), and
more are evicted if it turned out larger. A model larger than the whole budget is still loaded,
alone, with a warning: refusing it would make a registered model unusable, and the operator sees
the warning and the sizes in /health.

A second tier, host memory (pinned RAM on CUDA), catches what the device tier evicts when the
engine gives it a way to move values (`tiers`): swapping a model back onto the device then costs a
copy over PCIe, not a load from disk. Its own byte budget and LRU order bound it; what falls out of
it is dropped. A value that shares tensors with an entry still on the device (an AnimateDiff
pipeline built on a checkpoint's VAE) is dropped instead of moved, since moving it would pull the
shared tensors from under the other entry.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

import torch

from daguerre import metrics
from daguerre.engine.runtime.memory import tensor_footprint

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class HostTier:
    """The host-memory tier: its byte budget, and how values move there and back. `to_host`
    returns False for a value it cannot move (it is then dropped)."""

    budget_bytes: int
    to_host: Callable[[object], bool]
    to_device: Callable[[object], None]


class ModelCache(Generic[K]):
    def __init__(
        self, budget_bytes: int, capacity: int | None = None, name: str = "model", host: HostTier | None = None
    ) -> None:
        self.budget_bytes = budget_bytes
        self.capacity = capacity  # an optional cap on the number of entries, besides the bytes
        self.name = name  # in log lines, and the `cache` label of its metrics
        self.host = host if host is not None and host.budget_bytes > 0 else None
        self._entries: OrderedDict[K, object] = OrderedDict()
        self._footprints: dict[K, dict[int, int]] = {}
        self._host_entries: OrderedDict[K, object] = OrderedDict()
        self._host_footprints: dict[K, dict[int, int]] = {}
        self.loads = 0  # how many times a loader ran; the tests hold the cache to it
        self.restores = 0  # how many times a value came back from the host tier

    def get(self, key: K, load: Callable[[], T], estimate: int = 0) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            # Each key names one kind of model, always made by the same loader.
            return cast(T, self._entries[key])
        if key in self._host_entries:
            return cast(T, self._restore(key))
        self._make_room(estimate, reserve_slot=True)
        started = time.perf_counter()
        value = load()
        metrics.model_loaded(self.name, time.perf_counter() - started)
        self.loads += 1
        self._entries[key] = value
        self._footprints[key] = tensor_footprint(value)
        self._make_room(0, reserve_slot=False)
        self._report()
        size = self.size_of(key)
        if size > self.budget_bytes:
            log.warning(
                "%s %s takes %d bytes, more than the whole %s cache budget of %d bytes; it is resident alone",
                self.name,
                label(key),
                size,
                self.name,
                self.budget_bytes,
            )
        return value

    def _restore(self, key: K) -> object:
        assert self.host is not None  # only a cache with a host tier has host entries
        value = self._host_entries.pop(key)
        size = sum(self._host_footprints.pop(key).values())
        self._make_room(size, reserve_slot=True)
        started = time.perf_counter()
        self.host.to_device(value)
        seconds = time.perf_counter() - started
        metrics.model_restored(self.name, seconds)
        self.restores += 1
        log.info("%s cache moved %s back from host memory in %.3f s", self.name, label(key), seconds)
        self._entries[key] = value
        self._footprints[key] = tensor_footprint(value)
        self._make_room(0, reserve_slot=False)
        self._report()
        return value

    def peek(self, key: K) -> object | None:
        """The entry if resident, without counting it as used (for work prepared ahead of its turn)."""
        return self._entries.get(key)

    def remeasure(self) -> None:
        """Measure the entries again (a pipeline grows as LoRAs load into it) and evict the least
        recently used while the total is over the budget."""
        for key, value in self._entries.items():
            self._footprints[key] = tensor_footprint(value)
        self._make_room(0, reserve_slot=False)
        self._report()

    def _make_room(self, incoming: int, reserve_slot: bool) -> None:
        # The most recent entry is the one being loaded or used; it is never evicted here.
        protected = 0 if reserve_slot else 1
        while len(self._entries) > protected:
            over_count = self.capacity is not None and len(self._entries) + reserve_slot > self.capacity
            if not over_count and self.used_bytes() + incoming <= self.budget_bytes:
                return
            self._evict(next(iter(self._entries)))

    def _evict(self, key: K) -> None:
        value = self._entries.pop(key)
        footprint = self._footprints.pop(key)
        metrics.model_evicted(self.name)
        if self._to_host(key, value, footprint):
            log.info("%s cache moved %s to host memory", self.name, label(key))
        else:
            log.info("%s cache evicted %s", self.name, label(key))
        del value
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _to_host(self, key: K, value: object, footprint: dict[int, int]) -> bool:
        host = self.host
        size = sum(footprint.values())
        if host is None or size > host.budget_bytes:
            return False
        if any(footprint.keys() & other.keys() for other in self._footprints.values()):
            return False
        # Room first, so the host tier never holds more than its budget, even for a moment.
        while self._host_entries and self.host_used_bytes() + size > host.budget_bytes:
            dropped = next(iter(self._host_entries))
            del self._host_entries[dropped], self._host_footprints[dropped]
            metrics.model_evicted(host_label(self.name))
            log.info("%s cache dropped %s from host memory", self.name, label(dropped))
        if not host.to_host(value):
            return False
        self._host_entries[key] = value
        self._host_footprints[key] = tensor_footprint(value)
        return True

    def _report(self) -> None:
        metrics.cache_residency(self.name, self.used_bytes(), self.budget_bytes, len(self._entries))
        if self.host is not None:
            metrics.cache_residency(
                host_label(self.name), self.host_used_bytes(), self.host.budget_bytes, len(self._host_entries)
            )

    def size_of(self, key: K) -> int:
        return sum(self._footprints[key].values())

    def used_bytes(self) -> int:
        # Tensors shared by two entries are counted once.
        union: dict[int, int] = {}
        for footprint in list(self._footprints.values()):
            union.update(footprint)
        return sum(union.values())

    def resident(self) -> list[tuple[K, int]]:
        """(key, bytes) of each entry, least recently used first."""
        footprints = dict(self._footprints)
        return [(key, sum(footprints[key].values())) for key in list(self._entries) if key in footprints]

    def host_used_bytes(self) -> int:
        return sum(sum(footprint.values()) for footprint in list(self._host_footprints.values()))

    def host_resident(self) -> list[tuple[K, int]]:
        """(key, bytes) of each entry of the host tier, least recently used first."""
        footprints = dict(self._host_footprints)
        return [(key, sum(footprints[key].values())) for key in list(self._host_entries) if key in footprints]

    def host_keys(self) -> list[K]:
        return list(self._host_entries)

    def keys(self) -> list[K]:
        return list(self._entries)

    def __iter__(self) -> Iterator[K]:
        # A copy: the engine's status is read on the event loop while the worker thread loads.
        return iter(list(self._entries))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries


def host_label(name: str) -> str:
    """The `cache` label of a cache's host tier in the metrics."""
    return f"{name}_host"


def label(key: Hashable) -> str:
    """`id@version` for a model spec, with the kind first for auxiliary keys ("controlnet", spec)."""
    if isinstance(key, tuple):
        return " ".join(label(part) for part in key)
    identifier, version = getattr(key, "id", None), getattr(key, "version", None)
    return f"{identifier}@{version}" if identifier is not None else str(key)
