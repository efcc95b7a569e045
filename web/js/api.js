// The HTTP API (docs/api.md) as the page uses it: every call carries the API key the
// person gave (kept in localStorage) as `Authorization: Bearer`, and a 401 asks for a
// key (one dialog however many calls were refused), then retries.

const KEY_STORAGE = 'cthulu.apiKey';

/** An error answer of the API: `{error:{code,message,hint}}`, or a transport failure. */
export class ApiError extends Error {
  constructor(status, code, message, hint) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
  }

  /** The message and the hint, for a person. */
  describe() {
    return this.hint ? `${this.message} (${this.hint})` : this.message;
  }
}

let askForKey = async () => false;

/** Sets what to do on a 401: a function resolving to true once a new key is stored. */
export function onUnauthorized(handler) {
  askForKey = handler;
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || '';
}

export function setApiKey(key) {
  if (key) {
    localStorage.setItem(KEY_STORAGE, key.trim());
  } else {
    localStorage.removeItem(KEY_STORAGE);
  }
}

/** Headers for a call: the bearer key when there is one, plus `extra`. */
export function authHeaders(extra = {}) {
  const key = apiKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : { ...extra };
}

/**
 * A raw call: resolves to the `Response` of a 2xx answer, throws an `ApiError` otherwise.
 * `options.json` is sent as a JSON body, `options.body` as it is.
 */
export async function call(method, path, options = {}) {
  for (;;) {
    const headers = authHeaders(options.headers);
    let body = options.body;
    if (options.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(options.json);
    }
    let response;
    try {
      response = await fetch(path, { method, headers, body, signal: options.signal });
    } catch (error) {
      if (error.name === 'AbortError') throw error;
      throw new ApiError(0, 'unreachable', `the server did not answer: ${error.message}`, 'is cthulu serve running?');
    }
    if (response.ok) return response;
    const failure = await errorOf(response);
    // Asks again after a refused key, until the person gives up (cancels the dialog).
    if (response.status === 401 && (await askForKey(failure))) continue;
    throw failure;
  }
}

async function errorOf(response) {
  let error = {};
  try {
    error = (await response.json()).error || {};
  } catch {
    // Not our JSON error body (a proxy's page, an empty answer).
  }
  return new ApiError(
    response.status,
    error.code || `http_${response.status}`,
    error.message || `${response.status} ${response.statusText}`,
    error.hint,
  );
}

/** GET → parsed JSON. */
export async function get(path, options) {
  return (await call('GET', path, options)).json();
}

/** POST `json` → parsed JSON, or null for an empty answer. */
export async function post(path, json, options = {}) {
  return bodyOf(await call('POST', path, { ...options, json }));
}

export async function patch(path, json) {
  return bodyOf(await call('PATCH', path, { json }));
}

export async function del(path) {
  return bodyOf(await call('DELETE', path));
}

async function bodyOf(response) {
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

/** `/api/v1/sandboxes/{id}` + `rest`, the id escaped. */
export function sandboxPath(sandboxId, rest = '') {
  return `/api/v1/sandboxes/${encodeURIComponent(sandboxId)}${rest}`;
}

/** Fetches `path` with the key and saves the answer as `fileName` in the browser. */
export async function download(path, fileName) {
  const blob = await (await call('GET', path)).blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = fileName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
