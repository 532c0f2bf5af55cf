"""The playground at /: every asset it loads is served from the package and names no other host;
its controls take their ranges from the OpenAPI document; and, in headless Chromium against a live
demo server (tests/browser/playground.py), a person can sign in, generate and watch the progress,
cancel, use img2img and ControlNet, upscale, animate, make a video, read the history, and see the
server's errors next to their fields, in light and dark, on a desktop and a phone, with no serious
accessibility violation found by axe-core."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from daguerre.api.routes.playground import ASSETS, PAGE
from daguerre.app import create_app
from daguerre.settings import Settings
from tests.support.browser import BrowserRun, run_scenarios, unavailable

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# Files of the folder that the page does not load: licences and notes.
NOT_LOADED = {"README.md", "LICENSE"}
# The one "URL" an asset may hold: SVG's namespace name, an identifier that is never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"
VENDORED = ASSETS / "vendor"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("playground"), max_num_images=3))


def references(path: str, text: str) -> list[str]:
    """What a file loads: src/href in HTML, url() in CSS, import ... from in JS modules."""
    if path.endswith(".html"):
        # What the page loads; links (<a href>) are where a person may go, not what the page loads.
        found = re.findall(r"""<(?:link|script|img|video|source)\b[^>]*?\b(?:src|href)="([^"]*)\"""", text)
    elif path.endswith(".css"):
        found = re.findall(r"""url\(["']?([^"')]*)""", text)
    else:
        found = re.findall(r"""^\s*(?:import|export)\b[^;]*?\bfrom\s*["']([^"']+)["']""", text, flags=re.MULTILINE)
    return [url for url in found if not url.startswith(("data:", "#"))]


def crawl(client: TestClient, page: str = "/") -> dict[str, str]:
    """Every URL the page loads, transitively, with the body each answered."""
    html = client.get(page).text
    base = re.search(r'<base href="([^"]*)">', html)
    assert base, "the page has no <base>"
    seen: dict[str, str] = {}
    pending = [(base.group(1), url) for url in references("page.html", html)]
    while pending:
        parent, url = pending.pop()
        absolute = urljoin(parent, url)
        if absolute in seen:
            continue
        answer = client.get(absolute)
        assert answer.status_code == 200, (absolute, answer.status_code)
        suffix = Path(urlsplit(absolute).path).suffix
        assert answer.headers["content-type"].split(";")[0] == CONTENT_TYPES[suffix], absolute
        assert answer.content, absolute
        seen[absolute] = answer.text
        pending.extend((absolute, child) for child in references(absolute, answer.text))
    return seen


def test_every_asset_the_page_loads_is_served_and_every_file_is_loaded(app: FastAPI) -> None:
    client = TestClient(app)
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loaded = crawl(client)
    files = {
        f"/static/playground/{path.relative_to(ASSETS)}"
        for path in ASSETS.rglob("*")
        if path.is_file() and path.name not in NOT_LOADED
    }
    assert set(loaded) == files


def test_no_asset_names_another_host() -> None:
    for path in [PAGE, *ASSETS.rglob("*")]:
        if not path.is_file() or path.name in NOT_LOADED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            urls = [url for url in re.findall(r"\b[a-z][a-z0-9+.-]*://[^\s\"'`)]*", line) if url != SVG_NAMESPACE]
            # The vendored library's doc comments cite the specification it follows; comments are not loaded.
            in_comment = path.is_relative_to(VENDORED) and re.match(r"\s*\*", line)
            assert not urls or in_comment, f"{path.relative_to(PAGE.parent)}:{number}: {urls}"


def test_page_policy_allows_code_only_from_this_server(app: FastAPI) -> None:
    answer = TestClient(app).get("/")
    directives = dict(part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";"))
    assert directives["default-src"] == "'self'"
    for directive in ("script-src", "style-src", "connect-src"):
        assert directives[directive] == "'self'", directive
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert answer.headers["referrer-policy"] == "no-referrer"


def test_page_follows_a_proxy_prefix(app: FastAPI) -> None:
    client = TestClient(app, root_path="/daguerre")
    assert '<base href="/daguerre/">' in client.get("/").text
    assert all(url.startswith("/daguerre/static/playground/") for url in crawl(client))


def test_playground_stays_out_of_the_openapi_document(app: FastAPI) -> None:
    paths = TestClient(app).get("/openapi.json").json()["paths"]
    assert "/" not in paths and not [path for path in paths if path.startswith("/static")]


def schema_fields(app: FastAPI) -> dict[str, dict[str, Any]]:
    document = TestClient(app).get("/openapi.json").json()
    return {
        path: document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        for path in ("/api/inference", "/api/video", "/api/upscale")
    }


def test_every_control_is_a_field_of_its_endpoints_schema(app: FastAPI) -> None:
    properties = schema_fields(app)
    html = PAGE.read_text()
    forms = re.findall(r'<form id="([\w-]+)"[^>]*data-schema="([^"]+)"(.*?)</form>', html, flags=re.DOTALL)
    assert {form for form, _, _ in forms} == {"image-form", "video-form", "upscale-form", "animate-form"}
    for form, path, body in forms:
        fields = re.findall(r'data-field="(\w+)"', body)
        assert fields, form
        assert [field for field in fields if field not in properties[path]] == [], form


def test_the_document_carries_the_ranges_that_are_settings(app: FastAPI) -> None:
    inference = schema_fields(app)["/api/inference"]
    assert inference["num_images"]["maximum"] == 3  # the app's max_num_images setting
    assert (inference["lora_scale"]["x-minimum"], inference["lora_scale"]["x-maximum"]) == (-2, 2)
    # Another app with the default setting has its own document.
    other = create_app(Settings(data_dir=app.state.settings.data_dir / "other"))
    assert schema_fields(other)["/api/inference"]["num_images"]["maximum"] == 4


def test_the_page_writes_no_contract_value_itself() -> None:
    """Ranges, defaults and choices come from the OpenAPI document; the page's code repeats none."""
    code = "\n".join(path.read_text() for path in (ASSETS / "js").glob("*.js"))
    for value in ("896", "4294967295", "0.75", "DPMSolverMultistep", "K_EULER", '"480p"', '"720p"'):
        assert value not in code, value


# --- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> BrowserRun:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return run_scenarios("tests.browser.playground", tmp_path_factory.mktemp("playground-screenshots"), timeout_s=420)


def clean(browser: BrowserRun, name: str) -> dict[str, Any]:
    """A scenario's observations, once it passed with nothing blocked and no error in the page."""
    result = browser[name]
    observed = result.passed()
    assert result.blocked == [], result.blocked
    assert result.page_errors == [] and result.console_errors == [], (result.page_errors, result.console_errors)
    for path in result.screenshots:
        assert Path(path).read_bytes().startswith(b"\x89PNG"), path
    return observed


@pytest.mark.slow
@pytest.mark.browser
def test_generate_shows_live_progress_then_the_images_with_their_seeds(browser: BrowserRun) -> None:
    seen = clean(browser, "generate")
    controls = seen["controls"]
    assert controls["width"] == {"min": "128", "max": "896", "step": "8", "value": "512", "type": "number"}
    assert controls["height"]["value"] == "768" and controls["steps"] == {
        "min": "1",
        "max": "50",
        "step": "1",
        "value": "30",
        "type": "number",
    }
    assert controls["num_images"]["max"] == "4" and controls["num_images"]["value"] == "4"
    assert (controls["seed"]["min"], controls["seed"]["max"], controls["seed"]["value"]) == ("-1", "4294967295", "-1")
    assert controls["image_strength"]["value"] == "0.75" and controls["lora_scale"]["value"] == "0.75"
    assert controls["schedulers"] == ["", "DPMSolverMultistep", "K_EULER_ANCESTRAL", "DDIM", "K_EULER", "PNDM", "KLMS"]
    assert controls["controlnets"] == ["", "canny", "depth", "openpose"]
    (xl_max, xl_width), xl_presets = seen["xl_sizes"]
    assert (xl_max, xl_width) == ("1536", "1024") and "1024 × 1024 (default)" in xl_presets
    assert seen["sd15_sizes"] == ["896", "512"]
    assert controls["models"] == ["demo", "demo-xl"] and controls["loras"] == ["", "demo-lora", "demo-lcm-lora"]
    assert controls["presets"][0] == "128 × 128 (smallest, fastest)" and "512 × 768 (default)" in controls["presets"]

    assert seen["state"] == "done" and seen["states"][-1] == "done"
    progress = seen["progress"]
    assert [value for value in progress if 0 < value < 1], progress  # seen part-way, not only at the end
    assert progress == sorted(progress) and progress[-1] == 1
    assert seen["status"]["seeds"] == [42, 43] and seen["captions"] == ["Seed 42", "Seed 43"]
    assert seen["sizes"] == [[128, 128], [128, 128]]
    assert [name for _, name in seen["downloads"]] == ["daguerre-42.png", "daguerre-43.png"]
    assert [urlsplit(url).path for url, _ in seen["downloads"]] == [urlsplit(u).path for u in seen["status"]["images"]]
    assert seen["reused_seed"] == "43"
    before, after = seen["balance"]
    assert round(before - after, 2) == seen["status"]["credit_cost"] > 0
    assert seen["history_first"] == seen["inf_id"]

    # The token is in localStorage and in Authorization headers, never in a URL or a body.
    token = seen["token"]
    assert seen["stored_token"] == token
    assert not [r["url"] for r in seen["requests"] if token in r["url"] or token in r["body"]]
    api_calls = [r for r in seen["requests"] if "/api/" in r["url"]]
    assert api_calls and all(r["authorization"] == f"Bearer {token}" for r in api_calls)
    assert any(r["url"].endswith(f"/api/jobs/{seen['inf_id']}/events") for r in api_calls)


@pytest.mark.slow
@pytest.mark.browser
def test_cancel_a_queued_and_a_running_job_gives_the_credits_back(browser: BrowserRun) -> None:
    seen = clean(browser, "cancel")
    assert seen["queued_text"] == "Queued: 1 job ahead"
    assert seen["queued_end"] == "cancelled" and seen["long_end"] == "cancelled"
    assert seen["long_status"] == "Cancelled: cancelled by the client; the credits were refunded"
    assert 0 < seen["long_progress"] < 1
    assert seen["cancel_buttons_left"] == 0
    assert seen["balance"][0] == seen["balance"][1]


@pytest.mark.slow
@pytest.mark.browser
def test_img2img_takes_a_dropped_image(browser: BrowserRun) -> None:
    seen = clean(browser, "img2img")
    assert seen["preview"] == [[160, 128]] and seen["drop_text"].startswith("harbour.png")
    assert seen["state"] == "done" and seen["title"].startswith("Images: demo (img2img)")
    assert seen["sizes"] == [[128, 128]]
    assert seen["multipart"] == [[True, True]]  # the file, and the strength set on the slider


@pytest.mark.slow
@pytest.mark.browser
def test_controlnet_shows_its_control_map(browser: BrowserRun) -> None:
    seen = clean(browser, "controlnet")
    assert seen["state"] == "done" and seen["image_count"] == 1
    assert seen["caption"] == "Control map (canny)"
    assert urlsplit(seen["map_src"]).path == urlsplit(seen["control_image"]).path
    assert seen["map_size"] == [[128, 128]]


@pytest.mark.slow
@pytest.mark.browser
def test_errors_are_shown_next_to_the_field_they_name(browser: BrowserRun) -> None:
    seen = clean(browser, "errors")
    assert seen["missing_image"] == {"text": "init_image_file is required", "described": True, "focused": True}
    assert seen["frames"]["text"].startswith("invalid num_frames 6: model demo-t2v (Wan) takes 4k+1 frames")
    assert seen["frames"]["described"] and seen["frames"]["focused"]
    assert seen["token"] == {"text": "invalid access_token", "described": True, "focused": True}
    assert seen["stored"] is None
    assert seen["jobs_started"] == 0 and seen["balance"][0] == seen["balance"][1]


@pytest.mark.slow
@pytest.mark.browser
def test_upscale_any_result_with_esrgan_or_hires_fix(browser: BrowserRun) -> None:
    seen = clean(browser, "upscale")
    esrgan, hires = seen["esrgan"], seen["hires_fix"]
    assert (esrgan["scale_visible"], esrgan["strength_visible"]) == (True, False)
    assert (hires["scale_visible"], hires["strength_visible"]) == (False, True)
    assert esrgan["state"] == hires["state"] == "done"
    assert not esrgan["dialog_open"] and not hires["dialog_open"]
    assert esrgan["sizes"] == [[320, 320]] and esrgan["title"] == "Upscale: ESRGAN ×2.5"
    assert hires["sizes"] == [[256, 256]] and hires["title"] == "Upscale: hires fix"
    assert esrgan["progress"][-1] == 1 and hires["progress"][-1] == 1


@pytest.mark.slow
@pytest.mark.browser
def test_animate_a_result_into_a_video_that_plays(browser: BrowserRun) -> None:
    seen = clean(browser, "animate")
    assert seen["models"] == ["demo-i2v"] and seen["state"] == "done"
    video = seen["video"]
    assert video["error"] is None and video["controls"]
    assert (video["width"], video["height"]) == (208, 128) and video["duration"] > 0
    assert seen["caption"].startswith("208 × 128, 5 frames, 16 fps")


@pytest.mark.slow
@pytest.mark.browser
def test_text_to_video_plays_in_the_page(browser: BrowserRun) -> None:
    seen = clean(browser, "text_to_video")
    assert seen["models"] == ["demo-t2v", "demo"]  # Wan, and the image model through AnimateDiff
    assert seen["state"] == "done" and seen["video"]["error"] is None
    assert seen["video"]["width"] > 0 and seen["video"]["duration"] > 0
    assert seen["download"].endswith(".mp4")


@pytest.mark.slow
@pytest.mark.browser
def test_history_pages_through_the_tokens_jobs(browser: BrowserRun) -> None:
    seen = clean(browser, "history")
    assert seen["first_page"] == seen["expected"][:8]
    assert seen["both_pages"] == seen["expected"]
    assert seen["thumbnails"] == [[128, 128]]
    assert seen["summary"].startswith("image · done · ")


@pytest.mark.slow
@pytest.mark.browser
def test_light_and_dark_desktop_and_phone_with_no_serious_accessibility_violation(browser: BrowserRun) -> None:
    seen = clean(browser, "looks")
    dark_background, pressed = seen["themes"]["system_dark"]
    assert dark_background == "rgb(17, 19, 23)" and pressed == "true"
    assert seen["themes"]["toggled_light"] == ["rgb(246, 247, 249)", "light"]
    assert seen["overflow"] == {"light-desktop": 0, "light-phone": 0, "dark-desktop": 0, "dark-phone": 0}
    for view, axe in seen["axe"].items():
        assert "color-contrast" in axe["passes"] or view == "dialog", (view, axe["passes"])
        serious = [v for v in axe["violations"] if v["impact"] in ("serious", "critical")]
        assert serious == [], (view, serious)
    shots = {Path(path).stem for path in browser["looks"].screenshots}
    assert {"looks-light-desktop", "looks-light-phone", "looks-dark-desktop", "looks-dark-phone"} <= shots
