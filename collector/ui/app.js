// The shell: routes (History API), the time range, auto-refresh and the
// theme. Each view gets a context and returns an `update()` the shell calls
// when the range changes or the refresh timer fires.

import { h, fill } from './dom.js';
import { parseDuration } from './format.js';
import { overview, host, probes, explore, notFound } from './pages.js';
import { alerts } from './alerts.js';
import { sloList, sloDetail } from './slos.js';

const PRESETS = ['5m', '15m', '30m', '1h', '3h', '6h', '12h', '24h', '2d', '7d', '30d', '90d'];
const REFRESH = [['off', 0], ['10s', 10], ['30s', 30], ['1m', 60], ['5m', 300]];

const main = document.getElementById('main');
const rangeSel = document.getElementById('range');
const customBox = document.getElementById('custom');
const fromIn = document.getElementById('from');
const toIn = document.getElementById('to');
const refreshSel = document.getElementById('refresh');
const themeBtn = document.getElementById('theme');

for (const p of PRESETS) rangeSel.append(h('option', { value: p, text: `Last ${p}` }));
rangeSel.append(h('option', { value: 'custom', text: 'Custom…' }));
for (const [label, sec] of REFRESH) refreshSel.append(h('option', { value: String(sec), text: label === 'off' ? 'Refresh off' : `Every ${label}` }));

/** The time range: a preset (relative to now) or fixed from/to. */
const range = { preset: '1h', from: 0, to: 0 };

function readUrl() {
  const q = new URLSearchParams(location.search);
  const r = q.get('range');
  const from = Date.parse(q.get('from') || '');
  const to = Date.parse(q.get('to') || '');
  if (Number.isFinite(from) && Number.isFinite(to) && from < to) {
    Object.assign(range, { preset: 'custom', from: from / 1000, to: to / 1000 });
  } else if (r && Number.isFinite(parseDuration(r))) {
    Object.assign(range, { preset: r, from: 0, to: 0 });
  }
  if (!PRESETS.includes(range.preset) && range.preset !== 'custom') {
    rangeSel.append(h('option', { value: range.preset, text: `Last ${range.preset}` }));
  }
  rangeSel.value = range.preset;
  customBox.hidden = range.preset !== 'custom';
}

const localInput = (t) => {
  const d = new Date(t * 1000 - new Date(t * 1000).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
};

/** The window to show now: start, end, step (s) for about `points` points. */
function timeWindow(points = 240) {
  let start;
  let end;
  if (range.preset === 'custom') { start = range.from; end = range.to; } else {
    end = Math.floor(Date.now() / 1000);
    start = end - parseDuration(range.preset);
  }
  const step = Math.max(1, Math.ceil((end - start) / points));
  return { start, end, step, span: end - start };
}

function searchString() {
  const q = new URLSearchParams(location.search);
  q.delete('range'); q.delete('from'); q.delete('to');
  if (range.preset === 'custom') {
    q.set('from', new Date(range.from * 1000).toISOString());
    q.set('to', new Date(range.to * 1000).toISOString());
  } else if (range.preset !== '1h') q.set('range', range.preset);
  const str = q.toString();
  return str ? `?${str}` : '';
}

let current = null;
let generation = 0;

async function runUpdate() {
  if (!current) return;
  const g = generation;
  try {
    await current();
  } catch (e) {
    if (g === generation) main.append(h('p', { class: 'note error', role: 'alert', text: `This view failed: ${e.message}` }));
  }
}

function route() {
  generation++;
  const g = generation;
  // Undecoded: each view decodes its own part (a host name may hold '/').
  const path = location.pathname;
  const ctx = {
    main: fill(main),
    window: timeWindow,
    alive: () => g === generation,
    setQuery(params) {
      const q = new URLSearchParams(location.search);
      for (const [k, v] of Object.entries(params)) { if (v) q.set(k, v); else q.delete(k); }
      const str = q.toString();
      history.replaceState(null, '', location.pathname + (str ? `?${str}` : ''));
    },
    param: (k) => new URLSearchParams(location.search).get(k),
    navigate,
  };
  let m;
  let view;
  if (path === '/' || path === '') view = overview(ctx);
  else if ((m = /^\/hosts\/(.+)$/.exec(path))) view = host(ctx, m[1]);
  else if (path === '/probes') view = probes(ctx);
  else if (path === '/slos') view = sloList(ctx);
  else if ((m = /^\/slos\/(.+)$/.exec(path))) view = sloDetail(ctx, m[1]);
  else if (path === '/alerts') view = alerts(ctx);
  else if (path === '/explore') view = explore(ctx);
  else view = notFound(ctx, 'page', path);
  for (const a of document.querySelectorAll('nav.top a')) {
    const base = a.getAttribute('href');
    const on = base === '/' ? path === '/' || path.startsWith('/hosts/') : path.startsWith(base);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  current = view;
  runUpdate();
}

function navigate(href) {
  const u = new URL(href, location.href);
  const keep = searchString();
  history.pushState(null, '', u.pathname + (u.search || keep));
  route();
  main.focus({ preventScroll: true });
}

document.addEventListener('click', (e) => {
  const a = e.target.closest && e.target.closest('a[data-nav]');
  if (!a || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
  e.preventDefault();
  navigate(a.getAttribute('href'));
});
window.addEventListener('popstate', () => { readUrl(); route(); });

function rangeChanged() {
  history.replaceState(null, '', location.pathname + searchString());
  runUpdate();
}

rangeSel.addEventListener('change', () => {
  if (rangeSel.value === 'custom') {
    const w = timeWindow();
    fromIn.value = localInput(w.start);
    toIn.value = localInput(w.end);
    customBox.hidden = false;
    fromIn.focus();
    return;
  }
  customBox.hidden = true;
  range.preset = rangeSel.value;
  rangeChanged();
});
document.getElementById('apply').addEventListener('click', () => {
  const f = new Date(fromIn.value).getTime() / 1000;
  const t = new Date(toIn.value).getTime() / 1000;
  if (!(f < t)) { toIn.setCustomValidity('The end must be after the start.'); toIn.reportValidity(); return; }
  toIn.setCustomValidity('');
  Object.assign(range, { preset: 'custom', from: f, to: t });
  rangeChanged();
});

let timer = null;
refreshSel.addEventListener('change', () => {
  clearInterval(timer);
  const sec = +refreshSel.value;
  localStorage.setItem('nines-refresh', String(sec));
  if (sec > 0) timer = setInterval(() => { if (!document.hidden) runUpdate(); }, sec * 1000);
});
refreshSel.value = localStorage.getItem('nines-refresh') || '30';
refreshSel.dispatchEvent(new Event('change'));

function setTheme(t) {
  document.documentElement.dataset.theme = t;
  themeBtn.setAttribute('aria-pressed', String(t === 'dark'));
  themeBtn.textContent = t === 'dark' ? 'Light theme' : 'Dark theme';
}
setTheme(localStorage.getItem('nines-theme') || (matchMedia('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'));
themeBtn.addEventListener('click', () => {
  const t = document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark';
  localStorage.setItem('nines-theme', t);
  setTheme(t);
});

readUrl();
route();
