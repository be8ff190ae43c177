// Talking to the gateway: every request goes to /dashboard/api/ on this
// origin with the session cookie; every write carries the session's CSRF
// token. A 401 means the session ended: back to the sign-in page.
let session = null;

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function call(method, path, body) {
  const headers = {};
  if (method !== "GET") {
    headers["X-CSRF-Token"] = session ? session.csrf : "";
  }
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(`/dashboard/api${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  if (response.status === 401) {
    location.assign("/dashboard/signin");
    throw new ApiError(401, { message: "signed out" });
  }
  const text = await response.text();
  let parsed = {};
  try {
    parsed = text ? JSON.parse(text) : {};
  } catch {
    parsed = { message: text.trim() };
  }
  if (!response.ok) {
    throw new ApiError(response.status, parsed);
  }
  return parsed;
}

/** Loads the session (role, CSRF token); null when signed out. */
export async function loadSession() {
  session = await call("GET", "/session");
  return session;
}

export const canWrite = () => session !== null && session.role === "admin";
export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body ?? {});
export const patch = (path, body) => call("PATCH", path, body);
export const del = (path) => call("DELETE", path);

export async function signOut() {
  await call("DELETE", "/session");
  session = null;
}

/** Encodes one path segment. */
export const seg = (text) => encodeURIComponent(text);
