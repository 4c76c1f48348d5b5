// Views: the host overview, one host's dashboards, probes, Explore and the
// not-found page.

import { h, fill, link, note } from './dom.js';
import { fmt, fmtTime, promDuration, ago } from './format.js';
import { query, queryRange, labelValues, quote, num, byKey, ApiError } from './api.js';
import { lineChart, seriesOf, sparkline } from './chart.js';

const HIDDEN_LABELS = new Set(['__name__', 'job', 'instance']);
const STATUS_ORDER = { down: 0, nodata: 1, up: 2 };
const STATUS_TEXT = { up: 'up', down: 'down', nodata: 'no data' };

/** A page heading and the document title. */
function title(ctx, text, ...extra) {
  document.title = `${text} · nines`;
  ctx.main.append(h('h1', {}, text, ...extra));
}

/** The range-dependent rate window: at least 1m, at least two steps. */
export const rateWindow = (w) => promDuration(Math.max(60, 2 * w.step));

/** The not-found view for an unknown page, host or SLO. */
export function notFound(ctx, kind, name) {
  title(ctx, 'Not found');
  ctx.main.append(h('div', { class: 'notfound', role: 'alert' },
    h('p', {}, `No ${kind} named `, h('code', { text: name }), ' is known to this collector.'),
    h('p', {}, link('/', 'Back to all hosts'))));
  return async () => {};
}

// ---------------------------------------------------------------- overview

const ROW_H = 40;

/**
 * Every host with its status. Status, precisely: `up` when the latest
 * `up{job="node"}` sample (within the 5 minute lookback) is 1, `down` when
 * it is 0, `no data` when the host has `job="node"` series in the range but
 * no `up` sample in the last 5 minutes.
 */
export function overview(ctx) {
  title(ctx, 'Hosts');
  const summary = h('p', { class: 'summary', role: 'status' });
  const text = h('input', { type: 'search', placeholder: 'Filter by name or label value', 'aria-label': 'Filter hosts by text', value: ctx.param('q') || '' });
  const labelSel = h('select', { 'aria-label': 'Filter hosts by label' });
  const statusSel = h('select', { 'aria-label': 'Filter hosts by status' },
    h('option', { value: '', text: 'Any status' }),
    ...Object.entries(STATUS_TEXT).map(([v, t]) => h('option', { value: v, text: t })));
  const head = h('div', { class: 'row head', role: 'row' });
  const body = h('div', { class: 'rows', role: 'rowgroup' });
  const scroller = h('div', { class: 'scroller' }, body);
  const table = h('div', { class: 'hosts', role: 'table', 'aria-label': 'Hosts' }, head, scroller);
  ctx.main.append(h('div', { class: 'filters' }, text, labelSel, statusSel), summary, table);

  const cols = [
    ['status', 'Status'], ['instance', 'Host'], ['cpu', 'CPU'], ['mem', 'Memory'],
    ['disk', 'Disk'], ['conns', 'Connections'], ['spark', 'CPU over range'],
  ];
  let sortBy = 'status';
  let asc = true;
  for (const [k, label] of cols) {
    const b = h('button', { type: 'button', class: 'sort', text: label, onclick: () => { asc = sortBy === k ? !asc : true; sortBy = k; show(); } });
    head.append(h('div', { role: 'columnheader', class: `col-${k}` }, k === 'spark' ? label : b));
  }
  let hosts = [];
  let visible = [];
  // Rows already built since the data last changed, by host.
  let built = new Map();

  function matches(x) {
    const q = text.value.trim().toLowerCase();
    if (statusSel.value && x.status !== statusSel.value) return false;
    if (labelSel.value) {
      const [k, v] = JSON.parse(labelSel.value);
      if (x.labels[k] !== v) return false;
    }
    if (!q) return true;
    return x.instance.toLowerCase().includes(q) || Object.values(x.labels).some((v) => v.toLowerCase().includes(q));
  }

  function cmp(a, b) {
    const key = (x) => (sortBy === 'status' ? STATUS_ORDER[x.status] : sortBy === 'instance' ? x.instance : x[sortBy] ?? -1);
    const ka = key(a);
    const kb = key(b);
    const r = ka < kb ? -1 : ka > kb ? 1 : a.instance < b.instance ? -1 : 1;
    return asc ? r : -r;
  }

  function rowOf(x) {
    const labels = Object.entries(x.labels).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`));
    const meter = (v) => h('span', { class: 'meter' }, h('span', { class: 'bar', style: null }), fmt(v, 'percent'));
    const cells = [
      h('span', { class: `status ${x.status}` }, STATUS_TEXT[x.status]),
      h('span', {}, link(`/hosts/${encodeURIComponent(x.instance)}`, x.instance), ' ', labels),
      meter(x.cpu), meter(x.mem), meter(x.disk),
      fmt(x.conns), sparkline(x.spark || []),
    ];
    const row = h('div', { class: 'row', role: 'row', 'data-instance': x.instance, 'data-status': x.status });
    cells.forEach((c, i) => row.append(h('div', { role: 'cell', class: `col-${cols[i][0]}` }, c)));
    for (const [i, k] of [[2, 'cpu'], [3, 'mem'], [4, 'disk']]) {
      const bar = row.children[i].querySelector('.bar');
      if (bar && Number.isFinite(x[k])) bar.style.width = `${Math.min(100, Math.max(0, x[k]))}%`;
    }
    return row;
  }

  // Only the rows in view are in the DOM, so thousands of hosts scroll smoothly.
  function paint() {
    const top = scroller.scrollTop;
    const height = scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_H) - 5);
    const last = Math.min(visible.length, Math.ceil((top + height) / ROW_H) + 5);
    body.style.height = `${visible.length * ROW_H}px`;
    const frag = [];
    for (let i = first; i < last; i++) {
      const x = visible[i];
      let r = built.get(x.instance);
      if (!r) { r = rowOf(x); built.set(x.instance, r); }
      r.style.top = `${i * ROW_H}px`;
      frag.push(r);
    }
    fill(body, frag);
  }
  let queued = false;
  scroller.addEventListener('scroll', () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; paint(); });
  });

  function show() {
    built = new Map();
    visible = hosts.filter(matches).sort(cmp);
    const n = { up: 0, down: 0, nodata: 0 };
    for (const x of hosts) n[x.status]++;
    fill(summary, `${hosts.length} hosts: `, h('b', { class: 'status up' }, `${n.up} up`), ', ',
      h('b', { class: 'status down' }, `${n.down} down`), ', ', h('b', { class: 'status nodata' }, `${n.nodata} no data`),
      visible.length !== hosts.length ? ` · ${visible.length} shown` : '');
    ctx.setQuery({ q: text.value.trim() });
    paint();
  }
  text.addEventListener('input', show);
  labelSel.addEventListener('change', show);
  statusSel.addEventListener('change', show);

  return async () => {
    const w = ctx.window(40);
    const r = rateWindow(w);
    const inst = (m) => m.instance;
    const fsSel = 'job="node",fstype!~"tmpfs|ramfs|squashfs|overlay|nsfs|devtmpfs"';
    const cpuExpr = `100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{job="node",mode="idle"}[${r}])))`;
    const [known, up, cpu, mem, disk, conns, spark] = await Promise.all([
      labelValues('instance', ['{job="node"}'], w.start, w.end),
      query('up{job="node"}', w.end),
      query(cpuExpr, w.end),
      query('100 * (1 - node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"})', w.end),
      query(`max by (instance) (100 * (1 - node_filesystem_avail_bytes{${fsSel}} / node_filesystem_size_bytes{${fsSel}}))`, w.end),
      query('sum by (instance) (node_tcp_connection_states{job="node",state="established"})', w.end),
      queryRange(cpuExpr, w.start, w.end, w.step),
    ]);
    if (!ctx.alive()) return;
    const upBy = new Map();
    for (const s of up.result) upBy.set(s.metric.instance, s);
    const cpuBy = byKey(cpu.result, inst);
    const memBy = byKey(mem.result, inst);
    const diskBy = byKey(disk.result, inst);
    const connBy = byKey(conns.result, inst);
    const sparkBy = new Map(spark.result.map((s) => [s.metric.instance, s.values.map(([t, v]) => [t, num(v)])]));
    const names = new Set([...(known || []), ...upBy.keys()]);
    hosts = [...names].map((i) => {
      const u = upBy.get(i);
      const labels = {};
      if (u) for (const [k, v] of Object.entries(u.metric)) if (!HIDDEN_LABELS.has(k)) labels[k] = v;
      const status = !u ? 'nodata' : num(u.value[1]) === 1 ? 'up' : 'down';
      return { instance: i, status, labels, cpu: cpuBy.get(i), mem: memBy.get(i), disk: diskBy.get(i), conns: connBy.get(i), spark: sparkBy.get(i) };
    });
    const pairs = new Set();
    for (const x of hosts) for (const [k, v] of Object.entries(x.labels)) pairs.add(JSON.stringify([k, v]));
    const keep = labelSel.value;
    fill(labelSel, h('option', { value: '', text: 'Any label' }),
      [...pairs].sort().map((p) => { const [k, v] = JSON.parse(p); return h('option', { value: p, text: `${k}=${v}` }); }));
    labelSel.value = pairs.has(keep) ? keep : '';
    if (hosts.length === 0) {
      fill(body);
      fill(summary, note('empty', 'No host has reported in this time range. Start an agent with the collector\'s token.'));
      return;
    }
    show();
    if (performance.getEntriesByName('nines:hosts-drawn').length === 0) performance.mark('nines:hosts-drawn');
  };
}

// ---------------------------------------------------------------- dashboards

const dashboards = new Map();
async function dashboard(name) {
  if (!dashboards.has(name)) {
    dashboards.set(name, fetch(`/ui/dashboards/${name}.json`).then((r) => {
      if (!r.ok) throw new Error(`dashboard ${name}: ${r.status}`);
      return r.json();
    }));
  }
  return dashboards.get(name);
}

/** Replaces `$instance` (as a quoted PromQL string) and `$rate`. */
export function expand(expr, vars) {
  return expr.replace(/"\$(\w+)"|\$(\w+)/g, (all, quoted, bare) => {
    if (quoted !== undefined) return quoted in vars ? quote(vars[quoted]) : all;
    return bare in vars ? vars[bare] : all;
  });
}

/** Renders a dashboard's rows of panels; returns an update function. */
function renderDashboard(parent, dash, vars) {
  const panels = [];
  for (const row of dash.rows) {
    const grid = h('div', { class: 'panels' });
    parent.append(h('section', { class: 'dash-row' }, h('h2', { text: row.title }), grid));
    for (const p of row.panels) panels.push({ p, chart: lineChart(grid, p) });
  }
  return async (w, onDrawn) => {
    const all = { ...vars, rate: rateWindow(w), step: promDuration(w.step) };
    await Promise.all(panels.map(async ({ p, chart }) => {
      try {
        const results = await Promise.all(p.queries.map((q) => queryRange(expand(q.expr, all), w.start, w.end, w.step)
          .then((res) => seriesOf(res.result, q.legend))));
        chart.set({ series: results.flat(), start: w.start, end: w.end, step: w.step });
      } catch (e) {
        chart.error(e.message);
      }
      onDrawn();
    }));
  };
}

// ---------------------------------------------------------------- host

/** One host: status, labels and the host and service dashboards. */
export function host(ctx, rawName) {
  let instance;
  try { instance = decodeURIComponent(rawName); } catch { instance = rawName; }
  const head = h('div');
  const charts = h('div');
  ctx.main.append(head, charts);
  let update = null;
  return async () => {
    const w = ctx.window();
    if (!update) {
      performance.clearMarks();
      performance.mark('nines:host-start');
      const known = await labelValues('instance', [`{job="node",instance=${quote(instance)}}`], w.end - 90 * 86400, w.end);
      if (!ctx.alive()) return;
      if (!known.includes(instance)) {
        fill(ctx.main);
        notFound(ctx, 'host', instance);
        return;
      }
      const [hostDash, serviceDash] = await Promise.all([dashboard('host'), dashboard('service')]);
      if (!ctx.alive()) return;
      title(ctx, instance);
      head.append(ctx.main.querySelector('h1'));
      const ups = h('p', { class: 'summary', role: 'status' });
      head.append(ups);
      const hostUpdate = renderDashboard(charts, hostDash, { instance });
      charts.append(h('h2', { class: 'dash-title', text: serviceDash.title }));
      const serviceUpdate = renderDashboard(charts, serviceDash, { instance });
      update = async (win) => {
        const total = hostDash.rows.concat(serviceDash.rows).reduce((n, r) => n + r.panels.length, 0);
        let drawn = 0;
        const onDrawn = () => {
          drawn++;
          if (drawn === 1) performance.mark('nines:first-chart');
          if (drawn === total) performance.mark('nines:all-charts');
        };
        const status = query(`up{job="node",instance=${quote(instance)}}`, win.end).then((u) => {
          const s = u.result[0];
          const st = !s ? 'nodata' : num(s.value[1]) === 1 ? 'up' : 'down';
          const labels = s ? Object.entries(s.metric).filter(([k]) => !HIDDEN_LABELS.has(k)).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`)) : [];
          fill(ups, h('span', { class: `status ${st}` }, STATUS_TEXT[st]), ' ', labels);
        }).catch((e) => fill(ups, note('error', e.message)));
        await Promise.all([status, hostUpdate(win, onDrawn), serviceUpdate(win, onDrawn)]);
      };
    }
    await update(w);
  };
}

// ---------------------------------------------------------------- probes

/** Every probe: success rate, latency percentiles, uptime bar, last error. */
export function probes(ctx) {
  title(ctx, 'Probes');
  const box = h('div');
  ctx.main.append(box);
  return async () => {
    const w = ctx.window(60);
    const R = promDuration(w.span);
    const key = (m) => JSON.stringify([m.instance, m.probe]);
    const by = '(instance, probe)';
    const q = (p) => query(`histogram_quantile(${p}, sum by (instance, probe, le) (rate(nines_probe_duration_seconds_bucket{phase="total"}[${R}])))`, w.end);
    const S = promDuration(w.step);
    const [ok, bad, p50, p90, p99, upRange, failRange, info] = await Promise.all([
      query(`sum by ${by} (increase(nines_probe_success_total[${R}]))`, w.end),
      query(`sum by ${by} (increase(nines_probe_failure_total[${R}]))`, w.end),
      q(0.5), q(0.9), q(0.99),
      queryRange(`min by ${by} (min_over_time(nines_probe_up[${S}]))`, w.start, w.end, w.step),
      queryRange(`sum by (instance, probe, reason) (increase(nines_probe_failure_total[${S}])) > 0`, w.start, w.end, w.step),
      query('nines_probe_info', w.end),
    ]);
    if (!ctx.alive()) return;
    const okBy = byKey(ok.result, key);
    const badBy = byKey(bad.result, key);
    const lat = [p50, p90, p99].map((x) => byKey(x.result, key));
    const upBy = new Map(upRange.result.map((s) => [key(s.metric), new Map(s.values.map(([t, v]) => [t, num(v)]))]));
    const infoBy = new Map(info.result.map((s) => [key(s.metric), s.metric]));
    const lastErr = new Map();
    for (const s of failRange.result) {
      const k = key(s.metric);
      const t = s.values[s.values.length - 1][0];
      if (!lastErr.has(k) || lastErr.get(k).t < t) lastErr.set(k, { t, reason: s.metric.reason });
    }
    const keys = [...new Set([...okBy.keys(), ...badBy.keys(), ...upBy.keys()])].sort();
    if (keys.length === 0) {
      fill(box, note('empty', 'No probe has reported in this time range. Add [[probe]] tables to an agent\'s config.'));
      return;
    }
    const rows = keys.map((k) => {
      const [instance, probe] = JSON.parse(k);
      const good = okBy.get(k) || 0;
      const fail = badBy.get(k) || 0;
      const rate = good + fail > 0 ? good / (good + fail) : NaN;
      const bar = h('span', { class: 'uptime', role: 'img', 'aria-label': 'uptime over the range' });
      const ups = upBy.get(k) || new Map();
      for (let t = w.start; t <= w.end; t += w.step) {
        const v = ups.get(t);
        bar.append(h('span', { class: v === undefined ? 'gap' : v >= 1 ? 'ok' : 'fail', title: `${fmtTime(t)}: ${v === undefined ? 'no data' : v >= 1 ? 'up' : 'down'}` }));
      }
      const err = lastErr.get(k);
      const inf = infoBy.get(k);
      return h('tr', { 'data-probe': probe },
        h('td', {}, probe, inf ? h('div', { class: 'sub', text: `${inf.kind || ''} ${inf.target || ''}` }) : null),
        h('td', {}, link(`/hosts/${encodeURIComponent(instance)}`, instance)),
        h('td', { class: 'num', text: fmt(rate, 'ratio') }),
        lat.map((m) => h('td', { class: 'num', text: fmt(m.get(k), 'seconds') })),
        h('td', {}, bar),
        h('td', { text: err ? `${err.reason}, ${ago(err.t)}` : 'none in range' }));
    });
    fill(box, h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Probe', 'From host', 'Success', 'p50', 'p90', 'p99', 'Uptime', 'Last error'].map((t) => h('th', { scope: 'col', text: t })))),
      h('tbody', {}, rows))));
  };
}

// ---------------------------------------------------------------- explore

/** Openers and closers of `expr` outside string literals, in order. */
function brackets(expr) {
  const out = [];
  let quote = null;
  for (let i = 0; i < expr.length; i++) {
    const ch = expr[i];
    if (quote) {
      if (ch === '\\') i++;
      else if (ch === quote) quote = null;
    } else if (ch === '"' || ch === "'" || ch === '`') quote = ch;
    else if ('([{)]}'.includes(ch)) out.push([ch, i]);
  }
  return out;
}

/**
 * Where a parser message points, as a 0-based character offset, or -1.
 * The collector's parse errors read as Prometheus's: `invalid parameter
 * "query": line:column: parse error: ...`, the column counted in bytes of the line (UTF-8); other messages
 * with `line:column` are read the same way. Without one, the problem the
 * message names (`unclosed left parenthesis`, `in call to 'rate'`, a
 * quoted token) is located in the expression here.
 */
export function errorPosition(message, expr) {
  let m = /^(?:invalid parameter "query": )?(\d+):(\d+): parse error:/.exec(message) || /(\d+):(\d+)(?::|\s)/.exec(message);
  if (m) {
    const lines = expr.split('\n');
    const line = +m[1] - 1;
    if (line >= 0 && line < lines.length) {
      const bytes = new TextEncoder().encode(lines[line]);
      const col = new TextDecoder().decode(bytes.slice(0, Math.max(0, +m[2] - 1))).length;
      return lines.slice(0, line).reduce((n, l) => n + l.length + 1, 0) + col;
    }
  }
  m = /unclosed left (parenthesis|bracket|brace)|unexpected right (parenthesis|bracket|brace)/.exec(message);
  if (m) {
    const [open, close] = { parenthesis: '()', bracket: '[]', brace: '{}' }[m[1] || m[2]];
    const stack = [];
    for (const [ch, i] of brackets(expr)) {
      if (ch === open) stack.push(i);
      else if (ch === close) {
        if (stack.length === 0) { if (m[2]) return i; } else stack.pop();
      }
    }
    if (m[1] && stack.length) return stack[stack.length - 1];
  }
  if (/end of input/.test(message)) return expr.length;
  m = /in call to (?:function )?'([^']+)'/.exec(message);
  if (m && expr.indexOf(`${m[1]}(`) >= 0) return expr.indexOf(`${m[1]}(`);
  m = /syntax: (\S+)/.exec(message) || /'([^']+)'/.exec(message) || /"([^"]+)"/.exec(message);
  if (m && expr.indexOf(m[1]) >= 0) return expr.indexOf(m[1]);
  return -1;
}

/** A PromQL box with a graph and a table of the result. */
export function explore(ctx) {
  title(ctx, 'Explore');
  const input = h('textarea', { rows: '3', spellcheck: 'false', 'aria-label': 'PromQL expression', placeholder: 'e.g. rate(node_cpu_seconds_total[5m])' });
  input.value = ctx.param('q') || '';
  const run = h('button', { type: 'submit', text: 'Run' });
  const err = h('div', { class: 'query-error', 'aria-live': 'polite' });
  const form = h('form', { class: 'explore' }, input, h('div', {}, run, h('span', { class: 'hint', text: ' Ctrl+Enter runs the query.' })), err);
  const graphBox = h('div');
  const tableBox = h('div', { class: 'table-wrap' });
  ctx.main.append(form, graphBox, tableBox);
  const chart = lineChart(graphBox, { title: 'Result', unit: '' });
  form.addEventListener('submit', (e) => { e.preventDefault(); ctx.setQuery({ q: input.value }); update(); });
  input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });

  function showError(e, expr) {
    const pos = e instanceof ApiError && e.type === 'bad_data' ? errorPosition(e.message, expr) : -1;
    const parts = [h('div', { class: 'msg', role: 'alert' }, e.message)];
    if (pos >= 0) {
      const lineStart = expr.lastIndexOf('\n', pos - 1) + 1;
      let lineEnd = expr.indexOf('\n', pos);
      if (lineEnd < 0) lineEnd = expr.length;
      parts.push(h('pre', { class: 'caret' }, expr.slice(lineStart, lineEnd), '\n', ' '.repeat(pos - lineStart), h('mark', { text: '^' })));
    }
    fill(err, parts);
    input.setAttribute('aria-invalid', 'true');
  }

  async function update() {
    const expr = input.value.trim();
    fill(err);
    input.removeAttribute('aria-invalid');
    if (!expr) { fill(tableBox, note('info', 'Type a PromQL expression and run it.')); chart.set({ series: [], start: 0, end: 1, step: 1 }); return; }
    const w = ctx.window();
    let inst;
    try {
      inst = await query(expr, w.end);
    } catch (e) {
      if (!ctx.alive()) return;
      showError(e, expr);
      chart.error('The query failed; see the message above.');
      fill(tableBox);
      return;
    }
    if (!ctx.alive()) return;
    const t = inst.resultType;
    let rows;
    if (t === 'vector') rows = inst.result.map((r) => [r.metric, r.value[1]]);
    else if (t === 'matrix') rows = inst.result.map((r) => [r.metric, r.values.map((v) => `${v[1]} @${v[0]}`).join('\n')]);
    else rows = [[{}, inst.result[1]]];
    fill(tableBox, h('table', { class: 'result' }, h('caption', { text: `${rows.length} ${t === 'scalar' || t === 'string' ? t : 'series'} at ${fmtTime(w.end)}` }),
      h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'Series' }), h('th', { scope: 'col', text: 'Value' }))),
      h('tbody', {}, rows.slice(0, 1000).map(([m, v]) => h('tr', {}, h('td', { class: 'mono', text: t === 'scalar' || t === 'string' ? t : seriesOf([{ metric: m, values: [] }])[0].name }), h('td', { class: 'num mono', text: v }))))));
    if (t === 'vector' || t === 'scalar') {
      try {
        const res = await queryRange(expr, w.start, w.end, w.step);
        if (ctx.alive()) chart.set({ series: seriesOf(res.result), start: w.start, end: w.end, step: w.step });
      } catch (e) {
        if (ctx.alive()) chart.error(e.message);
      }
    } else {
      chart.error(`A ${t} result cannot be graphed; the table shows it.`);
    }
  }
  return update;
}
