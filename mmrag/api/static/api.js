// The page's only way to the server: the public /v1 API, with the user's key in the X-API-Key header.
// The key lives in this tab's sessionStorage; it is never put in a URL (pictures are fetched with the header
// and shown through object URLs), so it reaches no log, history or Referer.

const KEY_NAME = "mmrag.apiKey";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY_NAME) || "",
  set: (key) => (key ? sessionStorage.setItem(KEY_NAME, key) : sessionStorage.removeItem(KEY_NAME)),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }

  /** A heading a person can act on; the server's message (which names the problem) goes under it. */
  get title() {
    switch (this.status) {
      case 0:
        return "Cannot reach the mmrag server.";
      case 401:
        return apiKey.get() ? "The server refused this API key (401)." : "This server needs an API key (401).";
      case 403:
        return "Not allowed (403).";
      case 404:
        return "Not found (404).";
      case 409:
        return "The collection is busy (409).";
      case 413:
        return "Too large for the server (413).";
      case 415:
        return "Unsupported file (415).";
      case 422:
        return "The server could not use this request (422).";
      case 501:
        return "Not available on this server (501).";
      case 503:
        return "The server is not ready (503).";
      default:
        return this.status >= 500 ? `The server failed (${this.status}).` : `Request failed (${this.status}).`;
    }
  }
}

const listeners = new Set();
/** Called with every ApiError of status 401, so the page can ask for a key wherever the call came from. */
export function onUnauthorized(listener) {
  listeners.add(listener);
}

function fail(error) {
  if (error.status === 401) for (const listener of listeners) listener(error);
  return error;
}

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { "X-API-Key": key, ...extra } : extra;
}

async function errorOf(response) {
  let code = "";
  let message = response.statusText;
  try {
    const body = await response.json();
    code = body.error || "";
    message = body.message || message;
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  return fail(new ApiError(response.status, code, message));
}

/** fetch() with the key; throws ApiError for any answer but 2xx, or when the server cannot be reached. */
export async function call(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "unreachable", `the request did not reach the server (${err.message})`);
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function getJson(path, options) {
  return (await call(path, options)).json();
}

export const v1 = (collection, rest = "") => `/v1/collections/${encodeURIComponent(collection)}${rest}`;

// ---- pictures: fetched with the key, shown as object URLs ---------------------------------------------------

const pictures = new Map();

/** An object URL for a picture path under /v1 (cached: thumbnails come back often). */
export function picture(path) {
  if (!pictures.has(path)) {
    const promise = call(path)
      .then((response) => response.blob())
      .then((blob) => URL.createObjectURL(blob));
    promise.catch(() => pictures.delete(path));
    pictures.set(path, promise);
  }
  return pictures.get(path);
}

export function forgetPictures() {
  for (const promise of pictures.values()) promise.then(URL.revokeObjectURL, () => {});
  pictures.clear();
}

/** The PDF page an item is on: an object URL, the page size and the item's box, both in PDF points. */
export async function pageOf(itemId) {
  const response = await call(`/v1/items/${itemId}/page`);
  const width = Number(response.headers.get("X-Page-Width"));
  const height = Number(response.headers.get("X-Page-Height"));
  const rawBox = response.headers.get("X-Item-Box");
  const box = rawBox ? rawBox.split(",").map(Number) : null;
  const url = URL.createObjectURL(await response.blob());
  return { url, width, height, box };
}

// ---- server-sent events (POST, so not EventSource) -----------------------------------------------------------

export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { name, data: JSON.parse(data.join("\n")) };
    }
  }
}

// ---- uploads: XMLHttpRequest, for the upload's own progress -------------------------------------------------

export function upload(collection, entries, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", v1(collection, "/documents"));
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      let body = {};
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // leave it empty: the status speaks
      }
      if (xhr.status === 202) resolve(body);
      else reject(fail(new ApiError(xhr.status, body.error || "", body.message || xhr.statusText)));
    });
    xhr.addEventListener("error", () =>
      reject(
        new ApiError(
          0,
          "unreachable",
          "the connection closed before the upload finished: the files may be over the server's upload " +
            "limit (api.max_upload_bytes), or the server stopped",
        ),
      ),
    );
    const form = new FormData();
    for (const entry of entries) form.append("files", entry.file, entry.file.name);
    xhr.send(form);
  });
}
