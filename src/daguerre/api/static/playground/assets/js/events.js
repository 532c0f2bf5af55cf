// A job's Server-Sent Events, read with fetch() so the token goes in the Authorization header:
// the browser's EventSource cannot send headers, and a token in its URL would be in every proxy's
// log. The stream is parsed by eventsource-parser (vendored, see ../README.md), which follows the
// HTML specification's rules for any chunking of the bytes.

import { createParser } from "../vendor/eventsource-parser/index.js";
import { ApiError, apiUrl, authHeaders } from "./api.js";

export const FINAL_EVENTS = new Set(["finished", "failed", "cancelled"]);
const RECONNECTS = 5;
const RECONNECT_DELAY_MS = 1000;

// Calls onEvent(name, data) for each event of job infId until its final event; resolves with the
// final event's name. A dropped connection resumes after the last event seen (Last-Event-ID), a
// bounded number of times.
export async function followJob(infId, onEvent, signal) {
  let lastId = null;
  let final = null;
  for (let attempt = 0; final === null; attempt += 1) {
    try {
      final = await readStream(infId, lastId, signal, (id, name, data) => {
        lastId = id ?? lastId;
        onEvent(name, data);
      });
    } catch (error) {
      if (error instanceof ApiError || signal?.aborted || attempt >= RECONNECTS) throw error;
    }
    if (final === null) {
      if (attempt >= RECONNECTS) throw new ApiError("the job's event stream kept dropping");
      await new Promise((resolve) => setTimeout(resolve, RECONNECT_DELAY_MS));
    }
  }
  return final;
}

async function readStream(infId, lastId, signal, onEvent) {
  const headers = { ...authHeaders(), Accept: "text/event-stream" };
  if (lastId) headers["Last-Event-ID"] = lastId;
  const response = await fetch(apiUrl(`api/jobs/${encodeURIComponent(infId)}/events`), { headers, signal });
  if (!(response.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
    // An unknown job or a bad token: the envelope, before any stream.
    const body = await response.json().catch(() => ({}));
    throw new ApiError(body.message ?? `the event stream answered ${response.status}`);
  }
  let final = null;
  const parser = createParser({
    onEvent(event) {
      const name = event.event ?? "message";
      onEvent(event.id, name, event.data ? JSON.parse(event.data) : {});
      if (FINAL_EVENTS.has(name)) final = name;
    },
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  try {
    while (final === null) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
  } finally {
    reader.cancel().catch(() => {});
  }
  return final;
}
