// The collector's HTTP API: the Prometheus query API and the management API.

/** A failed call: the API's message and errorType, and the HTTP status. */
export class ApiError extends Error {
  constructor(message, type, status) {
    super(message);
    this.type = type;
    this.status = status;
  }
}

async function call(method, path, params, body) {
  const qs = params ? `?${new URLSearchParams(params)}` : '';
  const init = { method, headers: { accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path + qs, init);
  } catch (e) {
    throw new ApiError(`cannot reach the collector: ${e.message}`, 'unavailable', 0);
  }
  let j = null;
  try { j = await r.json(); } catch { /* not JSON */ }
  if (!r.ok || (j && j.status === 'error')) {
    const msg = (j && j.error) || `${method} ${path} answered ${r.status}`;
    throw new ApiError(msg, (j && j.errorType) || 'http', r.status);
  }
  return j ? j.data : null;
}

/** Query-string pairs, with repeated keys for arrays. */
function pairs(obj) {
  const p = [];
  for (const [k, v] of Object.entries(obj)) {
    if (Array.isArray(v)) for (const x of v) p.push([k, x]);
    else if (v !== undefined) p.push([k, String(v)]);
  }
  return p;
}

/** An instant query; returns `{resultType, result}`. */
export const query = (expr, time) => call('GET', '/api/v1/query', pairs({ query: expr, time }));

/** A range query; returns `{resultType, result}` (a matrix). */
export const queryRange = (expr, start, end, step) =>
  call('GET', '/api/v1/query_range', pairs({ query: expr, start, end, step }));

/** Values of one label among series matching `match`. */
export const labelValues = (name, match, start, end) =>
  call('GET', `/api/v1/label/${encodeURIComponent(name)}/values`, pairs({ 'match[]': match, start, end }));

/** GET a management API path. */
export const get = (path, params) => call('GET', path, params && pairs(params));
/** POST JSON. */
export const post = (path, body) => call('POST', path, null, body);
/** DELETE. */
export const del = (path) => call('DELETE', path);

/** A string as a PromQL string literal. */
export function quote(v) {
  return `"${String(v).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}

/** A sample value from the API (a string) as a number. */
export const num = (v) => (v === '+Inf' ? Infinity : v === '-Inf' ? -Infinity : parseFloat(v));

/** A vector result as a Map from `key(metric)` to its value. */
export function byKey(result, key) {
  const m = new Map();
  for (const r of result || []) m.set(key(r.metric), num(r.value[1]));
  return m;
}
