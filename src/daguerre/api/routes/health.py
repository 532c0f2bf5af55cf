from __future__ import annotations

from fastapi import APIRouter, Request

from daguerre.api.dependencies import services

router = APIRouter()


@router.get("/health", summary="Liveness and engine status")
async def health(request: Request) -> dict[str, object]:
    status = await services(request).engine.health()
    body: dict[str, object] = {
        "status": "ok",
        "device": status.device,
        "dtype": status.dtype,
        "queued": status.queued,  # running or waiting
        "queue_depth": status.waiting,  # waiting for the worker
        "loaded_models": list(status.loaded_models),
        "memory": {
            "models": {
                "budget_bytes": status.budget_bytes,
                "used_bytes": status.used_bytes,
                "resident": [{"model": m.name, "bytes": m.bytes} for m in status.resident],
            },
            "host": {
                "budget_bytes": status.host_budget_bytes,
                "used_bytes": status.host_used_bytes,
                "resident": [{"model": m.name, "bytes": m.bytes} for m in status.host_resident],
            },
            "device_peak_bytes": status.device_peak_bytes,
            "auxiliary": {
                "budget_bytes": status.auxiliary_budget_bytes,
                "used_bytes": status.auxiliary_used_bytes,
                "resident": [{"model": m.name, "bytes": m.bytes} for m in status.auxiliary_resident],
            },
        },
    }
    if status.replicas:  # the Ray Serve engine: each worker as it last reported
        body["replicas"] = [
            {
                "replica": replica.replica,
                "device": replica.device,
                "queued": replica.queued,
                "model_loads": replica.model_loads,
                "loaded_models": list(replica.loaded_models),
            }
            for replica in status.replicas
        ]
    return body
