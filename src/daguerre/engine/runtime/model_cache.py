"""Loaded pipelines, kept resident between requests; the least recently used is evicted.

Loading a checkpoint costs seconds (several images' worth of GPU time), so a request never
reloads a model that is resident.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar, cast

import torch

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class ModelCache(Generic[K]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[K, object] = OrderedDict()
        self.loads = 0  # how many times a loader ran; the tests hold the cache to it

    def get(self, key: K, load: Callable[[], T]) -> T:
        if key in self._entries:
            self._entries.move_to_end(key)
            # Each key names one kind of model, always made by the same loader.
            return cast(T, self._entries[key])
        while len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        value = load()
        self.loads += 1
        self._entries[key] = value
        return value

    def __iter__(self) -> Iterator[K]:
        # A copy: the engine's status is read on the event loop while the worker thread loads.
        return iter(list(self._entries))
