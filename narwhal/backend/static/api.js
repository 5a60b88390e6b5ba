// The backend's HTTP routes (docs/backend.md): JSON in and out, the session cookie
// sent along, every failure turned into an ApiError carrying the server's own words.

/** A request that did not succeed: status 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }

  /** The backend wants a signed-in browser. */
  get signIn() {
    return this.status === 401;
  }
}

const FALLBACK = {
  0: "The dashboard's server cannot be reached; it may be restarting.",
  401: "Sign in to see this.",
  403: "Your token does not allow this.",
  404: "Not found.",
  409: "That cannot be done now.",
  429: "Too many requests; try again in a moment.",
};

async function failure(response) {
  let message = "";
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") message = body.error;
  } catch {
    // not JSON: the fallback below says it in plain words
  }
  const fallback = FALLBACK[response.status] ||
    `The server answered ${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message || fallback);
}

async function request(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, FALLBACK[0]);
  }
  if (!response.ok) throw await failure(response);
  if (response.status === 204) return null;
  const type = response.headers.get("Content-Type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** GET path with query parameters (empty ones left out). */
export function get(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") query.set(name, String(value));
  }
  const qs = query.toString();
  return request("GET", qs ? `${path}?${qs}` : path);
}

export function post(path, body = {}) {
  return request("POST", path, body);
}

export function del(path) {
  return request("DELETE", path);
}

export const api = {
  state: () => get("/api/state"),
  jobs: (filters) => get("/api/jobs", filters),
  job: (id) => get(`/api/jobs/${Number(id)}`),
  runner: (id) => get(`/api/runners/${encodeURIComponent(String(id))}`),
  cancel: (id) => post(`/api/jobs/${Number(id)}/cancel`),
  resubmit: (id) => post(`/api/jobs/${Number(id)}/resubmit`),
  session: () => get("/session"),
  signIn: (token) => post("/session", { token }),
  signOut: () => del("/session"),
};

export function logPath(id) {
  return `/api/jobs/${Number(id)}/log`;
}
