"""The contract's scheduler names and the diffusers schedulers an A1111/SinkIn user expects.

| API name           | A1111 sampler   | diffusers                                            |
| DPMSolverMultistep | DPM++ 2M        | DPMSolverMultistepScheduler (dpmsolver++, order 2)   |
| K_EULER_ANCESTRAL  | Euler a         | EulerAncestralDiscreteScheduler                      |
| DDIM               | DDIM            | DDIMScheduler                                        |
| K_EULER            | Euler           | EulerDiscreteScheduler                               |
| PNDM               | PLMS            | PNDMScheduler (skip_prk_steps)                       |
| KLMS               | LMS             | LMSDiscreteScheduler                                 |

Each job gets a fresh scheduler built from the model's own scheduler config (its betas and
prediction type), so switching schedulers never reloads anything and jobs never share state.
"""

from __future__ import annotations

from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

_SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "KLMS": (LMSDiscreteScheduler, {}),
}

SCHEDULER_NAMES = tuple(_SCHEDULERS)


def make_scheduler(name: str, base_config: Any) -> SchedulerMixin:
    try:
        cls, overrides = _SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(_SCHEDULERS)}") from None
    return cls.from_config(base_config, **overrides)
