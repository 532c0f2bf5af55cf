"""Text-to-image on a loaded pipeline of any family, for one job or a batch of them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from daguerre.engine.diffusers_classes import DiffusionPipeline
from daguerre.engine.jobs import ReportProgress, TextToImageJob
from daguerre.engine.pipelines.sampling import sample_batch
from daguerre.engine.pipelines.schedulers import Schedulers
from daguerre.engine.prompts.conditioning import Conditioning


def text_to_image(
    pipe: DiffusionPipeline,
    schedulers: Schedulers,
    jobs: Sequence[TextToImageJob],
    conditionings: Sequence[Conditioning],
    progress: ReportProgress | None = None,
) -> list[np.ndarray]:
    first = jobs[0]
    return sample_batch(pipe, schedulers, jobs, conditionings, progress, width=first.width, height=first.height)
