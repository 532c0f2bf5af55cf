"""A typed Python client for daguerre (and for the hosted SinkIn API's endpoints).

    from daguerre_client import Daguerre

    with Daguerre("http://127.0.0.1:8000", token) as client:
        result = client.generate("demo", "a lighthouse at dusk", width=256, height=256, num_images=1)
        result.images[0].download("lighthouse.png")

`AsyncDaguerre` has the same methods for asyncio. The main README's "Python SDK" section has more.
"""

from daguerre_client._async import AsyncDaguerre, AsyncJob
from daguerre_client._core import (
    DEFAULT_TIMEOUT,
    DEFAULT_VIDEO_TIMEOUT,
    NO_RETRY,
    ControlNet,
    ImageInput,
    ImageOptions,
    RetryPolicy,
    Scheduler,
    UpscaleType,
    VideoOptions,
)
from daguerre_client._sync import Daguerre, Job
from daguerre_client.errors import (
    ConnectionFailed,
    DaguerreError,
    GenerationFailed,
    InsufficientCredits,
    InvalidParameter,
    JobCancelled,
    NotFound,
    NotSupportedByServer,
    RequestTimeout,
    ServerBusy,
    TooManyJobs,
    Unauthorized,
)
from daguerre_client.types import (
    Balance,
    Cancelled,
    Failed,
    File,
    Finished,
    Image,
    InferenceResult,
    JobEvent,
    JobPage,
    JobProgress,
    JobStatus,
    ModelInfo,
    ModelList,
    Progress,
    Queued,
    Started,
    UpscaleResult,
    Video,
    VideoResult,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_VIDEO_TIMEOUT",
    "NO_RETRY",
    "AsyncDaguerre",
    "AsyncJob",
    "Balance",
    "Cancelled",
    "ConnectionFailed",
    "ControlNet",
    "Daguerre",
    "DaguerreError",
    "Failed",
    "File",
    "Finished",
    "GenerationFailed",
    "Image",
    "ImageInput",
    "ImageOptions",
    "InferenceResult",
    "InsufficientCredits",
    "InvalidParameter",
    "Job",
    "JobCancelled",
    "JobEvent",
    "JobPage",
    "JobProgress",
    "JobStatus",
    "ModelInfo",
    "ModelList",
    "NotFound",
    "NotSupportedByServer",
    "Progress",
    "Queued",
    "RequestTimeout",
    "RetryPolicy",
    "Scheduler",
    "ServerBusy",
    "Started",
    "TooManyJobs",
    "Unauthorized",
    "UpscaleResult",
    "UpscaleType",
    "Video",
    "VideoOptions",
    "VideoResult",
]
