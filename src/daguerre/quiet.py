"""Third-party noise that `daguerre serve` silences, all in one place.

Each filter names one known message precisely (category, message and, where the warning is raised
on the caller's behalf, the module), says what it silences and why that is harmless. Everything
else still shows: daguerre's own logs, errors, and any warning not listed here.
"""

from __future__ import annotations

import os
import warnings


def quiet_third_party() -> None:
    """Install the filters; call before the libraries named below are imported."""
    # controlnet_aux's package import (openpose preprocessing) compiles helper functions with
    # torch.jit.script, which torch 2.10+ deprecates. daguerre never calls torch.jit; the functions
    # run the same, and there is nothing a user could change.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    # controlnet_aux imports its MediaPipe face annotator at package import and warns that the
    # optional mediapipe package is missing; daguerre does not use that annotator.
    warnings.filterwarnings(
        "ignore", message=r"The module 'mediapipe' is not installed", category=UserWarning, module=r"controlnet_aux\."
    )
    # controlnet_aux imports timm through its old module paths (timm.models.layers,
    # timm.models.registry); they still work, and the fix is controlnet_aux's to make.
    warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.\w+ is deprecated", category=FutureWarning)
    # controlnet_aux's segment-anything copy registers TinyViT models under names timm already
    # has; the overwritten registry entries are timm's model constructors, which daguerre never
    # looks up.
    warnings.filterwarnings(
        "ignore",
        message=r"Overwriting tiny_vit_\w+ in registry with controlnet_aux\.",
        category=UserWarning,
        module=r"controlnet_aux\.",
    )
    # Ray Serve's config models (imported by a gateway with engine = "ray") pass an extra keyword
    # (update_type) to pydantic's Field, which pydantic 2 deprecates; Ray's to fix, and harmless.
    warnings.filterwarnings(
        "ignore", message=r"Using extra keyword arguments on `Field` is deprecated", category=DeprecationWarning
    )
    # The per-file progress bars of diffusers ("Loading pipeline components..."), transformers
    # ("Loading weights", "Writing model shards") and huggingface_hub, on every model build and
    # load: bars over tiny local files, drawn over the server's own lines. tqdm reads its defaults
    # from TQDM_* variables (tqdm 4.66+); daguerre draws its own progress with rich, not tqdm. An
    # operator who sets the variable keeps their choice.
    os.environ.setdefault("TQDM_DISABLE", "1")
