// Line charts in SVG: axes, legend, crosshair with hover values, keyboard
// stepping, redrawn when their box changes size. Values are written as text.

import { h, s, fill } from './dom.js';
import { fmt, fmtTime, fmtTick } from './format.js';
import { num } from './api.js';

const HEIGHT = 190;
const PAD = { l: 64, r: 12, t: 10, b: 22 };
const COLORS = 10;

function niceStep(span, n) {
  const raw = span / n;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
}

const TIME_STEPS = [1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800,
  21600, 43200, 86400, 172800, 604800];

/** Legend text from a template like `{{mode}}` or the label set. */
export function legendOf(metric, template) {
  if (template) return template.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, k) => metric[k] ?? '');
  const parts = Object.entries(metric).filter(([k]) => k !== '__name__').map(([k, v]) => `${k}="${v}"`);
  return `${metric.__name__ || ''}{${parts.join(', ')}}`;
}

/** Matrix rows (`{metric, values}`) as chart series. */
export function seriesOf(result, template) {
  return (result || []).map((r) => ({
    name: legendOf(r.metric, template),
    points: r.values.map(([t, v]) => [t, num(v)]),
  }));
}

/**
 * A chart in `parent`. Call `set({series, start, end, step})` with data;
 * `error(text)` to show a failure in place of the plot.
 */
export function lineChart(parent, { title, unit }) {
  const plot = h('div', { class: 'plot', tabindex: '0', role: 'img', 'aria-label': `${title} chart` });
  const legend = h('div', { class: 'legend' });
  const tip = h('div', { class: 'tip', hidden: true, role: 'status' });
  const box = h('figure', { class: 'chart' }, h('figcaption', { text: title }), plot, tip, legend);
  parent.append(box);
  let data = null;
  let hidden = new Set();
  let cursor = -1;
  let geo = null;

  function draw() {
    if (!data) return;
    const w = Math.max(200, plot.clientWidth || 400);
    const { start, end, step } = data;
    const shown = data.series.filter((x) => !hidden.has(x.name));
    let lo = Infinity;
    let hi = -Infinity;
    for (const x of shown) for (const [, v] of x.points) if (Number.isFinite(v)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    if (lo === Infinity) { lo = 0; hi = 1; }
    if (lo > 0) lo = 0;
    if (hi === lo) hi = lo + 1;
    const ys = niceStep(hi - lo, 4);
    hi = Math.ceil(hi / ys) * ys;
    lo = Math.floor(lo / ys) * ys;
    const iw = w - PAD.l - PAD.r;
    const ih = HEIGHT - PAD.t - PAD.b;
    const X = (t) => PAD.l + ((t - start) / (end - start || 1)) * iw;
    const Y = (v) => PAD.t + (1 - (v - lo) / (hi - lo)) * ih;
    geo = { X, Y, w, start, end, step };
    const g = s('svg', { width: w, height: HEIGHT, viewBox: `0 0 ${w} ${HEIGHT}`, 'aria-hidden': 'true' });
    for (let v = lo; v <= hi + ys / 2; v += ys) {
      g.append(s('line', { class: 'grid', x1: PAD.l, x2: w - PAD.r, y1: Y(v), y2: Y(v) }));
      g.append(s('text', { class: 'axis', x: PAD.l - 6, y: Y(v) + 4, 'text-anchor': 'end', text: fmt(v, unit) }));
    }
    const span = end - start;
    const ts = TIME_STEPS.find((x) => span / x <= Math.max(2, iw / 90)) || 604800;
    const off = new Date().getTimezoneOffset() * 60;
    for (let t = Math.ceil((start - off) / ts) * ts + off; t <= end; t += ts) {
      g.append(s('text', { class: 'axis', x: X(t), y: HEIGHT - 6, 'text-anchor': 'middle', text: fmtTick(t, span) }));
    }
    data.series.forEach((x, i) => {
      if (hidden.has(x.name)) return;
      let d = '';
      let prev = null;
      for (const [t, v] of x.points) {
        if (!Number.isFinite(v)) { prev = null; continue; }
        const gap = prev === null || t - prev > step * 1.5;
        d += `${gap ? 'M' : 'L'}${X(t).toFixed(1)},${Y(v).toFixed(1)}`;
        prev = t;
      }
      if (x.points.length === 1 || d.indexOf('L') < 0) {
        for (const [t, v] of x.points) if (Number.isFinite(v)) g.append(s('circle', { class: `c${i % COLORS}`, cx: X(t), cy: Y(v), r: 2 }));
      }
      g.append(s('path', { class: `line c${i % COLORS}`, d }));
    });
    g.append(s('line', { class: 'cross', x1: 0, x2: 0, y1: PAD.t, y2: HEIGHT - PAD.b, visibility: 'hidden' }));
    fill(plot, g);
    if (cursor >= 0) showAt(cursor);
  }

  function showAt(t) {
    if (!geo || !data) return;
    cursor = t;
    const line = plot.querySelector('.cross');
    if (line) { line.setAttribute('x1', geo.X(t)); line.setAttribute('x2', geo.X(t)); line.setAttribute('visibility', 'visible'); }
    const rows = [];
    data.series.forEach((x, i) => {
      if (hidden.has(x.name)) return;
      const p = x.points.find(([pt]) => Math.abs(pt - t) < data.step / 2);
      if (p && Number.isFinite(p[1])) rows.push([p[1], x.name, i]);
    });
    rows.sort((a, b) => b[0] - a[0]);
    fill(tip, h('div', { class: 'tip-time', text: fmtTime(t) }),
      rows.slice(0, 12).map(([v, n, i]) => h('div', {}, h('span', { class: `swatch c${i % COLORS}` }), `${n}: `, h('b', { text: fmt(v, unit) }))),
      rows.length > 12 ? h('div', { text: `… ${rows.length - 12} more` }) : null,
      rows.length === 0 ? h('div', { text: 'no value' }) : null);
    tip.hidden = false;
    const x = geo.X(t);
    tip.style.left = `${Math.min(Math.max(0, x + 12), Math.max(0, geo.w - 220))}px`;
  }

  function hide() {
    cursor = -1;
    tip.hidden = true;
    const line = plot.querySelector('.cross');
    if (line) line.setAttribute('visibility', 'hidden');
  }

  function snap(t) {
    const { start, step, end } = geo;
    return Math.min(end, Math.max(start, start + Math.round((t - start) / step) * step));
  }

  plot.addEventListener('pointermove', (e) => {
    if (!geo) return;
    const r = plot.getBoundingClientRect();
    const frac = (e.clientX - r.left - PAD.l) / (geo.w - PAD.l - PAD.r);
    showAt(snap(geo.start + frac * (geo.end - geo.start)));
  });
  plot.addEventListener('pointerleave', hide);
  plot.addEventListener('blur', hide);
  plot.addEventListener('keydown', (e) => {
    if (!geo) return;
    const t = cursor < 0 ? geo.end : cursor;
    if (e.key === 'ArrowLeft') showAt(snap(t - geo.step));
    else if (e.key === 'ArrowRight') showAt(snap(t + geo.step));
    else if (e.key === 'Escape') hide();
    else return;
    e.preventDefault();
  });
  new ResizeObserver(() => draw()).observe(plot);

  function drawLegend() {
    fill(legend, data.series.slice(0, 40).map((x, i) => h('button', {
      type: 'button', class: 'key', 'aria-pressed': String(!hidden.has(x.name)),
      onclick: () => { if (hidden.has(x.name)) hidden.delete(x.name); else hidden.add(x.name); drawLegend(); draw(); },
    }, h('span', { class: `swatch c${i % COLORS}` }), x.name)),
    data.series.length > 40 ? h('span', { text: `… ${data.series.length - 40} more series` }) : null);
  }

  return {
    el: box,
    set(d) {
      data = d;
      hidden = new Set([...hidden].filter((n) => d.series.some((x) => x.name === n)));
      box.classList.remove('failed');
      if (d.series.length === 0) {
        geo = null;
        fill(plot, h('p', { class: 'note empty', text: 'No data in this time range.' }));
        fill(legend);
        return;
      }
      drawLegend();
      draw();
    },
    error(text) {
      data = null;
      geo = null;
      box.classList.add('failed');
      fill(plot, h('p', { class: 'note error', role: 'alert', text }));
      fill(legend);
    },
  };
}

/** A small inline line of values (no axes), for tables. */
export function sparkline(values, w = 96, hgt = 22) {
  const pts = values.filter(([, v]) => Number.isFinite(v));
  const g = s('svg', { class: 'spark', width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, 'aria-hidden': 'true' });
  if (pts.length < 2) return g;
  const t0 = pts[0][0];
  const t1 = pts[pts.length - 1][0];
  let hi = Math.max(...pts.map((p) => p[1]));
  const lo = Math.min(0, ...pts.map((p) => p[1]));
  if (hi === lo) hi = lo + 1;
  const d = pts.map(([t, v], i) => `${i ? 'L' : 'M'}${(((t - t0) / (t1 - t0 || 1)) * (w - 2) + 1).toFixed(1)},${((1 - (v - lo) / (hi - lo)) * (hgt - 2) + 1).toFixed(1)}`).join('');
  g.append(s('path', { d }));
  return g;
}
