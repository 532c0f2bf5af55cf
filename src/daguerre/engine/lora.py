"""LoRAs on a resident pipeline: each loaded once, kept loaded, switched per job.

Loading a LoRA file costs a fraction of a second and never touches the base weights (peft wraps
the attention projections), so switching LoRAs never reloads the base model. Every job sets the
active adapters from scratch: a job without LoRAs disables them all, which restores the base
output exactly, so a LoRA never leaks into the next request.
"""

from __future__ import annotations

import hashlib
import re

from diffusers import DiffusionPipeline

from daguerre.engine.jobs import LoraSpec


def adapter_name(spec: LoraSpec) -> str:
    # The path is part of the name: an id re-registered with another file must not reuse the old
    # adapter. peft keeps adapters in ModuleDicts, whose keys may not contain dots.
    digest = hashlib.sha1(spec.path.encode()).hexdigest()[:8]
    return re.sub(r"\W", "_", f"{spec.id}_v{spec.version}_{digest}")


def activate_loras(pipe: DiffusionPipeline, loaded: set[str], loras: tuple[LoraSpec, ...]) -> None:
    """Make exactly `loras`, at their weights, active on `pipe`; `loaded` tracks what is in memory."""
    for spec in loras:
        name = adapter_name(spec)
        if name not in loaded:
            pipe.load_lora_weights(spec.path, adapter_name=name)
            loaded.add(name)
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([adapter_name(s) for s in loras], adapter_weights=[s.weight for s in loras])
    elif loaded:
        pipe.disable_lora()
