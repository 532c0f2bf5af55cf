"""How many bytes a loaded model holds, and how many the engine may keep resident.

A model is measured by its tensors (parameters and buffers of its torch modules, on whatever
device they sit), not by its file: a float32 file loaded in float16 takes half its size, and a
single-file checkpoint carries EMA weights that are never loaded. Tensors shared between entries
(an AnimateDiff pipeline built on a checkpoint's text encoder and VAE) are told apart by their
data pointer, so they count once.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from daguerre.engine.diffusers_classes import DiffusionPipeline

# Suffixes of weight files, for the estimate made before a model is loaded.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _tensors(obj: Any, seen: set[int]) -> Iterator[torch.Tensor]:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    elif isinstance(obj, DiffusionPipeline):
        for component in obj.components.values():
            yield from _tensors(component, seen)
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value, seen)
    elif isinstance(obj, list | tuple | set):
        for value in obj:
            yield from _tensors(value, seen)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for item in dataclasses.fields(obj):
            yield from _tensors(getattr(obj, item.name), seen)
    else:
        # spandrel's ImageModelDescriptor and transformers' pipelines hold their network as `.model`.
        model = getattr(obj, "model", None)
        if isinstance(model, torch.nn.Module):
            yield from _tensors(model, seen)


def tensor_footprint(obj: Any) -> dict[int, int]:
    """The tensors `obj` holds, as {data pointer: bytes}: a pipeline's components, a module, a
    spandrel descriptor, or a dataclass/dict/tuple of those (a loaded pipeline with its LoRA
    state). Tensors without storage (meta) are left out."""
    footprint: dict[int, int] = {}
    for tensor in _tensors(obj, set()):
        if tensor.device.type == "meta":
            continue
        footprint[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
    return footprint


def resident_bytes(obj: Any) -> int:
    return sum(tensor_footprint(obj).values())


def estimate_bytes(path: str | Path) -> int:
    """A guess, before loading, at what a model on disk will take: the size of its weight files.
    It errs high (float32 files loaded in half precision, EMA weights, duplicate variants), so
    making room for it never leaves too little; the cache measures the real size once loaded."""
    root = Path(path)
    if root.is_file():
        return root.stat().st_size
    if not root.is_dir():
        return 0
    return sum(file.stat().st_size for file in root.rglob("*") if file.suffix in _WEIGHT_SUFFIXES and file.is_file())


def device_memory(device: torch.device) -> int:
    """Total memory of `device`: the GPU's own on CUDA; system RAM on CPU and on MPS (Apple's GPU
    shares it)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return host_memory()


def default_budget(device: torch.device, fraction: float) -> int:
    return int(device_memory(device) * fraction)


def host_memory() -> int:
    """System RAM, where the host tier of the model cache keeps what the device tier evicts."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def moved(tensor: torch.Tensor, device: torch.device, pin: bool = False) -> torch.Tensor:
    """`tensor` on `device`; to page-locked host memory when `pin` (then the copy back to a GPU
    runs at full PCIe speed and without blocking the host). Memory format is kept."""
    if pin:
        target = torch.empty_like(tensor, device="cpu", pin_memory=True)
        target.copy_(tensor)
        return target
    return tensor.to(device, non_blocking=True)


def move_modules(modules: Iterable[torch.nn.Module], device: torch.device, pin: bool = False) -> None:
    """Move every parameter and buffer of `modules` to `device` in place: the same Parameter
    objects get new storage, so whatever holds them (pipelines, compiled graphs, peft wrappers)
    keeps pointing at them."""
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            tensor.data = moved(tensor.data, device, pin)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
