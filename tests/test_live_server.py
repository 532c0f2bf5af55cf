"""The real server process, over real HTTP: `daguerre serve --demo`, and every README example."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from daguerre.services.accounts import new_webhook_secret
from tests.support.images import photo, png
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@dataclass
class DemoServer:
    url: str
    token: str
    stdout: Path
    stderr: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    data_dir = tmp_path_factory.mktemp("live")
    port = free_port()
    command = [sys.executable, "-m", "daguerre", "serve", "--demo", "--port", str(port), "--data-dir", str(data_dir)]
    env = dict(os.environ)
    stdout, stderr = data_dir.parent / "serve.out", data_dir.parent / "serve.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, stdout.read_text() + stderr.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail("the server did not start")
        yield DemoServer(url, (data_dir / "demo-token").read_text().strip(), stdout, stderr)
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(live: DemoServer) -> tuple[str, str]:
    return live.url, live.token


# What quiet.py filters, as the libraries word it; none may reach a newcomer's terminal.
THIRD_PARTY_NOISE = (
    "torch.jit.script` is deprecated",
    "The module 'mediapipe' is not installed",
    "Importing from timm.models",
    "in registry with controlnet_aux",
    "it/s]",  # a tqdm progress bar
)


def test_serve_demo_prints_the_url_and_the_token_and_no_third_party_noise(live: DemoServer) -> None:
    # The openpose preprocessing imports controlnet_aux, the source of most of the noise.
    controlnet = httpx.post(
        f"{live.url}/api/inference",
        data={
            "access_token": live.token,
            "model_id": "demo",
            "prompt": "p",
            "width": 128,
            "height": 128,
            "steps": 2,
            "num_images": 1,
            "controlnet": "openpose",
        },
        files={"init_image_file": ("p.png", png(photo()), "image/png")},
        timeout=120,
    ).json()
    assert controlnet["error_code"] == 0, controlnet
    lines = live.stdout.read_text().splitlines()
    ours = [line for line in lines if not line.startswith("INFO:")]  # uvicorn's access lines follow ours
    assert any(line.startswith(f"daguerre on {live.url}") for line in ours), lines
    # The last two lines are what a newcomer needs: where the playground is, and the token to paste.
    assert ours[-2].startswith(f"open {live.url}/ in a browser (the playground)") and ours[-1] == live.token, lines
    assert "<title>daguerre playground</title>" in httpx.get(f"{live.url}/").text
    printed = live.stdout.read_text() + live.stderr.read_text()
    assert not [noise for noise in THIRD_PARTY_NOISE if noise in printed], printed


# The README's code blocks by language: python and bash (those with curl) run below; javascript
# runs in a browser (tests/test_readme_eventsource.py); the rest are not programs to run.
RUN_HERE = {"python", "bash"}
RUN_ELSEWHERE = {"javascript"}
NOT_RUN = {"", "yaml"}


def readme_blocks(language: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_every_readme_block_language_is_run_or_named() -> None:
    text = (ROOT / "README.md").read_text()
    languages = set(re.findall(r"^```(\w*)\n(?:.*?)^```$", text, flags=re.DOTALL | re.MULTILINE))
    assert languages <= RUN_HERE | RUN_ELSEWHERE | NOT_RUN, languages - (RUN_HERE | RUN_ELSEWHERE | NOT_RUN)
    assert languages >= RUN_HERE | RUN_ELSEWHERE


def test_serve_prints_the_url_and_a_working_demo_token(server: tuple[str, str]) -> None:
    url, token = server
    models = httpx.post(f"{url}/api/models", data={"access_token": token}).json()
    assert models["error_code"] == 0
    assert [m["id"] for m in models["models"]] == ["demo", "demo-xl"]
    sizes = {m["id"]: m["sizes"] for m in models["models"]}
    assert sizes["demo"] == {"min": 128, "max": 896, "multiple_of": 8, "default": [512, 768]}
    assert sizes["demo-xl"] == {"min": 128, "max": 1536, "multiple_of": 8, "default": [1024, 1024]}
    answer = httpx.post(
        f"{url}/api/inference",
        data={
            "access_token": token,
            "model_id": "demo",
            "prompt": "p",
            "width": 128,
            "height": 128,
            "steps": 2,
            "num_images": 1,
        },
        timeout=120,
    ).json()
    assert answer["error_code"] == 0, answer
    image = httpx.get(answer["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_health_answers_while_a_generation_runs(server: tuple[str, str]) -> None:
    url, token = server
    done = threading.Event()

    def generate() -> None:
        httpx.post(
            f"{url}/api/inference",
            data={
                "access_token": token,
                "model_id": "demo",
                "prompt": "p",
                "num_images": 1,  # otherwise the contract's defaults: 512x768, 30 steps
            },
            timeout=300,
        )
        done.set()

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/health").json()["queued"] == 0:
            assert time.monotonic() < deadline and not done.is_set(), "the generation never showed as queued"
            time.sleep(0.05)
        started = time.monotonic()
        assert httpx.post(f"{url}/api/models", data={"access_token": token}).json()["error_code"] == 0
        assert time.monotonic() - started < 2
        assert not done.is_set(), "the generation ended before the check; make it longer"
    finally:
        worker.join()


def test_readme_python_examples_run(server: tuple[str, str], tmp_path: Path) -> None:
    url, token = server
    blocks = readme_blocks("python")
    assert blocks
    # The webhook recipe reads the token's secret; any well-formed one will do for it to run.
    secret = new_webhook_secret()
    env = {**os.environ, "DAGUERRE_URL": url, "DAGUERRE_TOKEN": token, "DAGUERRE_WEBHOOK_SECRET": secret}
    # The "Python SDK" examples import daguerre_client from its source tree, as the tests do.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "clients/python/src"), env.get("PYTHONPATH")]))
    for code in blocks:
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{code}\n{result.stderr}"
        assert "error_code" not in result.stdout or '"error_code": 1' not in result.stdout


def test_readme_curl_examples_run(server: tuple[str, str], tmp_path: Path) -> None:
    url, token = server
    examples = [b for b in readme_blocks("bash") if "curl " in b]
    assert len(examples) >= 4  # inference, models, upscale, video
    env = {**os.environ, "DAGUERRE_URL": url, "DAGUERRE_TOKEN": token}
    for example in examples:
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", example],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0 and '"error_code":0' in result.stdout, (
            f"{example}\n{result.stdout}{result.stderr}"
        )
