// Key manager for one service: add, import, export, clear, and the key list.
import { h, refreshBindings, replace } from '../dom.js';
import { formatNumber, t } from '../i18n.js';
import { api } from '../api.js';
import { exportFileName } from '../format.js';
import { busy, clearErrorsOnInput, clearFieldErrors, confirmDialog, downloadText, errorText, field, openDialog, reportError, select, setFieldError, toast } from '../ui.js';
import { PAGE_SIZE, renderKeyTable } from './key-table.js';
import { openImportDialog } from './import-dialog.js';

const FILTERS = ['all', 'active', 'cooling', 'invalid', 'disabled'];

function addKeyForm(serviceId, reload) {
  const input = h('input', { name: 'key_value', testid: 'new-key-input', autocomplete: 'off', spellcheck: 'false', class: 'mono', placeholder: () => t('keys.newPlaceholder') });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'add-key', text: () => t('keys.add') });
  const form = h('form', { class: 'add-key', novalidate: true, testid: 'add-key-form' },
    field({ label: () => t('keys.newLabel'), control: input, addon: submit }));
  clearErrorsOnInput(form);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const value = input.value.trim();
    if (!value) {
      setFieldError(form, 'key_value', t('keys.newEmpty'));
      input.focus();
      return;
    }
    try {
      await busy(submit, () => api.addKey(serviceId, value));
      input.value = '';
      toast(t('keys.added'), 'success');
      await reload();
    } catch (err) {
      if (err.status === 409) setFieldError(form, 'key_value', t('keys.duplicate'));
      else if (err.status && err.status !== 401) setFieldError(form, 'key_value', errorText(err));
      else reportError(err, 'keys.addFailed');
    }
    input.focus();
  });
  return form;
}

function openExportDialog(service) {
  const keys = { length: service.key_count ?? 0 };
  const activeCount = service.active_key_count ?? 0;
  const choice = (value, labelKey, n) => h('label', { class: 'choice choice-inline' },
    h('input', { type: 'radio', name: 'export-scope', value, checked: value === 'all', testid: `export-${value}` }),
    h('span', { text: () => t(labelKey, { n }) }));
  const scopes = h('fieldset', { class: 'choices' },
    h('legend', { text: () => t('export.scope') }),
    choice('all', 'export.all', keys.length),
    choice('active', 'export.active', activeCount));
  const download = h('button', { type: 'button', class: 'btn btn-primary', testid: 'export-download', text: () => t('export.download') });
  download.addEventListener('click', () => busy(download, async () => {
    const onlyActive = scopes.querySelector('input:checked').value === 'active';
    try {
      const full = await api.listKeys(service.id, { reveal: true });
      const chosen = full.filter((k) => !onlyActive || k.is_active !== false).map((k) => k.key_value);
      if (!chosen.length) {
        toast(t('export.nothing'), 'info');
        return;
      }
      downloadText(exportFileName(service.slug), `${chosen.join('\n')}\n`);
      toast(t('export.done', { n: chosen.length }), 'success');
      dialog.close();
    } catch (err) {
      reportError(err, 'export.failed');
    }
  }));
  const dialog = openDialog({
    title: t('export.title', { name: service.name }),
    testid: 'export-dialog',
    content: [scopes, h('p', { class: 'hint', text: () => t('export.warning') })],
    actions: [h('button', { type: 'button', class: 'btn', text: () => t('common.cancel'), onclick: () => dialog.close() }), download],
  });
}

async function clearAll(service, count, reload) {
  const confirmed = await confirmDialog({
    title: t('keys.clearTitle'),
    message: t('keys.clearConfirm', { n: count, name: service.name }),
    confirmLabel: t('keys.clearAll'),
    danger: true,
  });
  if (!confirmed) return;
  try {
    const reply = await api.clearKeys(service.id);
    toast(t('keys.cleared', { n: reply.deleted_count ?? 0 }), 'success');
    await reload();
  } catch (err) {
    reportError(err, 'keys.clearFailed');
  }
}

/** Renders the key manager of service `id` into `main`. */
export function renderKeys(main, { id }) {
  // One page at a time from the server: `cursors[i]` is where page i starts.
  const state = { service: null, keys: [], cursors: [''], next: null, total: 0, filter: 'all', q: '', selected: new Set(), allMatching: false, testResults: new Map() };
  const summary = () => (state.service ? t('keys.summary', { slug: state.service.slug, n: state.service.key_count ?? 0, active: state.service.active_key_count ?? 0 }) : '');
  const heading = h('h1', { tabindex: '-1', testid: 'keys-title', text: () => (state.service ? t('keys.title', { name: state.service.name }) : t('keys.titleLoading')) });
  const subtitle = h('p', { class: 'muted', testid: 'keys-summary', text: summary });
  const head = h('div', { class: 'page-head' }, h('div', {}, heading, subtitle));
  const list = h('div', { class: 'panel', 'aria-busy': 'true' }, h('p', { class: 'muted', text: () => t('common.loading') }));
  const toolbar = h('div', { class: 'toolbar' });
  const bulkBar = h('div', { class: 'bulk-bar', testid: 'bulk-bar', hidden: true, role: 'region', 'aria-label': () => t('bulk.title') });
  main.replaceChildren(h('section', { class: 'page', testid: 'keys-page' },
    h('a', { class: 'back-link', href: '#/services', text: () => t('common.backToServices') }),
    head,
    toolbar,
    bulkBar,
    list));

  const filterSelect = select({ name: 'key-filter', testid: 'key-filter', 'aria-label': () => t('keys.filter') },
    FILTERS.map((f) => [f, () => t(`keys.filter.${f}`)]));
  const search = h('input', { type: 'search', name: 'key-search', testid: 'key-search', class: 'mono', autocomplete: 'off', spellcheck: 'false', placeholder: () => t('keys.searchPlaceholder'), 'aria-label': () => t('keys.search') });
  const restart = () => {
    state.cursors = [''];
    state.selected.clear();
    state.allMatching = false;
    load();
  };
  filterSelect.addEventListener('change', () => { state.filter = filterSelect.value; restart(); });
  let typing;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.q = search.value.trim(); restart(); }, 250);
  });

  const query = () => ({ state: state.filter === 'all' ? '' : state.filter, q: state.q });

  function drawBulkBar() {
    const n = state.allMatching ? state.total : state.selected.size;
    bulkBar.hidden = n === 0;
    if (!n) return;
    const action = (name, cls = 'btn btn-sm') => h('button', { type: 'button', class: cls, testid: `bulk-${name}`, text: () => t(`bulk.${name}`), onclick: (e) => runBulk(name, e.currentTarget) });
    const pageFull = state.keys.length && state.keys.every((k) => state.selected.has(k.id));
    replace(bulkBar,
      h('span', { testid: 'bulk-count', text: () => t(state.allMatching ? 'bulk.allMatching' : 'bulk.selected', { n }) }),
      pageFull && !state.allMatching && state.total > state.keys.length
        ? h('button', { type: 'button', class: 'btn btn-sm btn-link', testid: 'bulk-select-all-matching', text: () => t('bulk.selectAllMatching', { n: state.total }), onclick: () => { state.allMatching = true; drawBulkBar(); } })
        : null,
      h('div', { class: 'button-row' }, action('test'), action('reset'), action('enable'), action('disable'), action('delete', 'btn btn-sm btn-danger-quiet'),
        h('button', { type: 'button', class: 'btn btn-sm', testid: 'bulk-clear', text: () => t('bulk.clear'), onclick: () => { state.selected.clear(); state.allMatching = false; draw(); } })));
  }

  async function runBulk(name, button) {
    const selection = state.allMatching ? { filter: query() } : { ids: [...state.selected] };
    await busy(button, async () => {
      try {
        const { matched } = await api.bulkKeys(id, { action: name, ...selection, dry_run: true });
        const confirmed = await confirmDialog({
          title: t('bulk.confirmTitle'),
          message: t(`bulk.confirm.${name}`, { n: matched }),
          confirmLabel: t(`bulk.${name}`),
          danger: name === 'delete',
        });
        if (!confirmed) return;
        const reply = await api.bulkKeys(id, { action: name, ...selection });
        if (reply.job) {
          await followJob(reply.job);
        } else {
          toast(t('bulk.done', { n: reply.affected }), 'success');
        }
        state.selected.clear();
        state.allMatching = false;
        await reload();
      } catch (err) {
        reportError(err, 'bulk.failed');
      }
    });
  }

  async function followJob(job) {
    const bar = h('progress', { class: 'progress', testid: 'bulk-progress', max: String(Math.max(job.total, 1)), value: '0' });
    const text = h('p', { class: 'hint', testid: 'bulk-progress-text', role: 'status' });
    replace(bulkBar, bar, text);
    bulkBar.hidden = false;
    for (;;) {
      bar.value = job.done;
      text.textContent = t('bulk.testProgress', { done: job.done, total: job.total, ok: job.ok, failed: job.failed });
      if (job.state !== 'running') break;
      await new Promise((r) => setTimeout(r, 400));
      job = await api.getJob(job.id);
    }
    toast(t('bulk.testDone', { ok: job.ok, failed: job.failed }), job.failed ? 'error' : 'success');
  }

  function draw() {
    refreshBindings(head);
    const page = state.cursors.length - 1;
    toolbar.querySelector('[data-testid=clear-keys]').disabled = !(state.service?.key_count);
    toolbar.querySelector('[data-testid=open-export]').disabled = !(state.service?.key_count);
    renderKeyTable(list, {
      keys: state.keys,
      filtered: state.filter !== 'all' || state.q !== '',
      range: {
        first: formatNumber(page * PAGE_SIZE + 1),
        last: formatNumber(page * PAGE_SIZE + state.keys.length),
        total: formatNumber(state.total),
        hasPrev: page > 0,
        hasNext: Boolean(state.next),
      },
      selected: state.selected,
      onSelect: (keyId, on) => { if (on) state.selected.add(keyId); else { state.selected.delete(keyId); state.allMatching = false; } draw(); },
      onSelectPage: (on) => { for (const k of state.keys) { if (on) state.selected.add(k.id); else state.selected.delete(k.id); } if (!on) state.allMatching = false; draw(); },
      prev: () => { state.cursors.pop(); load(); },
      next: () => { state.cursors.push(state.next); load(); },
      testResults: state.testResults,
      reload,
    });
    drawBulkBar();
  }

  // The current page (and the count of what the filter matches). Only the last load
  // asked for is drawn: a filter changed while a search was still on its way made the
  // slower, older answer replace the newer one.
  let loads = 0;
  async function load() {
    const mine = ++loads;
    const cursor = state.cursors[state.cursors.length - 1];
    const reply = await api.pageKeys(id, { limit: PAGE_SIZE, cursor, total: 1, ...query() });
    if (mine !== loads) return;
    if (!reply.keys.length && state.cursors.length > 1) {
      state.cursors.pop(); // the last page emptied: show the one before
      return load();
    }
    state.keys = reply.keys;
    state.next = reply.next_cursor;
    state.total = reply.total ?? 0;
    draw();
  }

  async function reload() {
    try {
      state.service = await api.getService(id);
      list.removeAttribute('aria-busy');
      if (!toolbar.childElementCount) buildToolbar();
      await load();
    } catch (err) {
      list.removeAttribute('aria-busy');
      replace(list, h('p', { class: 'alert alert-error', text: () => t('keys.loadFailed') }));
      reportError(err, 'keys.loadFailedDetail');
    }
  }

  function buildToolbar() {
    const button = (key, testid, onclick, cls = 'btn') =>
      h('button', { type: 'button', class: cls, testid, text: () => t(key), onclick });
    replace(toolbar,
      addKeyForm(id, reload),
      h('div', { class: 'toolbar-row' },
        h('div', { class: 'button-row' },
          button('keys.import', 'open-import', () => openImportDialog(state.service, reload)),
          button('keys.export', 'open-export', () => openExportDialog(state.service)),
          button('keys.refresh', 'refresh-keys', (e) => busy(e.currentTarget, reload)),
          button('keys.clearAll', 'clear-keys', () => clearAll(state.service, state.service.key_count, reload), 'btn btn-danger-quiet')),
        h('div', { class: 'button-row' }, search, filterSelect)));
  }

  reload();
  return heading;
}
