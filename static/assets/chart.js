// Small charts drawn as inline SVG (no library). Each chart:
// - scales with its container (a viewBox, width 100%);
// - works with the keyboard: Tab reaches the plot, the arrow keys move between buckets, and the
//   focused bucket's values show under the chart (and are announced: aria-live);
// - comes with a data table a screen reader can read (and anyone can open).
import { h } from './dom.js';
import { formatNumber, t } from './i18n.js';

const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) if (c) el.append(c);
  return el;
}

/** A rounded maximum for the y axis: 1, 2 or 5 times a power of ten. */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * p).find((m) => m >= value);
}

/**
 * A stacked bar chart. `labels`: one per bucket (in the table and the readout), `ticks`: the
 * shorter text under the x axis;
 * `series`: [{ name, values, className }], stacked in order.
 */
export function barChart({ title, labels, ticks = labels, series, testid }) {
  const W = 640;
  const H = 220;
  const pad = { l: 48, r: 8, t: 10, b: 28 };
  const totals = labels.map((_, i) => series.reduce((sum, x) => sum + (x.values[i] ?? 0), 0));
  const max = niceMax(Math.max(0, ...totals));
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const step = plotW / Math.max(1, labels.length);
  const barW = Math.max(1, step * 0.7);
  const y = (v) => pad.t + plotH - (v / max) * plotH;
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'group', tabindex: '0', 'aria-label': title });
  for (const f of [0, 0.5, 1]) {
    svg.append(s('line', { x1: pad.l, x2: W - pad.r, y1: y(max * f), y2: y(max * f), class: 'chart-grid' }));
    const tick = s('text', { x: pad.l - 6, y: y(max * f) + 4, class: 'chart-tick', 'text-anchor': 'end' });
    tick.textContent = formatNumber(max * f);
    svg.append(tick);
  }
  const every = Math.max(1, Math.ceil(labels.length / 8));
  const groups = labels.map((label, i) => {
    const g = s('g', { class: 'chart-bucket', 'data-index': i });
    let base = 0;
    for (const x of series) {
      const v = x.values[i] ?? 0;
      if (v > 0) {
        g.append(s('rect', { x: pad.l + i * step + (step - barW) / 2, y: y(base + v), width: barW, height: Math.max(0.5, y(base) - y(base + v)), class: `chart-bar ${x.className}` }));
      }
      base += v;
    }
    // The whole column reacts to the pointer, not only the bar.
    g.append(s('rect', { x: pad.l + i * step, y: pad.t, width: step, height: plotH, class: 'chart-hit' }));
    if (i % every === 0) {
      const tx = s('text', { x: pad.l + i * step + step / 2, y: H - 8, class: 'chart-tick', 'text-anchor': 'middle' });
      tx.textContent = ticks[i];
      g.append(tx);
    }
    svg.append(g);
    return g;
  });
  const readout = h('p', { class: 'chart-readout', 'aria-live': 'polite', testid: testid ? `${testid}-readout` : undefined });
  let current = -1;
  const show = (i) => {
    if (i < 0 || i >= labels.length) return;
    groups[current]?.classList.remove('is-current');
    current = i;
    groups[i].classList.add('is-current');
    readout.textContent = `${labels[i]}: ${series.map((x) => `${x.name} ${formatNumber(x.values[i] ?? 0)}`).join(', ')}`;
  };
  svg.addEventListener('keydown', (e) => {
    const moves = { ArrowRight: 1, ArrowLeft: -1, Home: -Infinity, End: Infinity };
    if (!(e.key in moves)) return;
    e.preventDefault();
    const m = moves[e.key];
    show(Math.min(labels.length - 1, Math.max(0, m === Infinity ? labels.length - 1 : m === -Infinity ? 0 : (current < 0 ? 0 : current + m))));
  });
  svg.addEventListener('focus', () => { if (current < 0) show(labels.length - 1); });
  groups.forEach((g, i) => g.addEventListener('pointerenter', () => show(i)));
  const legend = h('ul', { class: 'chart-legend' },
    series.map((x) => h('li', {}, h('span', { class: `chart-swatch ${x.className}`, 'aria-hidden': 'true' }), x.name)));
  return h('figure', { class: 'chart', testid },
    h('figcaption', { class: 'chart-title', text: title }),
    legend,
    svg,
    readout,
    dataTable({ caption: title, labels, series, testid }));
}

/** The numbers of a chart as a table, in a <details> (open for screen readers too). */
export function dataTable({ caption, labels, series, testid }) {
  return h('details', { class: 'chart-table' },
    h('summary', { text: () => t('dash.showTable') }),
    h('div', { class: 'table-wrap dash-scroll' },
      h('table', { class: 'table', testid: testid ? `${testid}-table` : undefined },
        h('caption', { class: 'visually-hidden', text: caption }),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: () => t('dash.col.time') }), series.map((x) => h('th', { scope: 'col', text: x.name })))),
        h('tbody', {}, labels.map((label, i) => h('tr', {},
          h('th', { scope: 'row', text: label }),
          series.map((x) => h('td', { class: 'num', text: formatNumber(x.values[i] ?? 0) }))))))));
}

/** A small line of `values` (e.g. 24 hours), with a label that says what it shows. */
export function sparkline(values, { label, failures = null, testid } = {}) {
  const W = 120;
  const H = 28;
  const max = Math.max(1, ...values, ...(failures ?? []));
  const x = (i) => (values.length <= 1 ? W / 2 : (i / (values.length - 1)) * (W - 2) + 1);
  const yOf = (v) => H - 2 - (v / max) * (H - 4);
  const path = (vals) => vals.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${yOf(v).toFixed(1)}`).join(' ');
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'sparkline', role: 'img', 'aria-label': label, 'data-values': values.join(',') });
  svg.append(s('path', { d: path(values), class: 'spark-line' }));
  if (failures?.some((v) => v > 0)) svg.append(s('path', { d: path(failures), class: 'spark-fail' }));
  if (testid) svg.dataset.testid = testid;
  return svg;
}
