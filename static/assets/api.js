// The admin HTTP API (same origin, JSON) and the session token.

const TOKEN_KEY = 'access_token';

/** An API call that failed: `status` 0 means the server could not be reached. */
export class ApiError extends Error {
  constructor(status, body = {}, headers = null) {
    super(body.error ?? body.detail ?? body.message ?? `HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    /** The server's own message, if it sent one. */
    this.serverMessage = body.error ?? body.detail ?? body.message ?? null;
    /** The form field the error is about (validation and conflict errors). */
    this.field = body.field ?? null;
    const retry = Number.parseInt(headers?.get('Retry-After') ?? '', 10);
    this.retryAfter = Number.isFinite(retry) ? retry : null;
  }
}

/** A 401 on an authenticated call: the session is over and the login screen is shown. */
export class SessionExpiredError extends ApiError {
  constructor(body, headers) {
    super(401, body, headers);
    this.name = 'SessionExpiredError';
  }
}

export const session = {
  token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  save(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
  },
};

let onSessionExpired = () => {};
/** Called once for every authenticated call answered with 401. */
export function setSessionExpiredHandler(fn) {
  onSessionExpired = fn;
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return { error: text.slice(0, 200) };
  }
}

async function request(method, path, { body, auth = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (auth) headers.Authorization = `Bearer ${session.token() ?? ''}`;
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, {});
  }
  const data = await readBody(response);
  if (response.ok) return data;
  if (response.status === 401 && auth) {
    session.clear();
    onSessionExpired();
    throw new SessionExpiredError(data, response.headers);
  }
  throw new ApiError(response.status, data, response.headers);
}

const services = '/admin/proxy-configs';
const keys = '/admin/keys';

export const api = {
  appConfig: () => request('GET', '/admin/app-config', { auth: false }),
  login: (username, password) =>
    request('POST', '/admin/login', { auth: false, body: { username, password } }),

  listServices: () => request('GET', services),
  getService: (id) => request('GET', `${services}/${id}`),
  createService: (body) => request('POST', services, { body }),
  updateService: (id, body) => request('PUT', `${services}/${id}`, { body }),
  setServiceActive: (id, isActive) =>
    request('PUT', `${services}/${id}/status`, { body: { is_active: isActive } }),
  deleteService: (id) => request('DELETE', `${services}/${id}`),

  listKeys: (id, { reveal = false } = {}) =>
    request('GET', `${services}/${id}/keys${reveal ? '?reveal=true' : ''}`),
  // One page: {keys, next_cursor, total?}; query = {limit, cursor, state, q, sort, total}.
  pageKeys: (id, query) => {
    const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null && v !== ''));
    return request('GET', `${services}/${id}/keys?${params}`);
  },
  bulkKeys: (id, body) => request('POST', `${services}/${id}/keys/bulk`, { body }),
  getJob: (jobId) => request('GET', `/admin/jobs/${jobId}`),
  addKey: (id, keyValue) =>
    request('POST', `${services}/${id}/keys`, { body: { key_value: keyValue, is_active: true } }),
  importKeys: (id, list) => request('POST', `${services}/${id}/keys/batch`, { body: { keys: list } }),
  clearKeys: (id) => request('DELETE', `${services}/${id}/keys`),

  setKeyActive: (keyId, isActive) => request('PATCH', `${keys}/${keyId}`, { body: { is_active: isActive } }),
  deleteKey: (keyId) => request('DELETE', `${keys}/${keyId}`),
  resetKey: (keyId) => request('POST', `${keys}/${keyId}/reset`),
  testKey: (keyId) => request('POST', `${keys}/${keyId}/test`),

  listClientKeys: () => request('GET', '/admin/client-keys'),
  createClientKey: (body) => request('POST', '/admin/client-keys', { body }),
  updateClientKey: (id, body) => request('PATCH', `/admin/client-keys/${id}`, { body }),
  deleteClientKey: (id) => request('DELETE', `/admin/client-keys/${id}`),

  usage: (params) => request('GET', `/admin/usage?${new URLSearchParams(params)}`),
  requests: (params) => request('GET', `/admin/requests?${new URLSearchParams(params)}`),
};
