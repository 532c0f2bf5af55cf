// The playground: sign in with a token, pick a model, start jobs, watch them, use their results.

import { ApiError, get, openapi, post, storedToken, storeToken } from "./api.js";
import { announce, h } from "./dom.js";
import { JobCard } from "./jobs.js";
import { applySchema, loadDocument, syncOutput, unwrap } from "./schema.js";

const HISTORY_PAGE = 8;
const THEME_KEY = "daguerre.theme";
// Shapes offered as one-click sizes; each is shown only if the selected model's sizes (its family's,
// from /api/models; else the OpenAPI document's ranges) allow it. The smallest is always offered.
const SIZE_SHAPES = [
  [512, 512],
  [512, 768],
  [768, 512],
  [640, 640],
  [768, 768],
  [1024, 1024],
  [832, 1216],
  [1216, 832],
];
// Fields the page sets itself rather than through a control.
const PAGE_FIELDS = new Set(["access_token", "async", "webhook_url", "inf_id", "url", "image_url"]);

const $ = (id) => document.getElementById(id);
const forms = {
  signIn: $("sign-in-form"),
  image: $("image-form"),
  video: $("video-form"),
  upscale: $("upscale-form"),
  animate: $("animate-form"),
};
const schemas = {};
let catalog = { models: [], loras: [], video_models: [] };

// --- theme ------------------------------------------------------------------------------------

function effectiveTheme() {
  return document.documentElement.dataset.theme ?? (matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
}

function showTheme() {
  const dark = effectiveTheme() === "dark";
  $("theme-toggle").setAttribute("aria-pressed", String(dark));
}

function setupTheme() {
  const chosen = localStorage.getItem(THEME_KEY);
  if (chosen === "light" || chosen === "dark") document.documentElement.dataset.theme = chosen;
  showTheme();
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", showTheme);
  $("theme-toggle").addEventListener("click", () => {
    const next = effectiveTheme() === "dark" ? "light" : "dark";
    document.documentElement.dataset.theme = next;
    localStorage.setItem(THEME_KEY, next);
    showTheme();
  });
}

// --- errors next to their fields -----------------------------------------------------------------

function clearErrors(form) {
  for (const error of form.querySelectorAll(".field-error")) {
    const control = document.querySelector(`[aria-describedby~="${error.id}"]`);
    if (control) {
      control.removeAttribute("aria-invalid");
      const rest = control.getAttribute("aria-describedby").split(" ").filter((id) => id !== error.id);
      if (rest.length) control.setAttribute("aria-describedby", rest.join(" "));
      else control.removeAttribute("aria-describedby");
    }
    error.remove();
  }
  const general = form.querySelector("[data-form-error]");
  if (general) general.textContent = "";
}

function showError(form, error) {
  const message = error instanceof ApiError ? error.message : `could not reach the server (${error.message})`;
  if (error.field === "access_token" && form !== forms.signIn) {
    signOut();
    showError(forms.signIn, error);
    return;
  }
  const field = error.field ? form.querySelector(`[data-field="${error.field}"]`) : null;
  if (!field || field.closest("[hidden]")) {
    form.querySelector("[data-form-error]").textContent = message;
    return;
  }
  const control = field.querySelector("input:not([type=file]), select, textarea, button");
  const note = h("p", { className: "field-error", id: `${form.id}-${error.field}-error` }, message);
  field.append(note);
  if (control) {
    control.setAttribute("aria-invalid", "true");
    const described = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
    control.setAttribute("aria-describedby", [note.id, ...described].join(" "));
    control.focus();
  }
}

// --- forms: what a submission sends ----------------------------------------------------------------

function trackTouched(form) {
  const touch = (event) => {
    if (event.target.name) event.target.dataset.touched = "1";
    if (event.target.type === "range") syncOutput(event.target);
  };
  form.addEventListener("input", touch);
  form.addEventListener("change", touch);
}

// The form's fields of the endpoint's schema: what the user changed or what differs from the
// server's default (so a default the server resolves itself, like LCM's steps, stays its own).
function formFields(form) {
  const schema = schemas[form.id];
  const data = new FormData();
  for (const name of Object.keys(schema.properties)) {
    if (PAGE_FIELDS.has(name)) continue;
    const control = form.elements.namedItem(name);
    if (!control || control.disabled || control.type === "file") continue;
    if (control instanceof RadioNodeList) {
      if (control.value) data.append(name, control.value);
      continue;
    }
    const value = control.type === "checkbox" ? String(control.checked) : control.value;
    if (value === "" || (!control.dataset.touched && value === control.dataset.default)) continue;
    data.append(name, value);
  }
  data.append("async", "true");
  return data;
}

function shorten(text, length = 60) {
  return text.length > length ? `${text.slice(0, length - 1)}…` : text;
}

// --- jobs --------------------------------------------------------------------------------------

const jobActions = {
  reuseSeed(seed) {
    setMode("image");
    const input = forms.image.elements.namedItem("seed");
    input.value = String(seed);
    input.dataset.touched = "1";
    input.focus();
    announce(`Seed ${seed} is set in the form.`);
  },
  async useAsInput(url) {
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error(`the image answered ${response.status}`);
      const blob = await response.blob();
      setInitImage(new File([blob], url.split("/").pop() || "input.png", { type: blob.type || "image/png" }));
      setMode("image");
      $("drop-zone").scrollIntoView({ block: "center" });
      $("choose-image").focus();
      announce("The image is the input of the next request.");
    } catch (error) {
      announce(`Could not use that image: ${error.message}`);
    }
  },
  upscale(source) {
    openSourceDialog($("upscale-dialog"), forms.upscale, source);
  },
  animate(source) {
    openSourceDialog($("animate-dialog"), forms.animate, source);
  },
  ended() {
    refreshBalance();
    loadHistory(true);
  },
};

async function startJob(form, endpoint, data, meta) {
  clearErrors(form);
  const button = form.querySelector("[type=submit]");
  button.disabled = true;
  try {
    const accepted = await post(endpoint, data);
    const card = new JobCard({ infId: accepted.inf_id, queuePosition: accepted.queue_position, actions: jobActions, ...meta });
    $("job-list").prepend(card.element);
    $("results-empty").hidden = true;
    // On a phone the results are below the form: bring the new job into view.
    if (card.element.getBoundingClientRect().top > innerHeight) card.element.scrollIntoView({ block: "nearest" });
    announce(`Job started: ${meta.title}`);
    refreshBalance();
    card.follow();
    return true;
  } catch (error) {
    showError(form, error);
    return false;
  } finally {
    button.disabled = false;
  }
}

// --- the image form ------------------------------------------------------------------------------

function modelCard(model, checked) {
  const cover = model.cover_img
    ? h("img", { className: "model-cover", src: model.cover_img, alt: "" })
    : h("span", { className: "model-cover placeholder", "aria-hidden": "true" }, (model.title || model.id).slice(0, 1).toUpperCase());
  return h(
    "label",
    { className: "model-card" },
    h("input", { type: "radio", name: "model_id", value: model.id, checked, required: true }),
    cover,
    h("span", { className: "model-title" }, model.title || model.id),
    h("span", { className: "model-meta" }, `${model.id} · ${model.base_model || "?"} · versions ${model.versions.join(", ")}`),
    h("span", { className: "tags" }, model.tags.map((tag) => h("span", { className: "tag" }, tag))),
  );
}

function showVersions() {
  const id = forms.image.elements.namedItem("model_id").value;
  const model = catalog.models.find((entry) => entry.id === id);
  const select = $("img-version");
  const versions = model?.versions ?? [];
  select.replaceChildren(h("option", { value: "" }, "Latest"), ...versions.map((version) => h("option", { value: version }, version)));
}

function buildModels() {
  const gallery = $("model-gallery");
  if (!catalog.models.length) {
    gallery.replaceChildren(h("p", { className: "muted" }, "No image models: add one with daguerre models add."));
  } else {
    gallery.replaceChildren(...catalog.models.map((model, index) => modelCard(model, index === 0)));
  }
  gallery.addEventListener("change", () => {
    showVersions();
    showSizes();
  });
  showVersions();
  const lora = $("img-lora");
  lora.replaceChildren(h("option", { value: "" }, "None"), ...catalog.loras.map((entry) => h("option", { value: entry.id }, entry.title || entry.id)));
}

function sizeProperty(name) {
  return unwrap(schemas[forms.image.id].properties[name]);
}

// The selected model's sizes, or the API's when /api/models gives none.
function sizeLimits() {
  const id = forms.image.elements.namedItem("model_id").value;
  const sizes = catalog.models.find((entry) => entry.id === id)?.sizes;
  if (sizes) return sizes;
  const width = sizeProperty("width");
  const height = sizeProperty("height");
  return { min: width.minimum, max: width.maximum, multiple_of: width.multipleOf ?? 1, default: [width.default, height.default] };
}

function showSizes() {
  const limits = sizeLimits();
  for (const [index, name] of ["width", "height"].entries()) {
    const input = forms.image.elements.namedItem(name);
    input.min = String(limits.min);
    input.max = String(limits.max);
    // Untouched, the field is not sent and the server renders the model's default size.
    input.dataset.default = String(limits.default[index]);
    if (!input.dataset.touched || Number(input.value) > limits.max) {
      input.value = String(limits.default[index]);
      input.dataset.touched = "";
    }
  }
  const fits = (side) => side >= limits.min && side <= limits.max && side % limits.multiple_of === 0;
  const shapes = [[limits.min, limits.min], ...SIZE_SHAPES].filter(([w, hh]) => fits(w) && fits(hh));
  $("size-presets").replaceChildren(
    ...shapes.map(([w, hh], index) => {
      const notes = [];
      if (index === 0) notes.push("smallest, fastest");
      if (w === limits.default[0] && hh === limits.default[1]) notes.push("default");
      const label = `${w} × ${hh}${notes.length ? ` (${notes.join(", ")})` : ""}`;
      return h("button", { type: "button", className: "secondary", dataset: { width: w, height: hh }, "aria-pressed": "false" }, label);
    }),
  );
  markPreset();
}

function sizePresets() {
  $("size-presets").addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    for (const [name, value] of [["width", button.dataset.width], ["height", button.dataset.height]]) {
      const input = forms.image.elements.namedItem(name);
      input.value = value;
      input.dataset.touched = "1";
    }
    markPreset();
  });
  forms.image.elements.namedItem("width").addEventListener("input", markPreset);
  forms.image.elements.namedItem("height").addEventListener("input", markPreset);
  showSizes();
}

function markPreset() {
  const width = forms.image.elements.namedItem("width").value;
  const height = forms.image.elements.namedItem("height").value;
  for (const button of $("size-presets").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.width === width && button.dataset.height === height));
  }
}

function setInitImage(file) {
  const input = $("img-file");
  const transfer = new DataTransfer();
  if (file) transfer.items.add(file);
  input.files = transfer.files;
  showInitImage();
}

let previewUrl = null;

function showInitImage() {
  const file = $("img-file").files[0];
  const preview = $("init-preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = file ? URL.createObjectURL(file) : null;
  preview.hidden = !file;
  if (previewUrl) preview.src = previewUrl;
  else preview.removeAttribute("src");
  $("clear-image").hidden = !file;
  $("drop-text").textContent = file ? `${file.name} (${Math.ceil(file.size / 1024)} KiB). Drop another, or` : "Drop an image here, or";
}

function setupDropZone() {
  const zone = $("drop-zone");
  $("choose-image").addEventListener("click", () => $("img-file").click());
  $("img-file").addEventListener("change", showInitImage);
  $("clear-image").addEventListener("click", () => {
    setInitImage(null);
    $("choose-image").focus();
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = [...(event.dataTransfer?.files ?? [])].find((entry) => entry.type.startsWith("image/"));
    if (file) setInitImage(file);
    else {
      // A result dragged from this page arrives as its URL.
      const url = event.dataTransfer?.getData("text/uri-list")?.split("\n")[0];
      if (url) jobActions.useAsInput(url.trim());
    }
  });
}

function submitImage(event) {
  event.preventDefault();
  const form = forms.image;
  const data = formFields(form);
  if (!data.get("lora")) data.delete("lora_scale");
  const file = $("img-file").files[0];
  if (file) data.append("init_image_file", file);
  else {
    data.delete("image_strength");
    data.delete("controlnet_preprocess");
  }
  const prompt = String(data.get("prompt") ?? "");
  const controlnet = data.get("controlnet") || null;
  const what = controlnet ? `ControlNet ${controlnet}` : file ? "img2img" : null;
  const title = `${data.get("model_id") ?? "?"}${what ? ` (${what})` : ""}: “${shorten(prompt)}”`;
  startJob(form, "api/inference", data, { kind: "image", title, controlnet });
}

// --- video, upscale and animate --------------------------------------------------------------------

function videoModels(mode) {
  return catalog.video_models.filter((model) => model.mode === mode);
}

function fillVideoModels(select, mode) {
  const models = videoModels(mode);
  select.replaceChildren(...models.map((model) => h("option", { value: model.id }, `${model.title || model.id} (${model.id})`)));
  if (!models.length) select.append(h("option", { value: "" }, "No model of this kind is installed"));
}

function limitResolutions() {
  const model = catalog.video_models.find((entry) => entry.id === $("vid-model").value);
  const select = $("vid-resolution");
  for (const option of select.options) option.disabled = Boolean(model?.resolutions && !model.resolutions.includes(option.value));
  if (select.selectedOptions[0]?.disabled) select.value = [...select.options].find((option) => !option.disabled)?.value ?? "";
}

function submitVideo(event) {
  event.preventDefault();
  const data = formFields(forms.video);
  const title = `${data.get("model_id")}: “${shorten(String(data.get("prompt") ?? ""))}”`;
  startJob(forms.video, "api/video", data, { kind: "video", title });
}

function openSourceDialog(dialog, form, source) {
  clearErrors(form);
  form.dataset.infId = source.infId;
  form.dataset.url = source.url;
  form.querySelector("[data-source-preview]").src = source.url;
  dialog.showModal();
}

function showUpscaleFields() {
  const type = forms.upscale.elements.namedItem("type").value;
  for (const field of forms.upscale.querySelectorAll("[data-when-type]")) {
    const shown = field.dataset.whenType === type;
    field.hidden = !shown;
    for (const control of field.querySelectorAll("input")) control.disabled = !shown;
  }
}

async function submitUpscale(event) {
  event.preventDefault();
  const form = forms.upscale;
  const data = formFields(form);
  data.append("inf_id", form.dataset.infId);
  data.append("url", form.dataset.url);
  const type = data.get("type") ?? form.elements.namedItem("type").value;
  const detail = type === "hires_fix" ? "hires fix" : `ESRGAN ×${form.elements.namedItem("scale").value}`;
  if (await startJob(form, "api/upscale", data, { kind: "upscale", title: detail })) $("upscale-dialog").close();
}

async function submitAnimate(event) {
  event.preventDefault();
  const form = forms.animate;
  const data = formFields(form);
  data.append("image_url", form.dataset.url);
  const title = `${data.get("model_id")} from an image: “${shorten(String(data.get("prompt") ?? ""))}”`;
  if (await startJob(form, "api/video", data, { kind: "video", title })) $("animate-dialog").close();
}

function setMode(mode) {
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.checked = radio.value === mode;
  forms.image.hidden = mode !== "image";
  forms.video.hidden = mode !== "video";
}

// --- balance and history ---------------------------------------------------------------------------

async function refreshBalance() {
  try {
    const balance = await get("api/balance");
    $("balance").value = balance.credits.toFixed(2);
    $("token-name").textContent = `Token ${balance.name || balance.token_prefix} (${balance.token_prefix}…)`;
  } catch (error) {
    if (error.field === "access_token") showError(forms.image, error);
  }
}

let historyBefore = null;
let historyRequest = 0;

function historyItem(job) {
  const when = job.queued_at ? new Date(job.queued_at).toLocaleString() : "";
  const outputs = [];
  (job.images ?? []).forEach((url, index) => {
    outputs.push(h("a", { href: url, target: "_blank", rel: "noopener" }, h("img", { src: url, alt: `Image ${index + 1}, seed ${job.seeds?.[index]}` })));
  });
  if (job.output) outputs.push(h("a", { href: job.output, target: "_blank", rel: "noopener" }, h("img", { src: job.output, alt: `Upscaled, ${job.width} by ${job.height}` })));
  if (job.video_url) outputs.push(h("a", { href: job.video_url, target: "_blank", rel: "noopener" }, "Video"));
  const parts = [job.kind, job.status, when, `${job.credit_cost} credits`];
  return h(
    "li",
    { dataset: { infId: job.inf_id, status: job.status } },
    h("div", { className: "history-item" }, h("span", { className: "summary" }, parts.join(" · "), job.message ? h("span", { className: "muted" }, ` (${job.message})`) : null), ...outputs),
  );
}

async function loadHistory(reset) {
  const request = ++historyRequest;
  const before = reset ? null : historyBefore;
  try {
    const page = await get("api/jobs", { limit: HISTORY_PAGE, before });
    if (request !== historyRequest) return; // a newer load replaced this one
    $("history-error").textContent = "";
    const items = page.jobs.map(historyItem);
    if (reset) $("history-list").replaceChildren(...items);
    else $("history-list").append(...items);
    if (reset && !items.length) $("history-list").append(h("li", { className: "muted" }, "No jobs yet."));
    historyBefore = page.next_before;
    $("history-more").hidden = !historyBefore;
  } catch (error) {
    $("history-error").textContent = error.message;
  }
}

// --- signing in and starting ----------------------------------------------------------------------

function signOut() {
  storeToken(null);
  $("workspace").hidden = true;
  $("account").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  $("token").value = "";
}

async function signIn(event) {
  event.preventDefault();
  clearErrors(forms.signIn);
  const token = $("token").value.trim();
  try {
    await get("api/balance", {}, token);
  } catch (error) {
    showError(forms.signIn, error.field ? error : Object.assign(error, { field: "access_token" }));
    return;
  }
  storeToken(token);
  $("token").value = "";
  await enterWorkspace();
}

let workspaceReady = null;

async function buildWorkspace() {
  const [document_, models] = await Promise.all([loadDocument(openapi), post("api/models")]);
  catalog = models;
  for (const form of [forms.image, forms.video, forms.upscale, forms.animate]) {
    schemas[form.id] = applySchema(form, document_);
    trackTouched(form);
  }
  buildModels();
  sizePresets();
  setupDropZone();
  fillVideoModels($("vid-model"), "t2v");
  fillVideoModels($("anim-model"), "i2v");
  $("vid-model").addEventListener("change", limitResolutions);
  limitResolutions();
  forms.upscale.elements.namedItem("type").addEventListener("change", showUpscaleFields);
  showUpscaleFields();
  for (const button of document.querySelectorAll("[data-random-seed]")) {
    button.addEventListener("click", () => {
      const input = $(button.dataset.randomSeed);
      input.value = input.dataset.default;
      input.dataset.touched = "";
      announce("The seed is random again.");
    });
  }
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  forms.image.addEventListener("submit", submitImage);
  forms.video.addEventListener("submit", submitVideo);
  forms.upscale.addEventListener("submit", submitUpscale);
  forms.animate.addEventListener("submit", submitAnimate);
  for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", () => setMode(radio.value));
  $("history-refresh").addEventListener("click", () => loadHistory(true));
  $("history-more").addEventListener("click", () => loadHistory(false));
}

async function enterWorkspace() {
  $("sign-in").hidden = true;
  $("account").hidden = false;
  $("sign-out").hidden = false;
  try {
    workspaceReady ??= buildWorkspace();
    await workspaceReady;
  } catch (error) {
    workspaceReady = null;
    if (error.field === "access_token") {
      showError(forms.image, error);
      return;
    }
    announce(`The page could not load the server's models or schema: ${error.message}`);
    return;
  }
  $("workspace").hidden = false;
  document.body.dataset.ready = "true";
  refreshBalance();
  loadHistory(true);
}

setupTheme();
forms.signIn.addEventListener("submit", signIn);
$("sign-out").addEventListener("click", () => {
  signOut();
  $("token").focus();
});
if (storedToken()) enterWorkspace();
else signOut();
