// Units and times as people read them.

const SI = ['', 'k', 'M', 'G', 'T', 'P'];
const IEC = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

function trim(x) {
  const a = Math.abs(x);
  const d = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return x.toFixed(d).replace(/\.0+$|(\.\d*[1-9])0+$/, '$1');
}

function scaled(v, base, names, suffix) {
  let i = 0;
  let x = v;
  while (Math.abs(x) >= base && i < names.length - 1) { x /= base; i++; }
  return `${trim(x)}${names[i] ? (suffix ? ' ' : '') + names[i] : ''}${suffix}`;
}

function duration(v) {
  const a = Math.abs(v);
  if (a === 0) return '0 s';
  if (a < 1e-6) return `${trim(v * 1e9)} ns`;
  if (a < 1e-3) return `${trim(v * 1e6)} µs`;
  if (a < 1) return `${trim(v * 1e3)} ms`;
  if (a < 120) return `${trim(v)} s`;
  if (a < 7200) return `${trim(v / 60)} min`;
  if (a < 172800) return `${trim(v / 3600)} h`;
  return `${trim(v / 86400)} d`;
}

/**
 * A value in its unit: bytes, bytes/s, seconds, percent (0-100),
 * ratio (0-1 shown as percent), reqps, ops, or anything else as a plain
 * number with SI prefixes.
 */
export function fmt(v, unit) {
  if (v === null || v === undefined || Number.isNaN(v)) return '–';
  if (!Number.isFinite(v)) return v > 0 ? '+Inf' : '-Inf';
  switch (unit) {
    case 'bytes': return scaled(v, 1024, IEC, '').replace(/^(-?[\d.]+)(\D)/, '$1 $2');
    case 'bytes/s': return `${fmt(v, 'bytes')}/s`;
    case 'seconds': return duration(v);
    case 'percent': return `${trim(v)}%`;
    case 'ratio': return `${trim(v * 100)}%`;
    case 'reqps': return `${scaled(v, 1000, SI, '')} req/s`;
    case 'ops': return `${scaled(v, 1000, SI, '')}/s`;
    default: return scaled(v, 1000, SI, '');
  }
}

const pad = (n) => String(n).padStart(2, '0');

/** A unix time (seconds) as local `YYYY-MM-DD HH:MM:SS`. */
export function fmtTime(t) {
  const d = new Date(t * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** A short axis label for time `t`, given the span shown. */
export function fmtTick(t, span) {
  const d = new Date(t * 1000);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  if (span <= 600) return `${hm}:${pad(d.getSeconds())}`;
  if (span <= 2 * 86400) return hm;
  return `${pad(d.getMonth() + 1)}-${pad(d.getDate())}${span <= 10 * 86400 ? ' ' + hm : ''}`;
}

/** Seconds as a Prometheus duration (`90s` -> `1m30s`). */
export function promDuration(sec) {
  let n = Math.max(1, Math.round(sec));
  let out = '';
  for (const [u, k] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]]) {
    if (n >= k) { out += `${Math.floor(n / k)}${u}`; n %= k; }
  }
  return out;
}

/** Parses `5m`, `1h30m`, `90d` into seconds; NaN when not a duration. */
export function parseDuration(text) {
  const m = /^((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?$/.exec(text || '');
  if (!m || !text) return NaN;
  return (+(m[2] || 0)) * 86400 + (+(m[4] || 0)) * 3600 + (+(m[6] || 0)) * 60 + (+(m[8] || 0));
}

/** How long ago `t` (unix seconds) was, as `3 min ago`. */
export function ago(t) {
  const d = Date.now() / 1000 - t;
  return d < 0 ? `in ${duration(-d)}` : `${duration(d)} ago`;
}
