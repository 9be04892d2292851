// Calls to graft's own API: the key from the browser session on each call, problem+json
// errors as ApiError, a 401 bringing the key prompt back.

const KEY = "graft.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

function withKey(headers = {}) {
  const all = new Headers(headers);
  const key = apiKey();
  if (key) all.set("authorization", `Bearer ${key}`);
  return all;
}

async function failure(response) {
  let problem = {};
  try {
    problem = await response.json();
  } catch {
    problem = { title: response.statusText };
  }
  if (response.status === 401) {
    document.dispatchEvent(new CustomEvent("graft:need-key", { detail: problem.detail || "" }));
  }
  return new ApiError(response.status, problem);
}

/** The answer to `path` as JSON (null for 204), or an ApiError. */
export async function api(path, { method = "GET", body, headers, signal } = {}) {
  const response = await fetch(path, { method, body, headers: withKey(headers), signal });
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

/** The raw answer to `path` (for images and downloads), or an ApiError. */
export async function fetchRaw(path, { signal } = {}) {
  const response = await fetch(path, { headers: withKey(), signal });
  if (!response.ok) throw await failure(response);
  return response;
}

/** An object URL of an image the API serves (an <img src> cannot carry the key). */
export async function imageUrl(path) {
  const response = await fetchRaw(path);
  return URL.createObjectURL(await response.blob());
}

/**
 * POSTs a form with progress: `onSent(loaded, total)` while the bytes go out, `onSent(total,
 * total)` once they are all sent (the server then ingests). Resolves with the JSON answer.
 */
export function upload(path, form, onSent) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", path);
    const key = apiKey();
    if (key) request.setRequestHeader("authorization", `Bearer ${key}`);
    request.upload.onprogress = (e) => onSent(e.loaded, e.lengthComputable ? e.total : 0);
    request.upload.onload = () => onSent(1, 1);
    request.onerror = () => reject(new ApiError(0, { title: "the upload failed: the connection broke" }));
    request.onload = () => {
      let body = {};
      try {
        body = JSON.parse(request.responseText);
      } catch {
        body = { title: request.statusText };
      }
      if (request.status >= 200 && request.status < 300) return resolve(body);
      if (request.status === 401) {
        document.dispatchEvent(new CustomEvent("graft:need-key", { detail: body.detail || "" }));
      }
      reject(new ApiError(request.status, body));
    };
    request.send(form);
  });
}

/**
 * Server-Sent Events from `path`, read with fetch so the key goes along. Calls
 * `onEvent(type, data)` for each; resolves when the stream ends or `signal` aborts.
 */
export async function follow(path, onEvent, signal) {
  const response = await fetch(path, { headers: withKey({ accept: "text/event-stream" }), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length === 0) continue;
      let parsed = data.join("\n");
      try {
        parsed = JSON.parse(parsed);
      } catch {
        /* a text event */
      }
      onEvent(type, parsed);
    }
  }
}
