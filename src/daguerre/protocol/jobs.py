"""Jobs: the options every POST endpoint takes beside its own fields, and the job answers.

`async` and `webhook_url` are options of the delivery, not of the work: they are parsed apart from
each endpoint's request and never stored in the record's request document.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from daguerre.protocol.fields import Bool, Int, Text

JobStatusName = Literal["queued", "running", "done", "failed", "cancelled"]


class JobOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_async: Bool = Field(
        False,
        alias="async",
        description='"true": answer at once with the job\'s inf_id and queue position; follow it at '
        "/api/jobs/{inf_id} (and /events). Default: wait for the result, as the hosted API does",
    )
    webhook_url: Text | None = Field(
        None, description="Called with the job's status body (signed) when the job ends: done, failed or cancelled"
    )


class JobAccepted(BaseModel):
    error_code: Literal[0] = 0
    inf_id: str
    status: Literal["queued"] = "queued"
    queue_position: int = Field(description="Jobs that start before this one, the running one included")


class JobProgress(BaseModel):
    step: int
    total: int = Field(description="Steps (or upscaled tiles) of the stage that runs")
    fraction: float


class JobStatus(BaseModel):
    # When done, the synchronous answer's fields follow (images, seeds, ... or video_url, ...).
    model_config = ConfigDict(extra="allow")

    error_code: Literal[0] = 0
    inf_id: str
    kind: Literal["image", "upscale", "video"] | str
    status: JobStatusName
    queue_position: int | None = Field(None, description="While queued: jobs that start before it")
    progress: JobProgress | None = Field(None, description="While running (and after): the last step reported")
    attempts: int = Field(description="Times it started; a job a crash interrupted runs once more")
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    queue_wait_s: float | None = None
    run_s: float | None = None
    credit_cost: float = Field(description="Credits taken; 0 once refunded (failed, cancelled)")
    message: str | None = Field(None, description="Why it failed or was cancelled")
    error_id: str | None = None
    webhook_url: str | None = None
    webhook_attempts: list[dict[str, Any]] | None = None


class JobQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    access_token: Text = Field(description="Access token (also as a query parameter, for EventSource)")


class JobListQuery(JobQuery):
    limit: Int = Field(20, ge=1, le=100, description="Jobs per page, newest first")
    before: Text | None = Field(None, description="The next_before of the previous page: an inf_id")


class JobList(BaseModel):
    error_code: Literal[0] = 0
    jobs: list[JobStatus]
    next_before: str | None = Field(None, description="Pass as before= for the next page; null on the last")
