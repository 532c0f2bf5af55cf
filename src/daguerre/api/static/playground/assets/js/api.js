// Calls to this server's API. The token travels only in the Authorization header (never in a URL,
// which the server's access log would record, nor in a body the page could leak); answers are the
// contract's envelope, and a failure becomes an ApiError that knows which field it names.

const TOKEN_KEY = "daguerre.token";

export class ApiError extends Error {
  constructor(message, field = null) {
    super(message);
    this.name = "ApiError";
    this.field = field ?? fieldOf(message);
  }
}

// The envelope's `field` says which field an error is about; the messages also name it first
// ("invalid width '130': ...", "prompt is required"), which is what the hosted API gives.
export function fieldOf(message) {
  const match = /^invalid (\w+)\b/.exec(message) ?? /^(\w+) is required\b/.exec(message);
  return match ? match[1] : null;
}

export function storedToken() {
  return localStorage.getItem(TOKEN_KEY);
}

export function storeToken(token) {
  if (token) localStorage.setItem(TOKEN_KEY, token);
  else localStorage.removeItem(TOKEN_KEY);
}

// Paths are relative to the page's <base>, so a proxy prefix carries through.
export function apiUrl(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), document.baseURI);
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null) url.searchParams.set(name, String(value));
  }
  return url;
}

export function authHeaders(token = storedToken()) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function envelope(response) {
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError(`the server answered ${response.status} without a JSON body`);
  }
  if (body.error_code !== 0) {
    throw new ApiError(body.message ?? `the server answered ${response.status}`, body.field ?? null);
  }
  return body;
}

export async function get(path, query = {}, token = undefined) {
  return envelope(await fetch(apiUrl(path, query), { headers: authHeaders(token) }));
}

// A POST with a FormData body (multipart: the one encoding that also carries files).
export async function post(path, form = new FormData()) {
  return envelope(await fetch(apiUrl(path), { method: "POST", headers: authHeaders(), body: form }));
}

export async function openapi() {
  const response = await fetch(apiUrl("openapi.json"));
  if (!response.ok) throw new ApiError(`the OpenAPI document answered ${response.status}`);
  return response.json();
}
