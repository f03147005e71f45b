// Usage dashboard: requests and errors over time, tokens over time, top keys and models, a
// 24-hour sparkline per service and per key, a key's failure history, and the request log
// (filters, "load more", a detail panel). Numbers come from GET /admin/usage and
// GET /admin/requests.
import { h, replace } from '../dom.js';
import { formatDateTime, formatNumber, t } from '../i18n.js';
import { api } from '../api.js';
import { barChart, sparkline } from '../chart.js';
import { openDialog, reportError, select } from '../ui.js';

const HOUR = 3600;
const DAY = 86400;
const RANGES = { '24h': { span: DAY, bucket: 'hour' }, '7d': { span: 7 * DAY, bucket: 'hour' }, '30d': { span: 30 * DAY, bucket: 'day' } };

/** The bucket starts (Unix seconds) from `from` to now. */
export function bucketStarts(from, to, size) {
  const out = [];
  for (let s = from - (from % size); s < to; s += size) out.push(s);
  return out;
}

/** Sums `buckets` into one series per `field`, aligned on `starts`. */
export function series(buckets, starts, field) {
  const at = new Map(starts.map((s, i) => [s, i]));
  const values = starts.map(() => 0);
  for (const b of buckets) {
    const i = at.get(Date.parse(b.start) / 1000);
    if (i !== undefined) values[i] += typeof field === 'function' ? field(b) : b[field] ?? 0;
  }
  return values;
}

function tick(start, bucket) {
  const d = new Date(start * 1000);
  return bucket === 'day'
    ? d.toLocaleDateString(undefined, { month: 'numeric', day: 'numeric' })
    : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
}

function label(start, bucket) {
  const d = new Date(start * 1000);
  return bucket === 'day'
    ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
    : d.toLocaleString(undefined, { month: 'numeric', day: 'numeric', hour: '2-digit', minute: '2-digit' });
}

function tile(key, value, testid) {
  return h('div', { class: 'tile', testid },
    h('div', { class: 'tile-label', text: () => t(key) }),
    h('div', { class: 'tile-value', text: value }));
}

function groupBy(buckets, keyOf) {
  const map = new Map();
  for (const b of buckets) {
    const k = keyOf(b);
    const sum = map.get(k) ?? { requests: 0, failures: 0, tokens_in: 0, tokens_out: 0, tokens_cached: 0, sample: b };
    for (const f of ['requests', 'failures', 'tokens_in', 'tokens_out', 'tokens_cached']) sum[f] += b[f];
    map.set(k, sum);
  }
  return [...map.entries()].sort((a, b) => b[1].requests - a[1].requests);
}

/** Renders the dashboard into `main`. */
export function renderDashboard(main) {
  const heading = h('h1', { tabindex: '-1', text: () => t('dash.title') });
  const state = { range: '24h', service: '', client: '' };
  const body = h('div', { class: 'dash', 'aria-busy': 'true' }, h('p', { class: 'muted loading', text: () => t('common.loading') }));
  const rangeSelect = select({ testid: 'dash-range', 'aria-label': () => t('dash.range'), onchange: (e) => { state.range = e.target.value; load(); } },
    Object.keys(RANGES).map((r) => [r, () => t(`dash.range.${r}`)]));
  const serviceSelect = select({ testid: 'dash-service', 'aria-label': () => t('dash.service'), onchange: (e) => { state.service = e.target.value; load(); } },
    [['', () => t('dash.allServices')]]);
  const clientSelect = select({ testid: 'dash-client', 'aria-label': () => t('dash.clientKey'), onchange: (e) => { state.client = e.target.value; load(); } },
    [['', () => t('dash.allClients')]]);
  const log = requestLog(state);
  main.replaceChildren(h('section', { class: 'page', testid: 'dashboard-page' },
    h('div', { class: 'page-head' }, heading,
      h('div', { class: 'button-row' }, rangeSelect, serviceSelect, clientSelect)),
    body,
    log.element));

  let services = [];
  async function load() {
    body.setAttribute('aria-busy', 'true');
    const { span, bucket } = RANGES[state.range];
    const now = Math.floor(Date.now() / 1000);
    const size = bucket === 'day' ? DAY : HOUR;
    // Whole buckets, the current one last.
    const from = now - (now % size) + size - span;
    const scope = { ...(state.service ? { service: state.service } : {}), ...(state.client ? { client_key: state.client } : {}) };
    const base = { bucket, from, ...scope };
    const dayFrom = now - (now % HOUR) + HOUR - DAY;
    try {
      const [overall, byKey, byModel, bySvc24, byKey24] = await Promise.all([
        api.usage(base),
        api.usage({ ...base, group: 'service,key' }),
        api.usage({ ...base, group: 'model' }),
        api.usage({ bucket: 'hour', from: dayFrom, group: 'service', ...(state.client ? { client_key: state.client } : {}) }),
        api.usage({ bucket: 'hour', from: dayFrom, group: 'service,key', ...scope }),
      ]);
      const starts = bucketStarts(from, now + 1, size);
      const labels = starts.map((s) => label(s, bucket));
      const ticks = starts.map((s) => tick(s, bucket));
      const sum = (f) => overall.reduce((a, b) => a + b[f], 0);
      const starts24 = bucketStarts(dayFrom, now + 1, HOUR);
      body.removeAttribute('aria-busy');
      replace(body,
        h('div', { class: 'tiles' },
          tile('dash.requests', formatNumber(sum('requests')), 'tile-requests'),
          tile('dash.failures', formatNumber(sum('failures')), 'tile-failures'),
          tile('dash.tokensIn', formatNumber(sum('tokens_in')), 'tile-tokens-in'),
          tile('dash.tokensOut', formatNumber(sum('tokens_out')), 'tile-tokens-out')),
        h('div', { class: 'chart-grid-2' },
          barChart({ title: t('dash.chart.requests'), labels, ticks, testid: 'chart-requests', series: [
            { name: t('dash.successes'), values: series(overall, starts, 'successes'), className: 'c-ok' },
            { name: t('dash.failures'), values: series(overall, starts, 'failures'), className: 'c-bad' },
          ] }),
          barChart({ title: t('dash.chart.tokens'), labels, ticks, testid: 'chart-tokens', series: [
            { name: t('dash.tokensIn'), values: series(overall, starts, 'tokens_in'), className: 'c-in' },
            { name: t('dash.tokensOut'), values: series(overall, starts, 'tokens_out'), className: 'c-out' },
          ] })),
        h('div', { class: 'chart-grid-2' },
          topKeys(byKey, byKey24, starts24),
          topModels(byModel)),
        servicesPanel(bySvc24, starts24));
    } catch (err) {
      body.removeAttribute('aria-busy');
      replace(body, h('p', { class: 'alert alert-error', text: () => t('dash.loadFailed') }));
      reportError(err, 'dash.loadFailed');
    }
    log.reload(state.service);
  }

  function slugOf(id) {
    return services.find((s) => s.id === id)?.slug ?? `#${id}`;
  }

  function topKeys(byKey, byKey24, starts24) {
    const rows = groupBy(byKey, (b) => `${b.service_id}:${b.key_id}`).slice(0, 10);
    return h('section', { class: 'panel' },
      h('h2', { text: () => t('dash.topKeys') }),
      rows.length ? h('div', { class: 'table-wrap dash-scroll' }, h('table', { class: 'table', testid: 'top-keys' },
        h('thead', {}, h('tr', {}, ['key', 'service', 'requests', 'failures', 'last24h'].map((c) => h('th', { scope: 'col', text: () => t(`dash.col.${c}`) })))),
        h('tbody', {}, rows.map(([, r]) => {
          const mine = byKey24.filter((b) => b.key_id === r.sample.key_id && b.service_id === r.sample.service_id);
          const req = series(mine, starts24, 'requests');
          const fail = series(mine, starts24, 'failures');
          const keyId = r.sample.key_id;
          return h('tr', { testid: 'top-key-row', 'data-key-id': keyId },
            h('td', {}, keyId ? h('button', { type: 'button', class: 'btn btn-sm btn-link', testid: 'key-history', text: `#${keyId}`, onclick: () => keyHistory(r.sample) }) : h('span', { class: 'muted', text: () => t('dash.noKey') })),
            h('td', { text: r.sample.service ?? slugOf(r.sample.service_id) }),
            h('td', { class: 'num', text: formatNumber(r.requests) }),
            h('td', { class: 'num', text: formatNumber(r.failures) }),
            h('td', {}, sparkline(req, { failures: fail, label: t('dash.sparkLabel', { n: req.reduce((a, b) => a + b, 0), f: fail.reduce((a, b) => a + b, 0) }), testid: 'key-spark' })));
        })))) : h('p', { class: 'muted', testid: 'top-keys-empty', text: () => t('dash.empty') }));
  }

  function topModels(byModel) {
    const rows = groupBy(byModel, (b) => b.model ?? '').slice(0, 10);
    return h('section', { class: 'panel' },
      h('h2', { text: () => t('dash.topModels') }),
      rows.length ? h('div', { class: 'table-wrap dash-scroll' }, h('table', { class: 'table', testid: 'top-models' },
        h('thead', {}, h('tr', {}, ['model', 'requests', 'tokensIn', 'tokensOut'].map((c) => h('th', { scope: 'col', text: () => t(`dash.col.${c}`) })))),
        h('tbody', {}, rows.map(([model, r]) => h('tr', { testid: 'top-model-row' },
          h('td', {}, model ? h('code', { text: model }) : h('span', { class: 'muted', text: () => t('dash.noModel') })),
          h('td', { class: 'num', text: formatNumber(r.requests) }),
          h('td', { class: 'num', text: formatNumber(r.tokens_in) }),
          h('td', { class: 'num', text: formatNumber(r.tokens_out) })))))) : h('p', { class: 'muted', text: () => t('dash.empty') }));
  }

  function servicesPanel(bySvc24, starts24) {
    return h('section', { class: 'panel' },
      h('h2', { text: () => t('dash.services24h') }),
      h('div', { class: 'table-wrap dash-scroll' }, h('table', { class: 'table', testid: 'service-sparks' },
        h('thead', {}, h('tr', {}, ['service', 'requests', 'failures', 'last24h'].map((c) => h('th', { scope: 'col', text: () => t(`dash.col.${c}`) })))),
        h('tbody', {}, services.map((svc) => {
          const mine = bySvc24.filter((b) => b.service_id === svc.id);
          const req = series(mine, starts24, 'requests');
          const fail = series(mine, starts24, 'failures');
          const n = req.reduce((a, b) => a + b, 0);
          const f = fail.reduce((a, b) => a + b, 0);
          return h('tr', { testid: 'service-spark-row', 'data-slug': svc.slug },
            h('td', {}, h('code', { text: svc.slug })),
            h('td', { class: 'num', text: formatNumber(n) }),
            h('td', { class: 'num', text: formatNumber(f) }),
            h('td', {}, sparkline(req, { failures: fail, label: t('dash.sparkLabel', { n, f }), testid: 'service-spark' })));
        })))));
  }

  async function keyHistory(sample) {
    const now = Math.floor(Date.now() / 1000);
    const from = now - (now % HOUR) + HOUR - 7 * DAY;
    const [hours, failed] = await Promise.all([
      api.usage({ bucket: 'hour', from, key: sample.key_id }),
      api.requests({ key: sample.key_id, limit: 20 }),
    ]).catch((err) => { reportError(err, 'dash.loadFailed'); return [null, null]; });
    if (!hours) return;
    const starts = bucketStarts(from, now + 1, HOUR);
    const cls = (name) => (b) => b.failures_by_class[name];
    openDialog({
      title: t('dash.keyHistory', { id: sample.key_id }),
      testid: 'key-history-dialog',
      wide: true,
      content: [
        barChart({ title: t('dash.chart.keyFailures'), labels: starts.map((s) => label(s, 'hour')), ticks: starts.map((s) => tick(s, 'hour')), testid: 'chart-key-failures', series: [
          { name: t('dash.class.rate_limited'), values: series(hours, starts, cls('rate_limited')), className: 'c-warn' },
          { name: t('dash.class.client'), values: series(hours, starts, cls('client')), className: 'c-out' },
          { name: t('dash.class.upstream'), values: series(hours, starts, cls('upstream')), className: 'c-bad' },
          { name: t('dash.class.proxy'), values: series(hours, starts, cls('proxy')), className: 'c-in' },
        ] }),
        h('h3', { text: () => t('dash.recentFailures') }),
        logTable(failed.items.filter((e) => e.status >= 400 || e.error), { compact: true }),
      ],
    });
  }

  api.listServices().then((list) => {
    services = list ?? [];
    for (const svc of services) serviceSelect.append(new Option(svc.slug, String(svc.id)));
    load();
  }).catch((err) => {
    body.removeAttribute('aria-busy');
    reportError(err, 'dash.loadFailed');
  });
  api.listClientKeys().then((list) => {
    for (const key of list ?? []) clientSelect.append(new Option(`${key.name} (${key.prefix}…)`, String(key.id)));
  }).catch((err) => {
    body.removeAttribute('aria-busy');
    reportError(err, 'dash.loadFailed');
  });
  return heading;
}

/** A table of request log entries; each row opens its detail panel. */
function logTable(items, { compact = false } = {}) {
  if (!items.length) return h('p', { class: 'muted', testid: 'log-empty', text: () => t('dash.log.empty') });
  const cols = compact ? ['time', 'status', 'path', 'error'] : ['time', 'status', 'service', 'method', 'path', 'model', 'tokens', 'latency', 'key'];
  return h('div', { class: 'table-wrap dash-scroll' }, h('table', { class: 'table log-table', testid: 'log-table' },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col', text: () => t(`dash.log.${c}`) })))),
    h('tbody', {}, items.map((e) => logRow(e, cols)))));
}

function statusClass(status) {
  if (status >= 500 || status === 0) return 'badge badge-bad';
  if (status >= 400) return 'badge badge-warn';
  return 'badge badge-ok';
}

function logRow(e, cols) {
  const cell = {
    time: () => h('button', { type: 'button', class: 'btn btn-sm btn-link', testid: 'log-open', text: formatDateTime(e.time), onclick: () => logDetail(e) }),
    status: () => h('span', { class: statusClass(e.status), testid: 'log-status', text: String(e.status) }),
    service: () => h('code', { text: e.service }),
    method: () => e.method,
    path: () => h('span', { class: 'target', title: e.path, text: e.path }),
    model: () => e.model ?? '',
    tokens: () => (e.tokens_in === null ? '—' : `${formatNumber(e.tokens_in)} / ${formatNumber(e.tokens_out)}`),
    latency: () => (e.latency_ms === null ? '—' : `${formatNumber(e.latency_ms)} ms`),
    key: () => h('code', { text: e.key || '—' }),
    error: () => e.error ?? '',
  };
  return h('tr', { testid: 'log-row', 'data-request-id': e.request_id },
    cols.map((c) => h('td', { 'data-label': () => t(`dash.log.${c}`) }, cell[c]())));
}

function logDetail(e) {
  const rows = [
    ['request_id', e.request_id], ['time', formatDateTime(e.time)], ['service', e.service], ['method', e.method],
    ['path', e.path], ['status', e.status], ['attempts', e.attempts.map((a) => `#${a.key_id} → ${a.status || t('dash.noAnswer')}`).join(', ')],
    ['key', e.key], ['model', e.model ?? '—'], ['tokens_in', e.tokens_in ?? '—'], ['tokens_out', e.tokens_out ?? '—'],
    ['tokens_cached', e.tokens_cached ?? '—'], ['latency_ms', e.latency_ms ?? '—'], ['ttfb_ms', e.ttfb_ms ?? '—'],
    ['bytes_in', e.bytes_in], ['bytes_out', e.bytes_out], ['client_ip', e.client_ip], ['error', e.error ?? '—'],
  ];
  openDialog({
    title: t('dash.log.detail'),
    testid: 'log-detail',
    wide: true,
    content: h('dl', { class: 'detail-list' }, rows.map(([k, v]) => [
      h('dt', { text: () => t(`dash.field.${k}`) }),
      h('dd', { testid: `detail-${k}`, text: typeof v === 'number' ? formatNumber(v) : String(v) })])),
  });
}

/** The request log panel: filters, the table, "load more". */
function requestLog(state) {
  let cursor = null;
  let items = [];
  const filters = { status: '', request_id: '' };
  const table = h('div', {});
  const more = h('button', { type: 'button', class: 'btn', testid: 'log-more', hidden: true, text: () => t('dash.log.more'), onclick: () => fetchPage(true) });
  const statusSelect = select({ testid: 'log-status-filter', 'aria-label': () => t('dash.log.status'), onchange: (e) => { filters.status = e.target.value; fetchPage(false); } },
    [['', () => t('dash.log.anyStatus')], ['2xx', '2xx'], ['4xx', '4xx'], ['5xx', '5xx']]);
  const idInput = h('input', { type: 'search', testid: 'log-request-id', placeholder: () => t('dash.log.requestId'), 'aria-label': () => t('dash.log.requestId'),
    onchange: (e) => { filters.request_id = e.target.value.trim(); fetchPage(false); } });
  async function fetchPage(append) {
    const params = { limit: 50 };
    if (append && cursor) params.cursor = cursor;
    if (filters.status) params.status = filters.status;
    if (filters.request_id) params.request_id = filters.request_id;
    if (state.service) params.service = state.service;
    if (state.client) params.client_key = state.client;
    try {
      const page = await api.requests(params);
      items = append ? items.concat(page.items) : page.items;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      replace(table, logTable(items));
    } catch (err) {
      reportError(err, 'dash.loadFailed');
    }
  }
  const element = h('section', { class: 'panel', testid: 'request-log' },
    h('div', { class: 'page-head' }, h('h2', { text: () => t('dash.log.title') }),
      h('div', { class: 'button-row' }, statusSelect, idInput)),
    table, more);
  return { element, reload: () => fetchPage(false) };
}
