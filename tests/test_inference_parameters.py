"""Every parameter of /api/inference: its default, its range, and the error for a bad value."""

from __future__ import annotations

import json

import pytest

from daguerre.protocol.fields import parse
from daguerre.protocol.inference import SCHEDULERS, InferenceRequest
from daguerre.settings import DEFAULT_NEGATIVE_PROMPT
from tests.support.api import Api, RecordingEngine

REQUIRED = {"model_id": "tiny", "prompt": "a lighthouse"}


def test_contract_defaults(recorded_api: Api, recorder: RecordingEngine) -> None:
    body = recorded_api.post("/api/inference", **REQUIRED)
    assert body["error_code"] == 0
    job = recorder.jobs[-1]
    assert (job.width, job.height, job.steps) == (512, 768, 30)
    assert job.guidance_scale == 7.5
    assert job.scheduler == "DPMSolverMultistep"
    assert len(job.seeds) == 4 == len(body["images"])
    assert job.negative_prompt == DEFAULT_NEGATIVE_PROMPT  # use_default_neg defaults to true
    assert job.seeds == tuple(range(job.seeds[0], job.seeds[0] + 4))  # seed -1: random base, then + i
    assert body["seeds"] == list(job.seeds)


def test_every_value_may_be_a_string(recorded_api: Api, recorder: RecordingEngine) -> None:
    recorded_api.post(
        "/api/inference",
        **REQUIRED,
        width="640",
        height="512.0",
        steps="12",
        scale="6.0",
        num_images="2",
        seed="42",
        use_default_neg="FALSE",
        negative_prompt="blurry",
        scheduler="K_EULER",
    )
    job = recorder.jobs[-1]
    assert (job.width, job.height, job.steps, job.guidance_scale) == (640, 512, 12, 6.0)
    assert job.seeds == (42, 43)
    assert job.negative_prompt == "blurry"
    assert job.scheduler == "K_EULER"


@pytest.mark.parametrize("flag", ["true", "True", "TRUE"])
def test_use_default_neg_appends_the_server_default(recorded_api: Api, recorder: RecordingEngine, flag: str) -> None:
    recorded_api.post("/api/inference", **REQUIRED, negative_prompt="blurry", use_default_neg=flag)
    assert recorder.jobs[-1].negative_prompt == f"blurry, {DEFAULT_NEGATIVE_PROMPT}"


def test_model_defaults_win_over_the_server_defaults(recorded_api: Api, recorder: RecordingEngine, tiny_sd15) -> None:
    from daguerre.services.catalog import Format, NewModel

    recorded_api.services.catalog.add(
        NewModel(
            path=tiny_sd15,
            format=Format.DIFFUSERS,
            id="styled",
            title="Styled",
            default_scale=4.5,
            default_scheduler="DDIM",
            default_negative_prompt="ugly",
        )
    )
    recorded_api.post("/api/inference", model_id="styled", prompt="p")
    job = recorder.jobs[-1]
    assert (job.guidance_scale, job.scheduler, job.negative_prompt) == (4.5, "DDIM", "ugly")
    recorded_api.post("/api/inference", model_id="styled", prompt="p", scale=9, scheduler="PNDM")
    job = recorder.jobs[-1]
    assert (job.guidance_scale, job.scheduler) == (9.0, "PNDM")


@pytest.mark.parametrize(
    ("field", "good"),
    [("width", [128, 136, 896]), ("height", [128, 896]), ("steps", [1, 50]), ("scale", [1, 20, 12.5])],
)
def test_range_ends_are_accepted(recorded_api: Api, field: str, good: list) -> None:
    for value in good:
        assert recorded_api.post("/api/inference", **REQUIRED, num_images=1, **{field: value})["error_code"] == 0


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        # The API's range is the widest family's (SDXL: 1536); the model's family narrows it.
        ("width", "120", "must be a multiple of 8 from 128 to 1536"),
        ("width", "904", "must be a multiple of 8 from 128 to 896 for model tiny (Stable Diffusion 1.5)"),
        ("width", "513", "must be a multiple of 8 from 128 to 1536"),
        ("height", "wide", "must be a multiple of 8 from 128 to 1536"),
        ("steps", "0", "must be an integer from 1 to 50"),
        ("steps", "51", "must be an integer from 1 to 50"),
        ("steps", "7.5", "must be an integer from 1 to 50"),
        ("scale", "0.5", "must be a number from 1 to 20"),
        ("scale", "21", "must be a number from 1 to 20"),
        ("scale", "high", "must be a number from 1 to 20"),
        ("num_images", "0", "must be an integer of at least 1"),
        ("num_images", "5", "must be an integer from 1 to 4"),
        ("seed", "-2", "must be an integer from -1 to 4294967295"),
        ("seed", "4294967296", "must be an integer from -1 to 4294967295"),
        ("use_default_neg", "maybe", 'must be "true" or "false"'),
        ("scheduler", "Heun", "must be one of " + ", ".join(SCHEDULERS)),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(
    recorded_api: Api, recorder: RecordingEngine, field: str, value: str, allowed: str
) -> None:
    before = recorded_api.balance()
    body = recorded_api.post("/api/inference", **REQUIRED, **{field: value})
    assert body["error_code"] == 1
    assert field in body["message"] and value in body["message"] and allowed in body["message"]
    assert recorder.jobs == []
    assert recorded_api.balance() == before


@pytest.mark.parametrize("missing", ["model_id", "prompt"])
def test_required_fields(recorded_api: Api, missing: str) -> None:
    fields = {k: v for k, v in REQUIRED.items() if k != missing}
    body = recorded_api.post("/api/inference", **fields)
    assert body == {"error_code": 1, "message": f"{missing} is required", "field": missing}


def test_unknown_model_and_version(recorded_api: Api) -> None:
    body = recorded_api.post("/api/inference", model_id="nope123", prompt="p")
    assert body["error_code"] == 1 and "nope123" in body["message"] and "not found" in body["message"]
    body = recorded_api.post("/api/inference", **REQUIRED, version="9")
    assert body["error_code"] == 1 and "'9'" in body["message"] and "known versions: 1" in body["message"]


def test_unknown_fields_are_ignored(recorded_api: Api) -> None:
    assert recorded_api.post("/api/inference", **REQUIRED, num_images=1, future_option="x")["error_code"] == 0


def test_access_token_is_checked_before_anything_else(recorded_api: Api, recorder: RecordingEngine) -> None:
    client = recorded_api.client
    for data in ({**REQUIRED}, {**REQUIRED, "access_token": "wrong"}, {"access_token": "wrong", "width": "1"}):
        body = client.post("/api/inference", data=data).json()
        assert body["error_code"] == 1 and "access_token" in body["message"]
    assert recorder.jobs == []


def test_bearer_header_is_accepted_too(recorded_api: Api) -> None:
    headers = {"Authorization": f"Bearer {recorded_api.token}"}
    body = recorded_api.client.post("/api/inference", data={**REQUIRED, "num_images": 1}, headers=headers).json()
    assert body["error_code"] == 0


def test_three_body_encodings_reach_the_engine_the_same(recorded_api: Api, recorder: RecordingEngine) -> None:
    fields = {"access_token": recorded_api.token, **REQUIRED, "width": "256", "seed": "9", "num_images": "1"}
    client = recorded_api.client
    answers = [
        client.post("/api/inference", data=fields).json(),
        # multipart/form-data, as browsers' FormData sends it
        client.post("/api/inference", files={k: (None, v) for k, v in fields.items()}).json(),
        client.post(
            "/api/inference",
            content=json.dumps({**fields, "width": 256, "seed": 9}),
            headers={"content-type": "application/json"},
        ).json(),
    ]
    assert [a["error_code"] for a in answers] == [0, 0, 0]
    assert recorder.jobs[0] == recorder.jobs[1] == recorder.jobs[2]


def test_malformed_bodies_get_envelopes(recorded_api: Api) -> None:
    client = recorded_api.client
    for content, ctype in (("{not json", "application/json"), ("[1, 2]", "application/json"), ("x", "text/csv")):
        body = client.post("/api/inference", content=content, headers={"content-type": ctype}).json()
        assert body["error_code"] == 1 and body["message"]


def test_schema_defaults_match_the_contract() -> None:
    request = parse(InferenceRequest, {"access_token": "t", **REQUIRED})
    assert request.model_dump(exclude={"access_token", "model_id", "prompt"}) == {
        "version": None,
        "width": 512,
        "height": 768,
        "negative_prompt": "",
        "use_default_neg": True,
        "steps": 30,
        "scale": None,
        "num_images": 4,
        "seed": -1,
        "scheduler": None,
        "karras": None,
        "clip_skip": None,
        "lora": None,
        "lora_scale": "0.75",
        "lcm": False,
        "image_strength": 0.75,
        "controlnet": None,
        "controlnet_preprocess": True,
    }


def test_empty_fields_and_json_nulls_mean_not_given(recorded_api: Api, recorder: RecordingEngine) -> None:
    recorded_api.post("/api/inference", **REQUIRED, width="", seed="", scheduler="")
    client = recorded_api.client
    payload = {"access_token": recorded_api.token, **REQUIRED, "height": None, "scale": None}
    assert client.post("/api/inference", json=payload).json()["error_code"] == 0
    first, second = recorder.jobs
    assert (first.width, first.scheduler, second.height, second.guidance_scale) == (512, "DPMSolverMultistep", 768, 7.5)
