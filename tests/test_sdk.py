"""The Python SDK (clients/python) against a live `daguerre serve --demo` process over real HTTP,
and against a loopback stand-in for the hosted SinkIn API, which has only the contract's endpoints.

The server takes one job at a time (max_queue 1), so that "server busy" can be caused on purpose;
every other test rides through it on the client's default retries.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image as PILImage

from daguerre_client import (
    NO_RETRY,
    AsyncDaguerre,
    Cancelled,
    Daguerre,
    DaguerreError,
    Finished,
    InsufficientCredits,
    InvalidParameter,
    JobCancelled,
    NotFound,
    NotSupportedByServer,
    Progress,
    Queued,
    RetryPolicy,
    ServerBusy,
    Started,
    Unauthorized,
)
from daguerre_client._core import body_of
from tests.support.images import decode, photo, png
from tests.support.server import wait_until_healthy
from tests.support.servers import free_port

pytestmark = pytest.mark.slow

SMALL: dict[str, Any] = {"width": 128, "height": 128, "steps": 4, "num_images": 1}


@dataclass
class Live:
    url: str
    token: str
    poor_token: str  # 0.01 credits


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("sdk")
    port = free_port()
    command = [sys.executable, "-m", "daguerre", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DAGUERRE_MAX_QUEUE": "1"}
    log = data_dir.parent / "sdk-serve.log"
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, url, log, 180)
        created = subprocess.run(
            [sys.executable, "-m", "daguerre", "tokens", "create", "--credits", "0.01", "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        yield Live(url, (data_dir / "demo-token").read_text().strip(), created.stdout.splitlines()[-1])
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def client(live: Live) -> Iterator[Daguerre]:
    with Daguerre(live.url, live.token) as daguerre:
        yield daguerre


def size_of(data: bytes) -> tuple[int, int]:
    return PILImage.open(io.BytesIO(data)).size


def test_generate_gives_typed_images_with_their_seeds_that_download(client: Daguerre, tmp_path: Path) -> None:
    before = client.balance().credits
    result = client.generate("demo", "a (lighthouse:1.2) at dusk", seed=42, **{**SMALL, "num_images": 2})
    assert result.seeds == [42, 43] and [image.seed for image in result.images] == [42, 43]
    assert all(image.inf_id == result.inf_id and image.url.endswith(".png") for image in result.images)
    assert result.credit_cost > 0
    assert client.balance().credits == pytest.approx(before - result.credit_cost)
    paths = result.download_all(tmp_path)
    assert [size_of(path.read_bytes()) for path in paths] == [(128, 128), (128, 128)]
    # The same seed alone reproduces the image (README "Seeds": within one intensity level).
    again = client.generate("demo", "a (lighthouse:1.2) at dusk", seed=43, **SMALL)
    difference = decode(again.images[0].download()).astype(int) - decode(paths[1].read_bytes()).astype(int)
    assert abs(difference).max() <= 1


def test_img2img_uploads_bytes_paths_and_results(client: Daguerre, tmp_path: Path) -> None:
    picture = png(photo(128, 128))
    # At strength 0 the prepared upload comes back unchanged: the bytes really went up.
    kept = client.img2img("demo", "a harbour", picture, image_strength=0, **SMALL)
    assert (decode(kept.images[0].download()) == decode(picture)).all()
    path = tmp_path / "photo.png"
    path.write_bytes(picture)
    from_path = client.img2img("demo", "a harbour", path, image_strength=0.6, seed=1, **SMALL)
    from_result = client.img2img("demo", "a watercolour harbour", from_path.images[0], image_strength=0.5, **SMALL)
    assert size_of(from_result.images[0].download()) == (128, 128)


def test_controlnet_answers_the_control_map(client: Daguerre) -> None:
    result = client.controlnet("demo", "a harbour", png(photo(128, 128)), "canny", **SMALL)
    assert result.control_image is not None
    edges = decode(result.control_image.download())
    assert edges.shape == (128, 128, 3) and set(edges.ravel().tolist()) <= {0, 255}  # Canny's map
    assert size_of(result.images[0].download()) == (128, 128)


def test_upscale_esrgan_and_hires_fix_from_a_result_image(client: Daguerre) -> None:
    image = client.generate("demo", "a lighthouse", **SMALL).images[0]
    esrgan = client.upscale(image, scale=2.5)
    assert (esrgan.width, esrgan.height) == (320, 320) == size_of(esrgan.output.download())
    again = client.upscale(esrgan.output)  # an upscale has its own inf_id and can be upscaled again
    assert (again.width, again.height) == (640, 640)
    hires = client.upscale(image.url, inf_id=image.inf_id, type="hires_fix", strength=0.5)
    assert (hires.width, hires.height) == (256, 256)


def test_text_and_image_to_video(client: Daguerre) -> None:
    clip = client.video("demo-t2v", "a red fox running through snow", num_frames=5, steps=2, seed=7)
    assert (clip.num_frames, clip.seed) == (5, 7) and clip.video_url.endswith(".mp4")
    assert clip.video.download()[4:8] == b"ftyp"  # an MP4
    image = client.generate("demo", "a beach at dawn", **SMALL).images[0]
    animated = client.video("demo-i2v", "the waves roll in", image_url=image, num_frames=5, steps=2)
    assert animated.num_frames == 5 and animated.credit_cost > 0


def test_models_lists_images_loras_and_video_models(client: Daguerre) -> None:
    catalog = client.models()
    assert [model.id for model in catalog.models] == ["demo", "demo-xl"]
    assert "demo-lora" in [lora.id for lora in catalog.loras]
    assert {"demo-t2v", "demo-i2v"} <= {model.id for model in catalog.video_models}
    assert catalog.models[0].versions and catalog.models[0].base_model == "sd15"


def test_async_job_streams_progress_then_its_result(client: Daguerre) -> None:
    job = client.generate("demo", "a lighthouse", wait=False, **{**SMALL, "steps": 6})
    events = list(job.events())
    assert isinstance(events[0], Queued) and any(isinstance(event, Started) for event in events)
    steps = [event.step for event in events if isinstance(event, Progress)]
    assert steps == list(range(1, 7))
    final = events[-1]
    assert isinstance(final, Finished) and final.job.status == "done" and final.job.images
    result = job.wait()
    assert result.inf_id == job.inf_id and result.images[0].url == final.job.images[0]
    assert client.job(job.inf_id).run_s is not None
    # A stream resumed after its last event id says nothing more; one from the start replays the end.
    assert list(client.stream(job.inf_id, last_event_id="end")) == []
    assert [type(event) for event in client.stream(job.inf_id)] == [Finished]


def test_cancel_a_running_job_refunds_it(client: Daguerre) -> None:
    before = client.balance().credits
    job = client.generate("demo", "a long one", wait=False, width=512, height=512, steps=50, num_images=1)
    for event in job.events():
        if isinstance(event, Progress):
            break  # it runs
    status = job.cancel()
    assert status.status == "cancelled" and status.credit_cost == 0
    with pytest.raises(JobCancelled, match="cancelled by the client"):
        job.wait()
    assert isinstance(list(job.events())[-1], Cancelled)
    assert client.balance().credits == pytest.approx(before)
    with pytest.raises(DaguerreError, match="already ended"):
        job.cancel()


def test_jobs_lists_the_tokens_jobs_newest_first_a_page_at_a_time(client: Daguerre) -> None:
    made = [client.generate("demo", f"job {i}", **SMALL).inf_id for i in range(2)]
    first = client.jobs(limit=1)
    assert [job.inf_id for job in first.jobs] == made[-1:] and first.next_before == made[-1]
    second = client.jobs(limit=1, before=first.next_before)
    assert [job.inf_id for job in second.jobs] == made[:1]
    assert second.jobs[0].status == "done" and second.jobs[0].kind == "image"


def test_errors_are_typed_with_the_servers_message_and_field(live: Live, client: Daguerre) -> None:
    with pytest.raises(InvalidParameter) as bad:
        client.generate("demo", "p", width=130)
    assert bad.value.field == "width" and "multiple of 8 from 128 to 1536" in bad.value.message
    with pytest.raises(InvalidParameter) as bad:
        client.video("demo-t2v", "p", resolution="1080p")  # type: ignore[arg-type]  # what the server refuses
    assert bad.value.field == "resolution"
    with pytest.raises(NotFound, match="not found"):
        client.generate("no-such-model", "p", **SMALL)
    with pytest.raises(NotFound):
        client.job("unknownjob")
    with Daguerre(live.url, "not-a-token") as stranger, pytest.raises(Unauthorized):
        stranger.models()


def test_insufficient_credits_charges_nothing(live: Live) -> None:
    with Daguerre(live.url, live.poor_token) as poor:
        with pytest.raises(InsufficientCredits, match="not enough credits") as refused:
            poor.generate("demo", "p", width=512, height=512, num_images=4)
        assert refused.value.status_code == 200  # the envelope, as the hosted API sends it
        assert poor.balance().credits == pytest.approx(0.01)


def test_a_busy_server_is_retried_with_backoff(live: Live, client: Daguerre, caplog: pytest.LogCaptureFixture) -> None:
    long_job = client.generate("demo", "a long one", wait=False, width=512, height=512, steps=50, num_images=1)
    balance = client.balance().credits
    with Daguerre(live.url, live.token, retry=NO_RETRY) as impatient, pytest.raises(ServerBusy, match="server busy"):
        impatient.generate("demo", "p", **SMALL)
    assert client.balance().credits == balance  # a busy refusal costs nothing
    threading.Timer(1.0, long_job.cancel).start()  # the queue frees up a second from now
    patient = RetryPolicy(attempts=20, initial_delay=0.1, multiplier=2, max_delay=1.0)
    with caplog.at_level(logging.INFO, "daguerre_client"), Daguerre(live.url, live.token, retry=patient) as retrying:
        result = retrying.generate("demo", "p", **SMALL)
    assert result.images
    retries = [record.getMessage() for record in caplog.records if "retry" in record.getMessage()]
    assert retries and all("server busy" in message for message in retries), caplog.text
    with pytest.raises(JobCancelled):
        long_job.wait()


def test_the_async_client(live: Live) -> None:
    async def main() -> None:
        async with AsyncDaguerre(live.url, live.token) as client:
            # Two at once on a one-job server: the second rides through "server busy" on retries.
            first, second = await asyncio.gather(
                client.generate("demo", "one", seed=1, **SMALL), client.generate("demo", "two", seed=2, **SMALL)
            )
            assert (first.seeds, second.seeds) == ([1], [2])
            assert size_of(await first.images[0].download_async()) == (128, 128)
            job = await client.generate("demo", "three", wait=False, **SMALL)
            names = [event.name async for event in job.events()]
            assert names[0] == "queued" and names[-1] == "finished" and names.count("progress") == 4
            assert (await job.wait()).inf_id == job.inf_id
            upscaled = await client.upscale(first.images[0])
            assert (upscaled.width, upscaled.height) == (256, 256)
            assert (await client.balance()).credits > 0
            with pytest.raises(InvalidParameter) as bad:
                await client.generate("demo", "p", steps=51)
            assert bad.value.field == "steps"

    asyncio.run(main())


# The hosted SinkIn API, as its contract describes it: /api/inference and the other contract
# endpoints, fields it does not know ignored (async=true included), and no route for daguerre's
# additions. It cannot be reached from the tests, so a loopback stand-in plays it.
class HostedStandIn(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/api/inference":
            body = {"error_code": 0, "images": ["https://cdn.example/1.png"], "credit_cost": 2.2, "inf_id": "abc123"}
            self._answer(200, "application/json", json.dumps(body).encode())
        else:
            self._answer(404, "text/html", b"<h1>Not Found</h1>")

    def do_GET(self) -> None:
        self._answer(404, "text/html", b"<h1>Not Found</h1>")

    def _answer(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def hosted() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), HostedStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_against_the_hosted_api_the_contract_works_and_additions_say_so(hosted: str) -> None:
    with Daguerre(hosted, "token") as client:
        result = client.generate("4zdwGOB", "an orc")
        assert result.inf_id == "abc123" and result.credit_cost == 2.2
        assert result.images[0].url == "https://cdn.example/1.png" and result.images[0].seed is None
        # Without jobs the server answers async=true with the result: the handle already has it.
        job = client.generate("4zdwGOB", "an orc", wait=False)
        assert job.wait().inf_id == "abc123"
        for addition in (client.balance, lambda: client.jobs(), lambda: list(job.events()), job.cancel):
            with pytest.raises(NotSupportedByServer, match="not support /api/"):
                addition()


def test_an_unknown_route_is_told_from_an_unknown_inference_in_either_status_mode() -> None:
    def answer(status: int, body: object) -> httpx.Response:
        return httpx.Response(status, json=body)

    # daguerre's unknown path (any mode), and an unknown inf_id with DAGUERRE_HTTP_ERROR_STATUS=true
    with pytest.raises(NotSupportedByServer):
        body_of(answer(404, {"error_code": 1, "message": "Not Found"}), "/api/jobs/x")
    with pytest.raises(NotFound):
        body_of(answer(404, {"error_code": 1, "message": "inference 'x' not found"}), "/api/jobs/x")
    with pytest.raises(NotSupportedByServer):
        body_of(httpx.Response(405, text="Method Not Allowed"), "/api/balance")
    # A message this client does not know is still typed by the status when the server sends one.
    with pytest.raises(InvalidParameter) as bad:
        body_of(answer(422, {"error_code": 1, "message": "the value is wrong"}), "/api/inference")
    assert bad.value.field is None and bad.value.status_code == 422
    # daguerre's envelope names the field itself: typed and named by it whatever the message says.
    with pytest.raises(InvalidParameter) as named:
        body_of(answer(200, {"error_code": 1, "message": "the value is wrong", "field": "width"}), "/api/inference")
    assert named.value.field == "width"
    with pytest.raises(ServerBusy):
        body_of(httpx.Response(503, text="<html>overloaded</html>"), "/api/inference")
