// The key list of the key manager: state, usage and per-key actions, paged.
import { h, replace } from '../dom.js';
import { formatDateTime, t } from '../i18n.js';
import { api } from '../api.js';
import { keyState } from '../format.js';
import { busy, confirmDialog, reportError, switchButton, toast } from '../ui.js';

export const PAGE_SIZE = 100;

function stateCell(key) {
  const state = keyState(key);
  let detail = null;
  if (state === 'cooling' && key.cooldown_until) {
    detail = () => t('keys.coolingUntil', { time: formatDateTime(key.cooldown_until) });
  } else if (state === 'invalid') {
    detail = () => t('keys.invalidBecause', { reason: key.invalid_reason || t('keys.unknownReason') });
  }
  return [
    h('span', { class: `badge badge-${state}`, testid: 'key-state', 'data-state': state, text: () => t(`keys.state.${state}`) }),
    detail ? h('span', { class: 'state-detail', testid: 'key-state-detail', text: detail }) : null,
  ];
}

function usageCell(key) {
  if (key.request_count === undefined) return h('span', { class: 'muted', text: '—' });
  if (!key.request_count) return h('span', { class: 'muted', testid: 'key-usage', text: () => t('keys.noRequests') });
  return h('span', { class: 'usage', testid: 'key-usage' },
    h('span', { text: () => t('keys.requests', { n: key.request_count }) }),
    h('span', { class: key.success_count ? 'ok' : '', text: () => t('keys.successes', { n: key.success_count }) }),
    h('span', { class: key.failure_count ? 'bad' : '', text: () => t('keys.failures', { n: key.failure_count }) }));
}

function lastUsedCell(key) {
  if (!key.last_used_at) return h('span', { class: 'muted', text: () => t('keys.never') });
  return h('span', { class: 'last-used', testid: 'key-last-used' },
    h('span', { text: () => formatDateTime(key.last_used_at) }),
    key.last_status ? h('span', { class: `badge badge-http${key.last_status < 400 ? '' : ' badge-http-bad'}`, text: `HTTP ${key.last_status}` }) : null,
    key.last_error ? h('span', { class: 'last-error', title: key.last_error, text: key.last_error }) : null);
}

function testResultText(result) {
  const parts = [result.ok ? t('keys.testOk') : t('keys.testFailed')];
  if (result.status !== null && result.status !== undefined) parts.push(`HTTP ${result.status}`);
  if (typeof result.latency_ms === 'number') parts.push(t('keys.latency', { ms: result.latency_ms }));
  if (result.error) parts.push(result.error);
  return parts.join(' · ');
}

/** Draws one page into `container`; `ctx` = {keys, filtered, range, selected, onSelect,
 * onSelectPage, testResults, reload, prev, next}. */
export function renderKeyTable(container, ctx) {
  const { keys } = ctx;
  if (!keys.length) {
    replace(container, h('div', { class: 'empty' }, h('p', { testid: 'keys-empty', text: () => t(ctx.filtered ? 'keys.noneMatch' : 'keys.empty') })));
    return;
  }
  const all = keys.every((k) => ctx.selected.has(k.id));
  const pageBox = h('input', { type: 'checkbox', testid: 'keys-select-page', checked: all, 'aria-label': () => t('bulk.selectPage') });
  pageBox.addEventListener('change', () => ctx.onSelectPage(pageBox.checked));
  const cols = ['key', 'state', 'usage', 'lastUsed', 'enabled', 'actions'];
  const { range } = ctx;
  replace(container,
    h('div', { class: 'table-wrap' },
      h('table', { class: 'table responsive-table keys-table', testid: 'keys-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col', class: 'select-col' }, pageBox), cols.map((col) => h('th', { scope: 'col', text: () => t(`keys.col.${col}`) })))),
        h('tbody', {}, keys.map((key) => keyRow(key, ctx))))),
    range.hasPrev || range.hasNext ? pager(range, ctx) : null);
}

function pager(range, ctx) {
  return h('nav', { class: 'pager', 'aria-label': () => t('keys.pages') },
    h('button', { type: 'button', class: 'btn btn-sm', testid: 'keys-prev', disabled: !range.hasPrev, text: () => t('common.previous'), onclick: ctx.prev }),
    h('span', { class: 'muted', testid: 'keys-range', text: () => t('keys.range', { first: range.first, last: range.last, total: range.total }) }),
    h('button', { type: 'button', class: 'btn btn-sm', testid: 'keys-next', disabled: !range.hasNext, text: () => t('common.next'), onclick: ctx.next }));
}

function keyRow(key, ctx) {
  const state = keyState(key);
  const result = ctx.testResults.get(key.id);
  const toggle = switchButton({
    checked: key.is_active !== false,
    label: () => t('keys.toggleLabel', { key: key.key_value }),
    testid: 'key-toggle',
    onToggle: (next) => busy(toggle, async () => {
      try {
        await api.setKeyActive(key.id, next);
        toast(t(next ? 'keys.enabled' : 'keys.disabled', { key: key.key_value }), 'success');
        await ctx.reload();
      } catch (err) {
        reportError(err, 'keys.toggleFailed');
      }
    }),
  });
  const action = (labelKey, testid, onclick, extra = {}) =>
    h('button', { type: 'button', class: 'btn btn-sm', testid, text: () => t(labelKey), ...extra, onclick: (e) => onclick(e.currentTarget) });

  const box = h('input', { type: 'checkbox', testid: 'key-select', checked: ctx.selected.has(key.id), 'aria-label': () => t('bulk.selectKey', { key: key.key_value }) });
  box.addEventListener('change', () => ctx.onSelect(key.id, box.checked));
  return h('tr', { testid: 'key-row', 'data-key-id': String(key.id), 'data-state': state },
    h('td', { class: 'select-col' }, box),
    h('td', { 'data-label': () => t('keys.col.key') },
      h('div', { class: 'stack' },
        h('code', { class: 'key-value', testid: 'key-value', text: key.key_value }),
        h('span', { class: 'muted key-id', text: `#${key.id}` }),
        key.note ? h('span', { class: 'muted key-note', testid: 'key-note', text: key.note }) : null)),
    h('td', { 'data-label': () => t('keys.col.state') }, h('div', { class: 'stack' }, stateCell(key))),
    h('td', { 'data-label': () => t('keys.col.usage') }, usageCell(key)),
    h('td', { 'data-label': () => t('keys.col.lastUsed') }, lastUsedCell(key)),
    h('td', { 'data-label': () => t('keys.col.enabled') }, toggle),
    h('td', { class: 'actions', 'data-label': () => t('keys.col.actions') },
      h('div', { class: 'button-row' },
        action('keys.test', 'key-test', (button) => testKey(key, button, ctx)),
        action('keys.reset', 'key-reset', (button) => resetKey(key, button, ctx),
          { disabled: state !== 'cooling' && state !== 'invalid', title: () => t('keys.resetHint') }),
        action('common.delete', 'key-delete', () => deleteKey(key, ctx), { class: 'btn btn-sm btn-danger-quiet' })),
      result ? h('p', { class: `test-result ${result.ok ? 'ok' : 'bad'}`, testid: 'key-test-result', role: 'status', text: () => testResultText(result) }) : null));
}

async function testKey(key, button, ctx) {
  await busy(button, async () => {
    try {
      const result = await api.testKey(key.id);
      ctx.testResults.set(key.id, result);
      await ctx.reload(); // the row shows the result and the key's new state
    } catch (err) {
      reportError(err, 'keys.testError');
    }
  });
}

async function resetKey(key, button, ctx) {
  await busy(button, async () => {
    try {
      await api.resetKey(key.id);
      toast(t('keys.resetDone', { key: key.key_value }), 'success');
      await ctx.reload();
    } catch (err) {
      reportError(err, 'keys.resetFailed');
    }
  });
}

async function deleteKey(key, ctx) {
  const confirmed = await confirmDialog({
    title: t('keys.deleteTitle'),
    message: t('keys.deleteConfirm', { key: key.key_value }),
    confirmLabel: t('common.delete'),
    danger: true,
  });
  if (!confirmed) return;
  try {
    await api.deleteKey(key.id);
    ctx.testResults.delete(key.id);
    toast(t('keys.deleted', { key: key.key_value }), 'success');
    await ctx.reload();
  } catch (err) {
    reportError(err, 'keys.deleteFailed');
  }
}
