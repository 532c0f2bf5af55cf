"""The contract's scheduler names and the diffusers schedulers an A1111/SinkIn user expects.

| API name           | A1111 sampler   | diffusers                                            |
| DPMSolverMultistep | DPM++ 2M        | DPMSolverMultistepScheduler (dpmsolver++, order 2)   |
| K_EULER_ANCESTRAL  | Euler a         | EulerAncestralDiscreteScheduler                      |
| DDIM               | DDIM            | DDIMScheduler                                        |
| K_EULER            | Euler           | EulerDiscreteScheduler                               |
| PNDM               | PLMS            | PNDMScheduler (skip_prk_steps)                       |
| KLMS               | LMS             | LMSDiscreteScheduler                                 |
| (lcm=true)         | LCM             | LCMScheduler, only with an LCM-LoRA loaded           |

With `karras` (a request's, or the model's), DPMSolverMultistep, K_EULER and KLMS space their steps
by Karras et al.'s sigmas (`use_karras_sigmas=True`), as A1111's "DPM++ 2M Karras" and "LMS
Karras" do; the other classes have no such option.

Each job gets a fresh scheduler built from the model's own scheduler config (its betas and
prediction type), so switching schedulers never reloads anything and jobs never share state.
"""

from __future__ import annotations

from typing import Any, cast

from daguerre.engine.diffusers_classes import (
    ConfigMixin,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
)
from daguerre.engine.jobs import LCM_SCHEDULER

# Each class is a SchedulerMixin built through ConfigMixin.from_config.
_SCHEDULERS: dict[str, tuple[type[ConfigMixin], dict[str, Any]]] = {
    "DPMSolverMultistep": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "K_EULER_ANCESTRAL": (EulerAncestralDiscreteScheduler, {}),
    "DDIM": (DDIMScheduler, {}),
    "K_EULER": (EulerDiscreteScheduler, {}),
    "PNDM": (PNDMScheduler, {"skip_prk_steps": True}),
    "KLMS": (LMSDiscreteScheduler, {}),
    LCM_SCHEDULER: (LCMScheduler, {}),
}

# What a request or a model default may name; LCM comes only with lcm=true.
SCHEDULER_NAMES = tuple(name for name in _SCHEDULERS if name != LCM_SCHEDULER)


def make_scheduler(name: str, base_config: Any, karras: bool = False) -> SchedulerMixin:
    try:
        cls, overrides = _SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(_SCHEDULERS)}") from None
    if karras:
        overrides = {**overrides, "use_karras_sigmas": True}
    # from_config gives the instance alone unless asked for the unused kwargs too.
    return cast(SchedulerMixin, cls.from_config(base_config, **overrides))


class Schedulers:
    """The schedulers of one loaded pipeline, each built once from the pipeline's own scheduler
    config (building one from a config costs several milliseconds). Reusing an instance is safe:
    every pipeline call starts with set_timesteps, which resets its state, and one worker thread
    owns the pipeline."""

    def __init__(self, base_config: Any) -> None:
        self.config = dict(base_config)
        self._built: dict[tuple[str, bool], SchedulerMixin] = {}

    def get(self, name: str, karras: bool = False) -> SchedulerMixin:
        if (name, karras) not in self._built:
            self._built[name, karras] = make_scheduler(name, self.config, karras)
        return self._built[name, karras]
