// Every control's range, step, default, choices and hint come from the server's OpenAPI document
// (/openapi.json, itself made from the request schemas), so they are written once, on the server.
// A form names its endpoint (data-schema="/api/inference"); each `.field[data-field=NAME]` in it is
// configured from that request body's property NAME.

// Display names of some choices; the choices themselves come from the schema's enums.
const CHOICE_NAMES = { esrgan: "ESRGAN", hires_fix: "Hires fix", canny: "Canny edges", depth: "Depth", openpose: "OpenPose" };

let documentPromise = null;

export function loadDocument(fetchDocument) {
  documentPromise ??= fetchDocument();
  return documentPromise;
}

export function requestSchema(document, path) {
  const content = document.paths[path].post.requestBody.content;
  return content["multipart/form-data"].schema;
}

// `X | None` is anyOf [X, null]: the X part, with the outer title, description and default.
export function unwrap(property) {
  if (!property?.anyOf) return property ?? {};
  const inner = property.anyOf.find((option) => option.type !== "null") ?? {};
  return { ...inner, ...property, anyOf: undefined };
}

function bounds(property) {
  return {
    min: property.minimum ?? property["x-minimum"],
    max: property.maximum ?? property["x-maximum"],
  };
}

// Integers step by their multiple; a slider needs a step (fine enough for the default to sit on
// it), a number box takes any value in range.
function step(property, control) {
  if (property.multipleOf) return property.multipleOf;
  if (property.type === "integer") return 1;
  const { min, max } = bounds(property);
  if (control.type === "range" && min !== undefined && max !== undefined) return max - min <= 4 ? 0.05 : 0.1;
  return "any";
}

function format(value) {
  return Number.isInteger(value) ? String(value) : String(Number(value.toFixed(4)));
}

// A short sentence of what the field takes, from the schema: "MIN to MAX, multiple of N; default D. Description".
export function describe(property) {
  const parts = [];
  const { min, max } = bounds(property);
  if (min !== undefined && max !== undefined) parts.push(`${format(min)} to ${format(max)}`);
  else if (min !== undefined) parts.push(`at least ${format(min)}`);
  if (property.multipleOf) parts.push(`multiple of ${format(property.multipleOf)}`);
  let text = parts.join(", ");
  const fallback = property.default === null || property.default === undefined;
  if (!fallback && typeof property.default !== "boolean" && property.default !== "") {
    text += `${text ? "; " : ""}default ${property.default}`;
  }
  if (property.description) text += `${text ? ". " : ""}${property.description}`;
  return text;
}

function hintFor(field, control, text) {
  if (!text || !control.id) return;
  let hint = field.querySelector(":scope > .hint");
  if (!hint) {
    hint = document.createElement("p");
    hint.className = "hint";
    hint.id = `${control.id}-hint`;
    field.append(hint);
    const described = (control.getAttribute("aria-describedby") ?? "").split(" ").filter(Boolean);
    control.setAttribute("aria-describedby", [...described, hint.id].join(" "));
  }
  hint.textContent = text;
}

export function defaultOf(property) {
  return property.default === undefined || property.default === null ? "" : property.default;
}

// Sets one control from its property: limits, step, choices, default value, hint.
export function configureControl(field, control, property, { hint = true } = {}) {
  const { min, max } = bounds(property);
  const value = defaultOf(property);
  if (control.type === "checkbox") {
    control.checked = value === true;
  } else if (control.tagName === "SELECT" && property.enum) {
    const options = [];
    if (property.default === undefined || property.default === null) {
      options.push(new Option(property.description?.startsWith("Default") ? "Default" : "None", ""));
    }
    for (const choice of property.enum) options.push(new Option(CHOICE_NAMES[choice] ?? String(choice), String(choice)));
    control.replaceChildren(...options);
    control.value = String(value);
  } else if (control.type === "number" || control.type === "range") {
    if (min !== undefined) control.min = String(min);
    if (max !== undefined) control.max = String(max);
    control.step = String(step(property, control));
    control.value = value === "" ? "" : String(value);
    if (value === "") control.placeholder = "server default";
    syncOutput(control);
  } else if (control.tagName === "TEXTAREA" || control.type === "text") {
    control.value = String(value);
  }
  control.dataset.default = String(value);
  if (hint) hintFor(field, control, describe(property));
}

export function syncOutput(control) {
  const output = control.parentElement?.querySelector(`output[for="${control.id}"]`);
  if (output) output.value = control.value;
}

// Configures every described field of a form; returns the schema used.
export function applySchema(form, document) {
  const schema = requestSchema(document, form.dataset.schema);
  for (const field of form.querySelectorAll(".field[data-field]")) {
    const name = field.dataset.field;
    const property = unwrap(schema.properties[name]);
    const control = field.querySelector(`[name="${name}"]`);
    if (!control || control.type === "file" || control.type === "radio") continue;
    if (schema.required?.includes(name) && control.tagName !== "SELECT") control.required = true;
    configureControl(field, control, property);
  }
  return schema;
}
