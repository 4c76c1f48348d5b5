// SLOs: the list with budgets and burn rates, and one SLO's burn-down,
// burn rates, alerts and availability report (with CSV download).

import { h, fill, link, note } from './dom.js';
import { fmt, fmtTime, parseDuration } from './format.js';
import { get, queryRange, quote, ApiError } from './api.js';
import { lineChart, seriesOf } from './chart.js';
import { notFound } from './pages.js';

const WINDOWS = ['5m', '30m', '1h', '2h', '6h', '1d', '3d'];

const pct = (r) => fmt(r, 'ratio');

function budgetBar(remaining) {
  const bar = h('span', { class: 'budget', role: 'meter', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': Number.isFinite(remaining) ? String(Math.round(remaining * 100)) : '0' },
    h('span', { class: 'fill' }), h('span', { class: 'num', text: pct(remaining) }));
  const f = bar.querySelector('.fill');
  f.style.width = `${Math.max(0, Math.min(1, remaining || 0)) * 100}%`;
  if (remaining < 0.25) f.classList.add('low');
  return bar;
}

function alertStates(st) {
  const list = (st && st.alerts) || [];
  const hot = list.filter((a) => a.state !== 'inactive');
  if (hot.length === 0) return h('span', { class: 'state inactive', text: 'ok' });
  return hot.map((a) => h('span', { class: `state ${a.state}`, text: `${a.severity || a.name}: ${a.state}` }));
}

/** The list of SLOs. */
export function sloList(ctx) {
  document.title = 'SLOs · nines';
  ctx.main.append(h('h1', { text: 'Service level objectives' }));
  const box = h('div');
  ctx.main.append(box);
  return async () => {
    let list;
    try {
      list = await get('/api/v1/slos');
    } catch (e) {
      fill(box, note('error', `SLOs: ${e.message}`));
      return;
    }
    if (!ctx.alive()) return;
    if (list.length === 0) { fill(box, note('empty', 'No SLO is defined. Add [[slo]] to the collector config or POST /api/v1/slos.')); return; }
    fill(box, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['SLO', 'Objective', 'Window', 'Indicator now', 'Error budget left', 'Burn 1h', 'Burn 6h', 'Burn 1d', 'Alerts']
        .map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, list.map((x) => {
        const st = x.status || {};
        const b = st.burn_rates || {};
        return h('tr', { 'data-slo': x.name },
          h('td', {}, link(`/slos/${encodeURIComponent(x.name)}`, x.name), x.description ? h('div', { class: 'sub', text: x.description }) : null),
          h('td', { class: 'num', text: `${x.objective}%` }),
          h('td', { text: x.window }),
          h('td', { class: 'num', text: st.sli === null || st.sli === undefined ? 'no data' : pct(st.sli) }),
          h('td', {}, budgetBar(st.budget_remaining_ratio)),
          ['1h', '6h', '1d'].map((k) => h('td', { class: 'num', text: fmt(b[k]) })),
          h('td', {}, alertStates(st)));
      })))));
  };
}

function windowSeconds(slo) {
  const d = parseDuration(slo.window);
  if (Number.isFinite(d)) return d;
  return slo.window === 'calendar_quarter' ? 92 * 86400 : 31 * 86400;
}

/** One SLO. */
export function sloDetail(ctx, raw) {
  let name;
  try { name = decodeURIComponent(raw); } catch { name = raw; }
  let parts = null;
  return async () => {
    let slo;
    try {
      slo = await get(`/api/v1/slos/${encodeURIComponent(name)}`);
    } catch (e) {
      if (!ctx.alive()) return;
      fill(ctx.main);
      if (e instanceof ApiError && e.status === 404 && e.type === 'not_found' && !/no such endpoint/.test(e.message)) notFound(ctx, 'SLO', name);
      else ctx.main.append(note('error', `SLO ${name}: ${e.message}`));
      parts = null;
      return;
    }
    if (!ctx.alive()) return;
    if (!parts) {
      fill(ctx.main);
      document.title = `${name} · SLOs · nines`;
      const head = h('div');
      const grid = h('div', { class: 'panels' });
      const report = h('section', { class: 'block' });
      ctx.main.append(h('h1', {}, link('/slos', 'SLOs'), ' / ', name), head, grid, report);
      parts = {
        head,
        budget: lineChart(grid, { title: 'Error budget remaining over the window', unit: 'ratio' }),
        burn: lineChart(grid, { title: 'Burn rate', unit: '' }),
        sli: lineChart(grid, { title: 'Indicator (SLI) over the window', unit: 'ratio' }),
      };
      reportForm(report, name);
    }
    const st = slo.status || {};
    const b = st.burn_rates || {};
    fill(parts.head,
      slo.description ? h('p', { text: slo.description }) : null,
      h('dl', { class: 'facts' },
        h('dt', { text: 'Objective' }), h('dd', { text: `${slo.objective}% over ${slo.window}` }),
        h('dt', { text: 'Indicator' }), h('dd', { class: 'mono', text: JSON.stringify(slo.indicator) }),
        h('dt', { text: 'Indicator now' }), h('dd', { text: st.sli === null || st.sli === undefined ? 'no data' : pct(st.sli) }),
        h('dt', { text: 'Error budget left' }), h('dd', {}, budgetBar(st.budget_remaining_ratio)),
        h('dt', { text: 'Budget runs out' }), h('dd', { text: st.exhaustion_seconds ? `in ${fmt(st.exhaustion_seconds, 'seconds')}` : 'not at this rate' }),
        h('dt', { text: 'Missing data' }), h('dd', { text: `${pct(st.missing_ratio)} (${slo.missing_data})` }),
        h('dt', { text: 'Alerts' }), h('dd', {}, alertStates(st))),
      h('table', { class: 'burn' }, h('caption', { text: 'Burn rates (1 = spending the budget exactly over the window)' }),
        h('tr', {}, WINDOWS.map((k) => h('th', { scope: 'col', text: k }))),
        h('tr', {}, WINDOWS.map((k) => h('td', { class: 'num', text: fmt(b[k]) })))));
    const end = Math.floor(Date.now() / 1000);
    const span = windowSeconds(slo);
    const step = Math.max(60, Math.ceil(span / 240));
    const sel = `{slo=${quote(name)}}`;
    const w = ctx.window();
    const draw = async (chart, expr, legend, s, e, stp) => {
      try {
        const r = await queryRange(expr, s, e, stp);
        if (ctx.alive()) chart.set({ series: seriesOf(r.result, legend), start: s, end: e, step: stp });
      } catch (err) { if (ctx.alive()) chart.error(err.message); }
    };
    await Promise.all([
      draw(parts.budget, `nines_slo_error_budget_remaining_ratio${sel}`, 'remaining', end - span, end, step),
      draw(parts.sli, `nines_slo_sli_ratio${sel}`, 'SLI', end - span, end, step),
      draw(parts.burn, `nines_slo_burn_rate${sel}`, '{{window}}', w.start, w.end, w.step),
    ]);
  };
}

const dateInput = (t) => new Date(t * 1000).toISOString().slice(0, 10);

function reportForm(box, name) {
  const now = Math.floor(Date.now() / 1000);
  const from = h('input', { type: 'date', value: dateInput(now - 30 * 86400), 'aria-label': 'Report start' });
  const to = h('input', { type: 'date', value: dateInput(now + 86400), 'aria-label': 'Report end' });
  const csv = h('a', { class: 'button', download: `${name}-availability.csv`, text: 'Download CSV' });
  const out = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'report-form' }, h('label', {}, 'From ', from), h('label', {}, 'To ', to),
    h('button', { type: 'submit', text: 'Show report' }), csv);
  box.append(h('h2', { text: 'Availability report' }), form, out);
  const params = () => {
    const s = Date.parse(from.value) / 1000;
    const e = Math.min(Date.parse(to.value) / 1000, Math.floor(Date.now() / 1000));
    return { start: String(s), end: String(e) };
  };
  const setCsv = () => {
    const p = params();
    csv.setAttribute('href', `/api/v1/slos/${encodeURIComponent(name)}/report?${new URLSearchParams({ ...p, format: 'csv' })}`);
  };
  from.addEventListener('change', setCsv);
  to.addEventListener('change', setCsv);
  setCsv();
  const show = async () => {
    const p = params();
    if (!(+p.start < +p.end)) { fill(out, note('error', 'The report needs a start before its end.')); return; }
    try {
      const r = await get(`/api/v1/slos/${encodeURIComponent(name)}/report`, { ...p, format: 'json' });
      const inc = r.incidents || [];
      fill(out, h('dl', { class: 'facts' },
        h('dt', { text: 'Availability' }), h('dd', { text: fmt(r.availability, 'ratio') }),
        h('dt', { text: 'Downtime' }), h('dd', { text: `${fmt(r.downtime_minutes)} min` }),
        h('dt', { text: 'Budget spent' }), h('dd', { text: fmt(r.budget_spent ?? r.budget_spent_ratio, 'ratio') })),
      inc.length === 0 ? note('empty', 'No incidents in this period.') : h('table', {},
        h('caption', { text: `${inc.length} incidents` }),
        h('thead', {}, h('tr', {}, ['Start', 'End', 'Duration'].map((t) => h('th', { scope: 'col', text: t })))),
        h('tbody', {}, inc.map((i) => h('tr', {},
          h('td', { text: fmtTime(Date.parse(i.start) / 1000 || i.start) }),
          h('td', { text: i.end ? fmtTime(Date.parse(i.end) / 1000 || i.end) : 'ongoing' }),
          h('td', { text: fmt(i.duration_seconds, 'seconds') }))))));
    } catch (e) { fill(out, note('error', `Report: ${e.message}`)); }
  };
  form.addEventListener('submit', (e) => { e.preventDefault(); show(); });
  show();
}
