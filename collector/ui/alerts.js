// Alerts: firing and pending alerts, their history over the range,
// notification deliveries, and silences (create, expire).

import { h, fill, note } from './dom.js';
import { fmtTime, ago, parseDuration } from './format.js';
import { get, post, del, queryRange } from './api.js';

const labelText = (labels) => Object.entries(labels || {}).filter(([k]) => k !== '__name__' && k !== 'alertstate')
  .map(([k, v]) => `${k}="${v}"`).join(', ');

function section(title) {
  const body = h('div');
  return [h('section', { class: 'block' }, h('h2', { text: title }), body), body];
}

function table(headers, rows) {
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col', text: t })))),
    h('tbody', {}, rows)));
}

/** `name="v", name=~"re", name!="v"` as silence matchers. */
export function parseMatchers(text) {
  const out = [];
  const re = /\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(,|$)/y;
  let i = 0;
  const src = text.trim();
  while (i < src.length) {
    re.lastIndex = i;
    const m = re.exec(src);
    if (!m) throw new Error(`matchers: cannot read from character ${i + 1}: expected name="value"`);
    out.push({ name: m[1], value: m[3].replace(/\\(.)/g, '$1'), isRegex: m[2].includes('~'), isEqual: !m[2].startsWith('!') });
    i = re.lastIndex;
    if (!m[4]) break;
  }
  if (out.length === 0) throw new Error('matchers: give at least one, e.g. alertname="HostDown"');
  return out;
}

const matcherText = (m) => `${m.name}${m.isEqual === false ? (m.isRegex ? '!~' : '!=') : (m.isRegex ? '=~' : '=')}"${m.value}"`;

/** The alerts view. */
export function alerts(ctx) {
  document.title = 'Alerts · nines';
  ctx.main.append(h('h1', { text: 'Alerts' }));
  const [activeSec, active] = section('Firing and pending');
  const [silSec, silences] = section('Silences');
  const [delSec, deliveries] = section('Notification deliveries');
  const [histSec, history] = section('History in the time range');

  const matchers = h('input', { name: 'matchers', required: true, size: '40', placeholder: 'alertname="HostDown", instance=~"web.*"', 'aria-label': 'Matchers' });
  const dur = h('input', { name: 'duration', value: '2h', size: '6', 'aria-label': 'Duration' });
  const by = h('input', { name: 'createdBy', value: localStorage.getItem('nines-user') || '', required: true, 'aria-label': 'Created by' });
  const comment = h('input', { name: 'comment', required: true, size: '30', 'aria-label': 'Comment' });
  const formMsg = h('div', { 'aria-live': 'polite' });
  const form = h('form', { class: 'silence-form' },
    h('label', {}, 'Matchers ', matchers), h('label', {}, 'For ', dur), h('label', {}, 'By ', by),
    h('label', {}, 'Comment ', comment), h('button', { type: 'submit', text: 'Create silence' }), formMsg);
  silSec.insertBefore(form, silences);
  ctx.main.append(activeSec, silSec, delSec, histSec);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    fill(formMsg);
    try {
      const secs = parseDuration(dur.value.trim());
      if (!(secs > 0)) throw new Error(`duration: "${dur.value}" is not a duration like 2h or 30m`);
      const body = {
        matchers: parseMatchers(matchers.value),
        startsAt: new Date().toISOString(),
        endsAt: new Date(Date.now() + secs * 1000).toISOString(),
        createdBy: by.value.trim(),
        comment: comment.value.trim(),
      };
      localStorage.setItem('nines-user', body.createdBy);
      const r = await post('/api/v1/silences', body);
      fill(formMsg, note('info', `Silence ${r && r.silenceID} created.`));
      matchers.value = '';
      comment.value = '';
      await loadSilences();
    } catch (err) {
      fill(formMsg, note('error', err.message));
    }
  });

  const prefill = (labels) => {
    matchers.value = Object.entries(labels).filter(([k]) => k !== 'alertstate')
      .map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`).join(', ');
    matchers.focus();
  };

  async function loadActive() {
    try {
      const d = await get('/api/v1/alerts');
      const list = (d.alerts || []).filter((a) => a.state === 'firing' || a.state === 'pending')
        .sort((a, b) => (a.state === b.state ? 0 : a.state === 'firing' ? -1 : 1));
      fill(active, list.length === 0 ? note('empty', 'No alert is firing or pending.') : table(['State', 'Alert', 'Labels', 'Since', 'Value', 'Summary', ''],
        list.map((a) => h('tr', {},
          h('td', {}, h('span', { class: `state ${a.state}`, text: a.state })),
          h('td', { text: a.labels.alertname || '' }),
          h('td', { class: 'mono', text: labelText(a.labels) }),
          h('td', { text: a.activeAt ? `${fmtTime(Date.parse(a.activeAt) / 1000)} (${ago(Date.parse(a.activeAt) / 1000)})` : '' }),
          h('td', { class: 'num', text: a.value || '' }),
          h('td', { text: (a.annotations && (a.annotations.summary || a.annotations.description)) || '' }),
          h('td', {}, h('button', { type: 'button', text: 'Silence…', onclick: () => prefill(a.labels) }))))));
    } catch (e) { fill(active, note('error', `Alerts: ${e.message}`)); }
  }

  async function loadSilences() {
    try {
      const list = await get('/api/v1/silences');
      fill(silences, list.length === 0 ? note('empty', 'No silences.') : table(['State', 'Matchers', 'Starts', 'Ends', 'By', 'Comment', ''],
        list.map((s) => h('tr', { 'data-silence': s.id },
          h('td', {}, h('span', { class: `state ${s.status.state}`, text: s.status.state })),
          h('td', { class: 'mono', text: s.matchers.map(matcherText).join(', ') }),
          h('td', { text: fmtTime(Date.parse(s.startsAt) / 1000) }),
          h('td', { text: fmtTime(Date.parse(s.endsAt) / 1000) }),
          h('td', { text: s.createdBy }),
          h('td', { text: s.comment }),
          h('td', {}, s.status.state === 'expired' ? '' : h('button', {
            type: 'button', text: 'Expire', onclick: async (e) => {
              e.target.disabled = true;
              try { await del(`/api/v1/silences/${encodeURIComponent(s.id)}`); await loadSilences(); } catch (err) { fill(silences, note('error', err.message)); }
            },
          }))))));
    } catch (e) { fill(silences, note('error', `Silences: ${e.message}`)); }
  }

  async function loadDeliveries() {
    try {
      const list = await get('/api/v1/notifications', { limit: 50 });
      const word = { pending: 'retrying', delivered: 'sent', failed: 'failed' };
      fill(deliveries, list.length === 0 ? note('empty', 'No notifications sent yet.') : table(['Status', 'Receiver', 'Group', 'Alerts', 'Attempts', 'Created', 'Last attempt', 'Next attempt', 'Last error'],
        list.map((n) => h('tr', {},
          h('td', {}, h('span', { class: `state ${n.status}`, text: n.status === 'pending' && n.attempts === 0 ? 'pending' : word[n.status] || n.status })),
          h('td', { text: n.receiver }),
          h('td', { class: 'mono', text: n.group_key }),
          h('td', { text: `${n.firing} firing, ${n.resolved} resolved` }),
          h('td', { class: 'num', text: String(n.attempts) }),
          h('td', { text: n.created_at ? fmtTime(Date.parse(n.created_at) / 1000) : '' }),
          h('td', { text: n.last_attempt_at ? fmtTime(Date.parse(n.last_attempt_at) / 1000) : '' }),
          h('td', { text: n.status === 'pending' && n.next_attempt_at ? fmtTime(Date.parse(n.next_attempt_at) / 1000) : '' }),
          h('td', { text: n.last_error || '' })))));
    } catch (e) { fill(deliveries, note('error', `Deliveries: ${e.message}`)); }
  }

  async function loadHistory() {
    const w = ctx.window(300);
    try {
      const r = await queryRange('ALERTS', w.start, w.end, w.step);
      const spans = [];
      for (const s of r.result) {
        let cur = null;
        for (const [t] of s.values) {
          if (cur && t - cur.end <= w.step * 1.5) cur.end = t;
          else { cur = { start: t, end: t, labels: s.metric }; spans.push(cur); }
        }
      }
      spans.sort((a, b) => b.start - a.start);
      fill(history, spans.length === 0 ? note('empty', 'No alert was pending or firing in this time range.') : table(['State', 'Alert', 'Labels', 'From', 'To'],
        spans.slice(0, 500).map((x) => h('tr', {},
          h('td', {}, h('span', { class: `state ${x.labels.alertstate}`, text: x.labels.alertstate })),
          h('td', { text: x.labels.alertname || '' }),
          h('td', { class: 'mono', text: labelText(x.labels) }),
          h('td', { text: fmtTime(x.start) }),
          h('td', { text: x.end >= w.end - w.step ? 'now' : fmtTime(x.end) })))));
    } catch (e) { fill(history, note('error', `History: ${e.message}`)); }
  }

  return async () => { await Promise.all([loadActive(), loadSilences(), loadDeliveries(), loadHistory()]); };
}
