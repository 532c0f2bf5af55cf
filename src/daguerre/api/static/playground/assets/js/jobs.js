// One card per job: its place in the queue, a live progress bar from the job's events, a cancel
// button, and once it is done its outputs with what can be done with each.

import { ApiError, post } from "./api.js";
import { h } from "./dom.js";
import { followJob } from "./events.js";

const KIND_NAMES = { image: "Images", upscale: "Upscale", video: "Video" };

function plural(count, word) {
  return `${count} ${word}${count === 1 ? "" : "s"}`;
}

export class JobCard {
  // actions: { reuseSeed(seed), useAsInput(url), upscale(source), animate(source), ended(card, status) }
  constructor({ infId, kind, title, queuePosition, controlnet, actions }) {
    this.infId = infId;
    this.kind = kind;
    this.controlnet = controlnet;
    this.actions = actions;
    this.controller = new AbortController();
    this.status = h("p", { className: "job-status", role: "status", dataset: { state: "queued" } });
    this.bar = h("progress", { max: 1, value: 0, "aria-label": `Progress of job ${infId}` });
    this.step = h("span", { className: "step" });
    this.cancelButton = h("button", { type: "button", className: "danger", onclick: () => this.cancel() }, "Cancel");
    this.outputs = h("div", { className: "outputs" });
    this.element = h(
      "li",
      { className: "job", dataset: { infId, kind } },
      h("h3", {}, `${KIND_NAMES[kind] ?? kind}: ${title}`),
      this.status,
      h("div", { className: "job-progress" }, this.bar, this.step, this.cancelButton),
      this.outputs,
    );
    this.queued(queuePosition);
  }

  setState(state, text) {
    this.status.textContent = text;
    if (this.element.dataset.state === state) return;
    this.status.dataset.state = state;
    this.element.dataset.state = state;
  }

  queued(position) {
    this.setState("queued", position ? `Queued: ${plural(position, "job")} ahead` : "Queued: starts next");
  }

  async follow() {
    try {
      const final = await followJob(this.infId, (name, data) => this.onEvent(name, data), this.controller.signal);
      return final;
    } catch (error) {
      this.setState("failed", `Lost track of the job: ${error.message}`);
      return "failed";
    } finally {
      this.cancelButton.hidden = true;
    }
  }

  onEvent(name, data) {
    if (name === "queued") this.queued(data.queue_position);
    else if (name === "started") this.setState("running", "Running");
    else if (name === "progress") {
      if (this.element.dataset.state !== "running") this.setState("running", "Running");
      this.bar.value = data.fraction;
      this.step.textContent = `step ${data.step} of ${data.total}`;
    } else if (name === "finished") {
      this.bar.value = 1;
      this.setState("done", `Done in ${data.run_s ?? "?"} s, ${data.credit_cost} credits`);
      this.showOutputs(data);
      this.actions.ended?.(this, data);
    } else if (name === "failed" || name === "cancelled") {
      this.setState(name, `${name === "failed" ? "Failed" : "Cancelled"}: ${data.message ?? ""}`);
      this.actions.ended?.(this, data);
    }
  }

  async cancel() {
    this.cancelButton.disabled = true;
    try {
      await post(`api/jobs/${encodeURIComponent(this.infId)}/cancel`);
    } catch (error) {
      // Most often the job ended a moment before: its own final event says how.
      if (!(error instanceof ApiError)) throw error;
      this.step.textContent = error.message;
    }
  }

  showOutputs(status) {
    const figures = [];
    if (this.kind === "image") {
      status.images.forEach((url, index) => {
        const seed = status.seeds?.[index];
        figures.push(
          imageFigure(url, `Image ${index + 1}, seed ${seed}`, `Seed ${seed}`, `daguerre-${seed}.png`, [
            h("button", { type: "button", className: "secondary", onclick: () => this.actions.reuseSeed(seed) }, "Reuse seed"),
            ...sourceActions(this.actions, status.inf_id, url),
          ]),
        );
      });
      if (status.control_image) {
        const name = this.controlnet ? ` (${this.controlnet})` : "";
        const figure = imageFigure(status.control_image, `The control map${name}`, `Control map${name}`, "control-map.png", []);
        figure.classList.add("control-map");
        figures.push(figure);
      }
    } else if (this.kind === "upscale") {
      figures.push(
        imageFigure(status.output, `Upscaled image, ${status.width} by ${status.height}`, `${status.width} × ${status.height}`,
          `daguerre-${status.width}x${status.height}.png`, sourceActions(this.actions, status.inf_id, status.output)),
      );
    } else if (this.kind === "video") {
      const video = h("video", { src: status.video_url, controls: true, loop: true, playsInline: true, muted: true, preload: "metadata" });
      video.setAttribute("aria-label", `Video, ${status.num_frames} frames at ${status.fps} fps, seed ${status.seed}`);
      figures.push(
        h("figure", { className: "output" }, video,
          h("figcaption", {}, `${status.width} × ${status.height}, ${status.num_frames} frames, ${status.fps} fps, seed ${status.seed}`),
          h("div", { className: "actions" }, downloadLink(status.video_url, `daguerre-${status.seed}.mp4`))),
      );
    }
    this.outputs.replaceChildren(...figures);
  }
}

function downloadLink(url, filename) {
  return h("a", { className: "button-link", href: url, download: filename }, "Download");
}

function imageFigure(url, alt, caption, filename, actions) {
  return h(
    "figure",
    { className: "output" },
    h("img", { src: url, alt }),
    h("figcaption", {}, caption),
    h("div", { className: "actions" }, downloadLink(url, filename), ...actions),
  );
}

// What any image result can become: the next request's input, an upscale, a video.
function sourceActions(actions, infId, url) {
  return [
    h("button", { type: "button", className: "secondary", onclick: () => actions.useAsInput(url) }, "Use as input"),
    h("button", { type: "button", className: "secondary", onclick: () => actions.upscale({ infId, url }) }, "Upscale…"),
    h("button", { type: "button", className: "secondary", onclick: () => actions.animate({ infId, url }) }, "Animate…"),
  ];
}
