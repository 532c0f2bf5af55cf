"""What a client learns when the engine fails: which stage of which job failed, and an error id
the server log holds with the traceback. Exception text never reaches the client: it can carry
server paths and library internals.

Errors the engine raises on purpose (DaguerreError: a bad parameter, a LoRA it refuses, a result
with invalid values) already say what a client may know, and pass through unchanged.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from daguerre.errors import DaguerreError, GenerationFailed

log = logging.getLogger("daguerre.engine")

# Import names of the optional packages some code paths need, and what installs them.
PACKAGES = {
    "controlnet_aux": "controlnet-aux",
    "timm": "timm",
    "ftfy": "ftfy",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "scipy": "scipy",
    "spandrel": "spandrel",
    "cv2": "opencv-python-headless",
}


class JobCancelled(Exception):
    """Raised on the worker thread by a job's progress callback once the job is cancelled; it
    unwinds the pipeline call at that step. Not a failure: `stage` lets it through untouched."""


def new_error_id() -> str:
    return uuid.uuid4().hex[:8]


class MissingDependency(GenerationFailed):
    """A package one code path needs is not installed; the operator's message says which."""

    @classmethod
    def of(cls, module: str, what: str) -> MissingDependency:
        top = module.split(".")[0]
        package = PACKAGES.get(top, top)
        error_id = new_error_id()
        log.error("generation failed while %s: the package %s is not installed; error id %s", what, package, error_id)
        return cls(
            f"generation failed while {what}: this server lacks the Python package {package!r} that it needs; "
            f"the operator can install it with `pip install {package}` (error id {error_id})",
            error_id=error_id,
        )


def require(module: str, what: str) -> None:
    """Fail with an operator-facing message when `module` cannot be imported (for libraries that
    only notice a missing optional package deep inside a call, as diffusers' Wan does with ftfy)."""
    import importlib.util

    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a None entry in sys.modules, or a half-imported package
        found = False
    if not found:
        raise MissingDependency.of(module, what)


@contextmanager
def stage(what: str) -> Iterator[None]:
    """Run one stage of a job ("loading model demo (version 1)", "denoising"); a failure becomes
    GenerationFailed naming the stage, with an error id that the logged traceback carries too."""
    try:
        yield
    except (DaguerreError, JobCancelled):
        raise
    except ModuleNotFoundError as exc:
        raise MissingDependency.of(exc.name or "unknown", what) from exc
    except Exception as exc:
        error_id = new_error_id()
        log.exception("generation failed while %s; error id %s", what, error_id)
        raise GenerationFailed(
            f"generation failed while {what}; error id {error_id}: the server log has the details",
            error_id=error_id,
        ) from exc
