"""What the server does, for its operator: Prometheus metrics, and the job a log line belongs to.

The metrics are module-level objects in prometheus-client's default registry, registered once per
process as the library intends: every app in a process (the tests create many) reports into the
same families, and /metrics (api/routes/metrics.py) exposes that registry. Callers anywhere in
the layers (api, services, engine) report through the functions below, never the objects, so the
names, units and labels are decided here once. Labels are bounded: job kinds, statuses and cache
names come from the code, HTTP routes are templates (`/files/{key:path}`), never concrete paths.

JSON logs: with the setting `log_format = "json"`, `json_log_config` gives uvicorn a logging setup
where every line, uvicorn's and the application's, is one JSON object; a line written while a job
is handled (`job_context`) carries its `inf_id`. The stdlib's logging does this in a formatter of
thirty lines; a logging library would add a dependency for no behaviour we need.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# Every job kind and final status the lifecycle reports, and both model caches: their series
# exist (at zero) from the start, so rates and ratios over them are defined before the first job.
KINDS = ("image", "upscale", "video")
STATUSES = ("done", "failed", "cancelled")
CACHES = ("model", "auxiliary")
# The host-memory tier of the model cache (see engine/runtime/model_cache.py).
HOST_CACHES = ("model_host",)

# From a static answer (~1 ms) to a synchronous video (minutes).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# From a tiny upscale (0.1 s) to a 720p video (10 min).
JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# An idle queue starts a job within milliseconds.
WAIT_BUCKETS = (0.005, 0.025, *JOB_BUCKETS)
# A demo model's step on a CPU (~1 ms) to a Wan 720p step on a GPU (~10 s).
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A tiny model from a warm page cache (10 ms) to a 40 GB Wan pipeline from a network disk.
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_http_requests = Counter(
    "daguerre_http_requests_total",
    "HTTP requests answered, by method, route template ('unmatched' for unknown paths) and status code",
    ["method", "route", "status"],
)
_http_duration = Histogram(
    "daguerre_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer, by method and route template",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
)
_jobs_submitted = Counter("daguerre_jobs_submitted_total", "Jobs accepted (charged and queued), by kind", ["kind"])
_jobs_started = Counter("daguerre_jobs_started_total", "Jobs the worker started, by kind", ["kind"])
_jobs_ended = Counter(
    "daguerre_jobs_ended_total", "Jobs that ended, by kind and status (done, failed, cancelled)", ["kind", "status"]
)
_job_duration = Histogram(
    "daguerre_job_duration_seconds",
    "Seconds from a job's submission to its end (queue wait included), by kind and status",
    ["kind", "status"],
    buckets=JOB_BUCKETS,
)
_queue_wait = Histogram(
    "daguerre_job_queue_wait_seconds",
    "Seconds a job waited in the queue before the worker started it, by kind",
    ["kind"],
    buckets=WAIT_BUCKETS,
)
_queue_depth = Gauge("daguerre_queue_depth", "Jobs waiting in the queue (not counting the running one)")
_step_duration = Histogram(
    "daguerre_denoising_step_seconds", "Seconds of one denoising step, by job kind", ["kind"], buckets=STEP_BUCKETS
)
_model_loads = Counter("daguerre_model_loads_total", "Models loaded into a cache, by cache", ["cache"])
_model_load_duration = Histogram(
    "daguerre_model_load_seconds", "Seconds a model took to load, by cache", ["cache"], buckets=LOAD_BUCKETS
)
_model_evictions = Counter(
    "daguerre_model_evictions_total", "Models evicted from a cache to make room, by cache", ["cache"]
)
_model_restores = Counter(
    "daguerre_model_restores_total", "Models moved back to the device from the host-memory tier, by cache", ["cache"]
)
_model_restore_duration = Histogram(
    "daguerre_model_restore_seconds",
    "Seconds a move back from the host-memory tier took, by cache",
    ["cache"],
    buckets=LOAD_BUCKETS,
)
_cache_used = Gauge("daguerre_model_cache_used_bytes", "Bytes of the models resident in a cache", ["cache"])
_cache_budget = Gauge("daguerre_model_cache_budget_bytes", "Byte budget of a cache", ["cache"])
_cache_entries = Gauge("daguerre_model_cache_entries", "Models resident in a cache", ["cache"])
# In credits, the unit clients see; the ledger's integer millicredits are divided by 1000.
# The Ray Serve engine's workers (engine/ray): each replica's own count of checkpoint loads, as it
# last reported to this gateway with a job's events.
_replica_model_loads = Gauge(
    "daguerre_replica_model_loads",
    "Checkpoints a Ray Serve replica has loaded since it started, as it last reported",
    ["replica"],
)
_credits_charged = Counter("daguerre_credits_charged_total", "Credits charged for accepted jobs")
_credits_refunded = Counter("daguerre_credits_refunded_total", "Credits given back for failed or cancelled jobs")

for _kind in KINDS:
    for _metric in (_jobs_submitted, _jobs_started, _queue_wait, _step_duration):
        _metric.labels(kind=_kind)
    for _status in STATUSES:
        _jobs_ended.labels(kind=_kind, status=_status)
        _job_duration.labels(kind=_kind, status=_status)
for _cache in CACHES:
    for _metric in (_model_loads, _model_load_duration, _model_evictions):
        _metric.labels(cache=_cache)
for _cache in HOST_CACHES:
    _model_evictions.labels(cache=_cache)
_model_restores.labels(cache="model")
_model_restore_duration.labels(cache="model")


def http_request(method: str, route: str, status: int, seconds: float) -> None:
    _http_requests.labels(method=method, route=route, status=str(status)).inc()
    _http_duration.labels(method=method, route=route).observe(seconds)


def job_submitted(kind: str) -> None:
    _jobs_submitted.labels(kind=kind).inc()


def job_started(kind: str, queue_wait_s: float) -> None:
    _jobs_started.labels(kind=kind).inc()
    _queue_wait.labels(kind=kind).observe(queue_wait_s)


def job_ended(kind: str, status: str, duration_s: float) -> None:
    """`status`: done, failed or cancelled; `duration_s`: from submission to the end."""
    _jobs_ended.labels(kind=kind, status=status).inc()
    _job_duration.labels(kind=kind, status=status).observe(duration_s)


def credits_charged(milli: int) -> None:
    _credits_charged.inc(milli / 1000)


def credits_refunded(milli: int) -> None:
    _credits_refunded.inc(milli / 1000)


def queue_depth(n: int) -> None:
    _queue_depth.set(n)


def denoising_step(kind: str, seconds: float) -> None:
    _step_duration.labels(kind=kind).observe(seconds)


def model_loaded(cache: str, seconds: float) -> None:
    _model_loads.labels(cache=cache).inc()
    _model_load_duration.labels(cache=cache).observe(seconds)


def model_restored(cache: str, seconds: float) -> None:
    _model_restores.labels(cache=cache).inc()
    _model_restore_duration.labels(cache=cache).observe(seconds)


def model_evicted(cache: str) -> None:
    _model_evictions.labels(cache=cache).inc()


def cache_residency(cache: str, used_bytes: int, budget_bytes: int, entries: int) -> None:
    _cache_used.labels(cache=cache).set(used_bytes)
    _cache_budget.labels(cache=cache).set(budget_bytes)
    _cache_entries.labels(cache=cache).set(entries)


def replica_model_loads(replica: str, loads: int) -> None:
    _replica_model_loads.labels(replica=replica).set(loads)


def forget_replica(replica: str) -> None:
    with contextlib.suppress(KeyError):
        _replica_model_loads.remove(replica)


# Logs

_inf_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("daguerre_inf_id", default=None)


@contextmanager
def job_context(inf_id: str) -> Iterator[None]:
    """Log lines written inside the block (in this task or thread, and in threads it starts with
    anyio's to_thread, which copy the context) carry `inf_id`."""
    token = _inf_id.set(inf_id)
    try:
        yield
    finally:
        _inf_id.reset(token)


def current_inf_id() -> str | None:
    return _inf_id.get()


# The arguments uvicorn's access logger formats its line from.
_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and inf_id when
    the record was written inside a job_context; uvicorn's access lines also carry their parts.
    Runs after the loggers' filters, so the access-token redaction (api/redaction.py) applies."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        inf_id = getattr(record, "inf_id", None) or _inf_id.get()
        if inf_id is not None:
            line["inf_id"] = inf_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            line.update(zip(_ACCESS_FIELDS, record.args, strict=True))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def json_log_config() -> dict[str, Any]:
    """uvicorn's `log_config` for JSON lines: its own loggers and streams (access lines on stdout,
    the rest on stderr) with JsonFormatter, and the application's loggers at INFO through the root
    logger."""
    handler = {"class": "logging.StreamHandler", "formatter": "json"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "default": {**handler, "stream": "ext://sys.stderr"},
            "access": {**handler, "stream": "ext://sys.stdout"},
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": ["default"], "level": "INFO"},
    }
