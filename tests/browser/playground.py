"""Browser scenarios for the playground at /; tests/test_playground.py asserts on what they observe.

Each scenario signs in as a person would (pastes the token, presses the button) and works the page
through its controls. The page's own state is read only from the DOM; a small observer, added
before the page loads, records each change of a progress bar and of a job card's state, since a
fast job can pass through them between two polls.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.support.browser import Session
from tests.support.images import photo, png

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Request

# ControlNets, upscalers and video models: everything `serve --demo` installs.
FULL_DEMO = True
WAIT_MS = 90_000
AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

RECORDER = """
window.recorded = { progress: [], states: [] };
new MutationObserver((changes) => {
  for (const change of changes) {
    const target = change.target;
    if (target.tagName === "PROGRESS" && change.attributeName === "value") {
      window.recorded.progress.push([target.closest(".job")?.dataset.infId, target.value]);
    } else if (target.classList?.contains("job") && change.attributeName === "data-state") {
      window.recorded.states.push([target.dataset.infId, target.dataset.state]);
    }
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["value", "data-state"] });
"""


def open_page(session: Session, viewport: dict[str, int] | None = None) -> Page:
    page = session.new_page()
    page.add_init_script(RECORDER)
    if viewport:
        page.set_viewport_size(viewport)  # type: ignore[arg-type]  # a ViewportSize TypedDict
    return page


def sign_in(session: Session, viewport: dict[str, int] | None = None) -> Page:
    page = open_page(session, viewport)
    page.goto(f"{session.url}/")
    page.get_by_label("Access token").fill(session.server.token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("body[data-ready=true]").wait_for(state="attached")
    return page


def api(session: Session) -> httpx.Client:
    return httpx.Client(
        base_url=session.server.url, headers={"Authorization": f"Bearer {session.server.token}"}, timeout=60
    )


def smallest_size(page: Page) -> None:
    page.locator("#size-presets button").first.click()


def set_range(control: Locator, value: float) -> None:
    control.evaluate(
        "(input, value) => { input.value = value; input.dispatchEvent(new Event('input', {bubbles: true})); }", value
    )


def image_job(page: Page, prompt: str, steps: int = 4, images: int = 1) -> Locator:
    """Fills the image form for a quick job, submits it, and returns the new job's card."""
    before = page.locator(".job").count()
    page.locator("#img-prompt").fill(prompt)
    smallest_size(page)
    page.locator("#img-steps").fill(str(steps))
    page.locator("#img-num").fill(str(images))
    page.get_by_role("button", name="Generate").click()
    return newest_job(page, before)


def newest_job(page: Page, before: int) -> Locator:
    page.wait_for_function("(n) => document.querySelectorAll('.job').length > n", arg=before, timeout=WAIT_MS)
    # Newest first: pinned by its id, as later jobs go above it.
    return page.locator(f".job[data-inf-id='{page.locator('.job').first.get_attribute('data-inf-id')}']")


def wait_ended(job: Locator) -> str:
    job.locator("xpath=self::*[@data-state='done' or @data-state='failed' or @data-state='cancelled']").wait_for(
        timeout=WAIT_MS
    )
    return str(job.get_attribute("data-state"))


def image_sizes(locator: Locator) -> list[list[int]]:
    """The decoded size of each image: 0 x 0 when it failed to load."""
    locator.first.wait_for()
    return locator.evaluate_all(
        "images => Promise.all(images.map("
        "  (i) => i.decode().catch(() => null).then(() => [i.naturalWidth, i.naturalHeight])))"
    )


def balance(page: Page) -> float:
    page.wait_for_function("() => document.getElementById('balance').value !== ''")
    return float(page.locator("#balance").inner_text())


def watch_requests(page: Page) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        seen.append(
            {
                "url": request.url,
                "method": request.method,
                "authorization": request.headers.get("authorization", ""),
                "body": (request.post_data_buffer or b"")[:4000].decode("latin-1"),
            }
        )

    page.on("request", record)
    return seen


def drop_file(page: Page, selector: str, name: str, data: bytes) -> None:
    """Drops a file on an element as a person dragging it from their desktop would."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            return transfer;
        }""",
        [name, base64.b64encode(data).decode()],
    )
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def run_axe(page: Page) -> dict[str, Any]:
    """axe-core's findings on the page as it stands (WCAG 2.x A and AA rules and its best practices):
    the violations, and how many rules passed (so a run that checked nothing shows)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    return page.evaluate(
        """async () => {
            const rules = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"];
            const result = await axe.run(document, { runOnly: rules });
            const violations = result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                nodes: v.nodes.slice(0, 5).map((n) => n.target.join(" ")) }));
            return { violations, passes: result.passes.map((rule) => rule.id) };
        }"""
    )


def field_error(page: Page, form: str, field: str) -> dict[str, Any]:
    note = page.locator(f"#{form} [data-field='{field}'] .field-error")
    note.wait_for(timeout=WAIT_MS)
    return page.evaluate(
        """([form, field]) => {
            const note = document.querySelector(`#${form} [data-field='${field}'] .field-error`);
            const invalid = document.querySelector(`#${form} [data-field='${field}'] [aria-invalid=true]`);
            const described = (invalid?.getAttribute("aria-describedby") ?? "").split(" ");
            return { text: note.textContent, described: described.includes(note.id),
                     focused: document.activeElement === invalid };
        }""",
        [form, field],
    )


# --- scenarios ---------------------------------------------------------------------------------


def scenario_generate(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    requests = watch_requests(page)
    controls = page.evaluate(
        """() => {
            const form = document.getElementById("image-form");
            const read = (name) => { const c = form.elements.namedItem(name);
                return { min: c.min, max: c.max, step: c.step, value: c.value, type: c.type }; };
            return { width: read("width"), height: read("height"), steps: read("steps"), num_images: read("num_images"),
                     seed: read("seed"), image_strength: read("image_strength"), lora_scale: read("lora_scale"),
                     schedulers: [...form.elements.namedItem("scheduler").options].map((o) => o.value),
                     controlnets: [...form.elements.namedItem("controlnet").options].map((o) => o.value),
                     models: [...form.querySelectorAll("input[name=model_id]")].map((r) => r.value),
                     loras: [...form.elements.namedItem("lora").options].map((o) => o.value),
                     presets: [...document.querySelectorAll("#size-presets button")].map((b) => b.textContent) };
        }"""
    )
    # An SDXL model: its own size range and default (from /api/models), then back to SD 1.5's.
    page.locator("input[name=model_id][value='demo-xl']").check()
    read_size = "() => { const w = document.getElementById('img-width'); return [w.max, w.value]; }"
    xl_sizes = [page.evaluate(read_size), page.locator("#size-presets button").all_inner_texts()]
    page.locator("input[name=model_id][value='demo']").check()
    sd15_sizes = page.evaluate(read_size)
    credits_before = balance(page)
    page.locator("#img-seed").fill("42")
    job = image_job(page, "a (lighthouse:1.2) at dusk", steps=8, images=2)
    state = wait_ended(job)
    page.wait_for_function("(c) => Number(document.getElementById('balance').value) < c", arg=credits_before)
    figures = job.locator("figure")
    captions = figures.locator("figcaption").all_inner_texts()
    sizes = image_sizes(figures.locator("img"))
    downloads = figures.locator("a[download]").evaluate_all("links => links.map((a) => [a.href, a.download])")
    # Reuse the second image's seed: it lands in the form.
    figures.nth(1).get_by_role("button", name="Reuse seed").click()
    reused = page.locator("#img-seed").input_value()
    page.locator("#history-list li[data-inf-id]").first.wait_for()
    inf_id = job.get_attribute("data-inf-id")
    with api(session) as client:
        status = client.get(f"/api/jobs/{inf_id}").json()
    session.screenshot(page, "done")
    return {
        "controls": controls,
        "xl_sizes": xl_sizes,
        "sd15_sizes": sd15_sizes,
        "state": state,
        "inf_id": inf_id,
        "status": status,
        "progress": [value for job_id, value in page.evaluate("window.recorded.progress") if job_id == inf_id],
        "states": [value for job_id, value in page.evaluate("window.recorded.states") if job_id == inf_id],
        "captions": captions,
        "sizes": sizes,
        "downloads": downloads,
        "reused_seed": reused,
        "balance": [credits_before, balance(page)],
        "history_first": page.locator("#history-list li[data-inf-id]").first.get_attribute("data-inf-id"),
        "requests": requests,
        "token": session.server.token,
        "stored_token": page.evaluate("localStorage.getItem('daguerre.token')"),
    }


def scenario_cancel(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    credits_before = balance(page)
    # A long job (the largest size, the most steps), then a quick one queued behind it.
    page.locator("#img-prompt").fill("a long job")
    page.locator("#size-presets button").last.click()
    page.locator("#img-width").fill(page.locator("#img-width").get_attribute("max") or "")
    page.locator("#img-height").fill(page.locator("#img-height").get_attribute("max") or "")
    page.locator("#img-steps").fill(page.locator("#img-steps").get_attribute("max") or "")
    page.locator("#img-num").fill("4")
    page.get_by_role("button", name="Generate").click()
    long_job = newest_job(page, 0)
    queued_job = image_job(page, "a quick job behind it")
    queued_text = queued_job.locator(".job-status").inner_text()
    queued_job.get_by_role("button", name="Cancel").click()
    queued_end = wait_ended(queued_job)
    # The long one is cancelled while it runs, once a step has been reported.
    long_job.locator("xpath=self::*[@data-state='running']").wait_for(timeout=WAIT_MS)
    long_job.locator("progress").evaluate(
        "(bar) => new Promise((resolve) => {"
        "  const check = () => (bar.value > 0 ? resolve() : setTimeout(check, 20));"
        "  check();"
        "})"
    )
    long_job.get_by_role("button", name="Cancel").click()
    long_end = wait_ended(long_job)
    page.wait_for_function(
        "(c) => Number(document.getElementById('balance').value) === c", arg=credits_before, timeout=WAIT_MS
    )
    session.screenshot(page, "cancelled")
    return {
        "queued_text": queued_text,
        "queued_end": queued_end,
        "queued_status": queued_job.locator(".job-status").inner_text(),
        "long_end": long_end,
        "long_status": long_job.locator(".job-status").inner_text(),
        "long_progress": long_job.locator("progress").evaluate("bar => bar.value"),
        "cancel_buttons_left": page.locator(".job button:visible", has_text="Cancel").count(),
        "balance": [credits_before, balance(page)],
    }


def scenario_img2img(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    requests = watch_requests(page)
    drop_file(page, "#drop-zone", "harbour.png", png(photo(160, 128, seed=3)))
    page.locator("#init-preview").wait_for()
    preview = image_sizes(page.locator("#init-preview"))
    set_range(page.get_by_label("Strength", exact=True), 0.5)
    job = image_job(page, "a watercolour harbour")
    state = wait_ended(job)
    sizes = image_sizes(job.locator("figure img"))
    posts = [r for r in requests if r["method"] == "POST" and r["url"].endswith("/api/inference")]
    session.screenshot(page, "img2img")
    return {
        "preview": preview,
        "drop_text": page.locator("#drop-text").inner_text(),
        "state": state,
        "title": job.locator("h3").inner_text(),
        "sizes": sizes,
        "multipart": [("init_image_file" in r["body"], 'name="image_strength"\r\n\r\n0.5' in r["body"]) for r in posts],
    }


def scenario_controlnet(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    # The file picker, by keyboard: focus "Choose an image…" and press Enter. Once in CI (2 busy
    # cores) a press right after sign-in opened no chooser although the button held the focus, so
    # the focus is checked first and the press made at most three times.
    choose = page.get_by_role("button", name="Choose an image…")
    for attempt in range(3):
        choose.focus()
        page.wait_for_function("() => document.activeElement?.id === 'choose-image'")
        try:
            with page.expect_file_chooser(timeout=5000) as chooser:
                page.keyboard.press("Enter")
            break
        except PlaywrightTimeout:
            if attempt == 2:
                raise
    chooser.value.set_files(
        files=[{"name": "shapes.png", "mimeType": "image/png", "buffer": png(photo(128, 128, seed=5))}]
    )
    page.get_by_label("ControlNet").select_option("canny")
    job = image_job(page, "a house, canny")
    state = wait_ended(job)
    control_map = job.locator("figure.control-map")
    with api(session) as client:
        status = client.get(f"/api/jobs/{job.get_attribute('data-inf-id')}").json()
    session.screenshot(page, "controlnet")
    return {
        "state": state,
        "caption": control_map.locator("figcaption").inner_text(),
        "map_src": control_map.locator("img").get_attribute("src"),
        "map_size": image_sizes(control_map.locator("img")),
        "control_image": status.get("control_image"),
        "image_count": job.locator("figure:not(.control-map)").count(),
    }


def scenario_errors(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    credits_before = balance(page)
    # ControlNet with no image: the server's message, next to the image field.
    page.locator("#img-prompt").fill("no image")
    page.get_by_label("ControlNet").select_option("depth")
    page.get_by_role("button", name="Generate").click()
    missing_image = field_error(page, "image-form", "init_image_file")
    session.screenshot(page, "error-image")
    # A video of 6 frames from Wan, which takes 4k+1: the message, next to the frames field.
    page.get_by_label("A video from text").check()
    page.get_by_label("Video model", exact=True).select_option("demo-t2v")
    page.locator("#vid-prompt").fill("a fox")
    page.locator("#vid-frames").fill("6")
    page.get_by_role("button", name="Make the video").click()
    frames = field_error(page, "video-form", "num_frames")
    session.screenshot(page, "error-frames")
    jobs_started = page.locator(".job").count()
    credits_after = balance(page)
    # Signed out, a wrong token: the message next to the token field, and nothing is stored.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    token_error = field_error(page, "sign-in-form", "access_token")
    return {
        "missing_image": missing_image,
        "frames": frames,
        "token": token_error,
        "stored": page.evaluate("localStorage.getItem('daguerre.token')"),
        "jobs_started": jobs_started,
        "balance": [credits_before, credits_after],
    }


def scenario_upscale(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    source = image_job(page, "a lighthouse to upscale")
    wait_ended(source)
    seen: dict[str, Any] = {}
    for method, scale in (("esrgan", "2.5"), ("hires_fix", None)):
        before = page.locator(".job").count()
        source.get_by_role("button", name="Upscale…").first.click()
        dialog = page.locator("#upscale-dialog")
        dialog.wait_for()
        dialog.get_by_label("Method").select_option(method)
        fields = {
            "scale_visible": dialog.get_by_label("Scale (ESRGAN)").is_visible(),
            "strength_visible": dialog.get_by_label("Strength (hires fix)").is_visible(),
        }
        if scale:
            dialog.get_by_label("Scale (ESRGAN)").fill(scale)
        dialog.get_by_role("button", name="Upscale", exact=True).click()
        job = newest_job(page, before)
        state = wait_ended(job)
        inf_id = job.get_attribute("data-inf-id")
        seen[method] = {
            **fields,
            "state": state,
            "dialog_open": dialog.is_visible(),
            "title": job.locator("h3").inner_text(),
            "sizes": image_sizes(job.locator("figure img")),
            "progress": [value for job_id, value in page.evaluate("window.recorded.progress") if job_id == inf_id],
        }
    session.screenshot(page, "upscaled")
    return seen


def video_facts(video: Locator) -> dict[str, Any]:
    video.wait_for(timeout=WAIT_MS)
    return video.evaluate(
        """(video) => new Promise((resolve) => {
            const done = () => resolve({ src: video.currentSrc, controls: video.controls,
                width: video.videoWidth, height: video.videoHeight, duration: video.duration,
                error: video.error?.code ?? null });
            if (video.readyState >= 1 || video.error) done();
            else {
                video.addEventListener("loadedmetadata", done);
                video.addEventListener("error", done);
                setTimeout(done, 20000);
            }
        })"""
    )


def scenario_animate(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    source = image_job(page, "a beach at dawn")
    wait_ended(source)
    before = page.locator(".job").count()
    source.get_by_role("button", name="Animate…").first.click()
    dialog = page.locator("#animate-dialog")
    dialog.wait_for()
    models = dialog.get_by_label("Image-to-video model").locator("option").evaluate_all("o => o.map((x) => x.value)")
    dialog.get_by_label("What happens").fill("the waves roll in")
    dialog.get_by_label("Frames", exact=True).fill("5")
    dialog.get_by_label("Steps").fill("2")
    dialog.get_by_role("button", name="Animate").click()
    job = newest_job(page, before)
    state = wait_ended(job)
    facts = video_facts(job.locator("video"))
    session.screenshot(page, "animated")
    return {"models": models, "state": state, "video": facts, "caption": job.locator("figcaption").inner_text()}


def scenario_text_to_video(session: Session) -> dict[str, Any]:
    page = sign_in(session)
    page.get_by_label("A video from text").check()
    models = page.get_by_label("Video model", exact=True).locator("option").evaluate_all("o => o.map((x) => x.value)")
    page.get_by_label("Video model", exact=True).select_option("demo-t2v")
    page.locator("#vid-prompt").fill("a red fox running through snow")
    page.locator("#vid-frames").fill("5")
    page.locator("#vid-steps").fill("2")
    page.get_by_role("button", name="Make the video").click()
    job = newest_job(page, 0)
    state = wait_ended(job)
    facts = video_facts(job.locator("video"))
    session.screenshot(page, "video")
    return {
        "models": models,
        "state": state,
        "video": facts,
        "download": job.locator("a[download]").get_attribute("download"),
    }


def scenario_history(session: Session) -> dict[str, Any]:
    with api(session) as client:
        # Enough jobs for two pages, whatever ran before.
        for index in range(10):
            answer = client.post(
                "/api/inference",
                data={
                    "model_id": "demo",
                    "prompt": f"history {index}",
                    "width": 128,
                    "height": 128,
                    "steps": 1,
                    "num_images": 1,
                },
            ).json()
            assert answer["error_code"] == 0, answer
        first = client.get("/api/jobs", params={"limit": 8}).json()
        second = client.get("/api/jobs", params={"limit": 8, "before": first["next_before"]}).json()
    page = sign_in(session)
    items = page.locator("#history-list li[data-inf-id]")
    items.first.wait_for()
    first_page = items.evaluate_all("items => items.map((i) => i.dataset.infId)")
    thumbnails = image_sizes(items.first.locator("img"))
    page.get_by_role("button", name="Show older jobs").click()
    page.wait_for_function(
        "(n) => document.querySelectorAll('#history-list li[data-inf-id]').length > n", arg=len(first_page)
    )
    both_pages = items.evaluate_all("items => items.map((i) => i.dataset.infId)")
    session.screenshot(page, "history")
    return {
        "expected": [job["inf_id"] for job in first["jobs"]] + [job["inf_id"] for job in second["jobs"]],
        "first_page": first_page,
        "both_pages": both_pages,
        "thumbnails": thumbnails,
        "summary": items.first.inner_text(),
    }


def scenario_looks(session: Session) -> dict[str, Any]:
    """Light and dark, desktop and phone: screenshots, axe-core, and no sideways scrolling."""
    signed_out = open_page(session)
    signed_out.goto(f"{session.url}/")
    signed_out.get_by_label("Access token").wait_for()
    axe = {"signed_out": run_axe(signed_out)}
    page = sign_in(session, DESKTOP)
    wait_ended(image_job(page, "a lighthouse at dusk", images=2))
    seen: dict[str, Any] = {"axe": axe, "themes": {}, "overflow": {}}
    # The system's dark preference, then the toggle (which wins over it and is remembered).
    page.emulate_media(color_scheme="dark")
    # The page hears of the change from a media query listener, a moment later.
    page.wait_for_function("() => document.getElementById('theme-toggle').getAttribute('aria-pressed') === 'true'")
    seen["themes"]["system_dark"] = page.evaluate(
        "[getComputedStyle(document.body).backgroundColor,"
        " document.getElementById('theme-toggle').getAttribute('aria-pressed')]"
    )
    page.get_by_role("button", name="Dark theme").click()
    seen["themes"]["toggled_light"] = page.evaluate(
        "[getComputedStyle(document.body).backgroundColor, localStorage.getItem('daguerre.theme')]"
    )
    for theme in ("light", "dark"):
        page.evaluate("(theme) => { document.documentElement.dataset.theme = theme; }", theme)
        for name, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(viewport)  # type: ignore[arg-type]  # a ViewportSize TypedDict
            page.evaluate("window.scrollTo(0, 0)")
            session.screenshot(page, f"{theme}-{name}")
            seen["overflow"][f"{theme}-{name}"] = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            axe[f"{theme}-{name}"] = run_axe(page)
    page.set_viewport_size(DESKTOP)  # type: ignore[arg-type]  # a ViewportSize TypedDict
    page.locator(".job").first.get_by_role("button", name="Upscale…").first.click()
    axe["dialog"] = run_axe(page)
    session.screenshot(page, "dialog")
    return seen
