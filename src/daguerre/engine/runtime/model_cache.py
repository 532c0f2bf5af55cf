"""Loaded pipelines, kept resident between requests; the least recently used is evicted.

Loading a checkpoint costs seconds (several images' worth of GPU time), so a request never
reloads a model that is resident.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch


class ModelCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.loads = 0  # how many times a loader ran; the tests hold the cache to it

    def get(self, key: Hashable, load: Callable[[], Any]) -> Any:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        while len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        value = load()
        self.loads += 1
        self._entries[key] = value
        return value

    def keys(self) -> list[Hashable]:
        return list(self._entries)
