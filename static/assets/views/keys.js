// Key manager for one service: add, import, export, clear, and the key list.
import { h, refreshBindings, replace } from '../dom.js';
import { formatNumber, t } from '../i18n.js';
import { api } from '../api.js';
import { exportFileName, keyState } from '../format.js';
import { busy, clearErrorsOnInput, clearFieldErrors, confirmDialog, downloadText, errorText, field, openDialog, reportError, select, setFieldError, toast } from '../ui.js';
import { renderKeyTable } from './key-table.js';
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

function openExportDialog(service, keys) {
  const activeCount = keys.filter((k) => k.is_active !== false).length;
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

function countStates(keys) {
  const counts = Object.fromEntries(FILTERS.map((f) => [f, 0]));
  for (const key of keys) counts[keyState(key)] += 1;
  counts.all = keys.length;
  return counts;
}

/** Renders the key manager of service `id` into `main`. */
export function renderKeys(main, { id }) {
  const state = { service: null, keys: [], counts: countStates([]), page: 0, filter: 'all', testResults: new Map() };
  const heading = h('h1', { tabindex: '-1', testid: 'keys-title', text: () => (state.service ? t('keys.title', { name: state.service.name }) : t('keys.titleLoading')) });
  const subtitle = h('p', { class: 'muted', testid: 'keys-summary', text: () => (state.service ? t('keys.summary', { slug: state.service.slug, n: state.counts.all, active: state.counts.active }) : '') });
  const head = h('div', { class: 'page-head' }, h('div', {}, heading, subtitle));
  const list = h('div', { class: 'panel', 'aria-busy': 'true' }, h('p', { class: 'muted', text: () => t('common.loading') }));
  const toolbar = h('div', { class: 'toolbar' });
  main.replaceChildren(h('section', { class: 'page', testid: 'keys-page' },
    h('a', { class: 'back-link', href: '#/services', text: () => t('common.backToServices') }),
    head,
    toolbar,
    list));

  const filterSelect = select({ name: 'key-filter', testid: 'key-filter', 'aria-label': () => t('keys.filter') },
    FILTERS.map((f) => [f, () => `${t(`keys.filter.${f}`)} (${formatNumber(state.counts[f])})`]));
  filterSelect.addEventListener('change', () => {
    state.filter = filterSelect.value;
    state.page = 0;
    draw();
  });

  function draw() {
    state.counts = countStates(state.keys);
    refreshBindings(head);
    refreshBindings(filterSelect);
    const shown = state.filter === 'all' ? state.keys : state.keys.filter((k) => keyState(k) === state.filter);
    toolbar.querySelector('[data-testid=clear-keys]').disabled = !state.keys.length;
    toolbar.querySelector('[data-testid=open-export]').disabled = !state.keys.length;
    renderKeyTable(list, {
      keys: shown,
      filtered: state.filter !== 'all',
      page: state.page,
      testResults: state.testResults,
      reload,
      setPage: (page) => { state.page = page; draw(); },
    });
  }

  async function reload() {
    try {
      const [service, keys] = await Promise.all([api.getService(id), api.listKeys(id)]);
      state.service = service;
      state.keys = keys ?? [];
      list.removeAttribute('aria-busy');
      if (!toolbar.childElementCount) buildToolbar();
      draw();
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
          button('keys.export', 'open-export', () => openExportDialog(state.service, state.keys)),
          button('keys.refresh', 'refresh-keys', (e) => busy(e.currentTarget, reload)),
          button('keys.clearAll', 'clear-keys', () => clearAll(state.service, state.keys.length, reload), 'btn btn-danger-quiet')),
        filterSelect));
  }

  reload();
  return heading;
}
