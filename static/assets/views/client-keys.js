// Client keys: one access key per app or person, with scopes, limits and an expiry. The
// secret is shown once, right after it is made; the list shows its first characters only.
import { h, replace } from '../dom.js';
import { formatDateTime, formatNumber, t } from '../i18n.js';
import { api } from '../api.js';
import {
  clearErrorsOnInput, clearFieldErrors, confirmDialog, copyText, field, openDialog, reportError,
  setFieldError, setSwitch, switchButton, toast,
} from '../ui.js';

const LIMITS = ['rpm', 'rpd', 'tpd', 'max_streams'];

/** `a, b ,c` → `['a', 'b', 'c']`. */
export function splitList(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

/** The form's values as the API's JSON (empty limits and expiry: null). */
export function formBody(form) {
  const v = (name) => form.elements[name].value.trim();
  const body = {
    name: v('name'),
    note: v('note'),
    services: splitList(v('services')),
    models: splitList(v('models')),
    expires_at: v('expires_at') ? new Date(v('expires_at')).toISOString() : null,
  };
  for (const limit of LIMITS) body[limit] = v(limit) === '' ? null : Number(v(limit));
  return body;
}

/** `2027-01-31T00:00:00Z` → the `datetime-local` value in the browser's zone. */
function localInput(rfc3339) {
  if (!rfc3339) return '';
  const d = new Date(rfc3339);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function limitsText(key) {
  const parts = LIMITS.filter((l) => key[l] != null).map((l) => t(`clients.limit.${l}`, { n: formatNumber(key[l]) }));
  return parts.length ? parts.join(' · ') : t('clients.noLimits');
}

function scopeText(list) {
  return list.length ? list.join(', ') : t('clients.all');
}

function cell(labelKey, ...children) {
  return h('td', { 'data-label': () => t(labelKey) }, children);
}

/** Shows a new key's secret, once, with a copy button. */
function showSecret(key) {
  openDialog({
    title: t('clients.secretTitle', { name: key.name }),
    testid: 'client-secret-dialog',
    content: [
      h('p', { class: 'alert alert-warning', text: () => t('clients.secretOnce') }),
      field({
        label: () => t('clients.secret'),
        control: h('input', { name: 'secret', readOnly: true, value: key.secret, testid: 'client-secret', class: 'mono' }),
        addon: h('button', {
          type: 'button', class: 'btn btn-sm', testid: 'copy-secret', text: () => t('common.copy'),
          onclick: async () => {
            const done = await copyText(key.secret);
            toast(done ? t('usage.copied') : t('usage.copyFailed'), done ? 'success' : 'error');
          },
        }),
      }),
    ],
  });
}

/** The create or edit dialog; `key` is null for a new one. Resolves when saved. */
function keyDialog(key, onSaved) {
  const input = (name, props = {}) => h('input', { name, testid: `client-${name}`, ...props });
  const form = h('form', { class: 'form', testid: 'client-form', novalidate: true },
    field({ label: () => t('clients.field.name'), control: input('name', { required: true, value: key?.name ?? '', maxlength: '100' }) }),
    field({ label: () => t('clients.field.note'), control: input('note', { value: key?.note ?? '' }) }),
    field({ label: () => t('clients.field.services'), hint: () => t('clients.hint.services'), control: input('services', { value: (key?.services ?? []).join(', ') }) }),
    field({ label: () => t('clients.field.models'), hint: () => t('clients.hint.models'), control: input('models', { value: (key?.models ?? []).join(', ') }) }),
    h('div', { class: 'field-grid' },
      LIMITS.map((l) => field({
        label: () => t(`clients.field.${l}`),
        control: input(l, { type: 'number', min: '1', step: '1', inputmode: 'numeric', value: key?.[l] ?? '', placeholder: () => t('clients.none') }),
      }))),
    field({ label: () => t('clients.field.expires_at'), hint: () => t('clients.hint.expires_at'), control: input('expires_at', { type: 'datetime-local', value: localInput(key?.expires_at) }) }));
  clearErrorsOnInput(form);
  const save = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'client-save', text: () => t(key ? 'form.save' : 'clients.create') });
  save.setAttribute('form', 'client-form');
  form.id = 'client-form';
  const dialog = openDialog({
    title: key ? t('clients.editTitle', { name: key.name }) : t('clients.newTitle'),
    testid: 'client-dialog',
    wide: true,
    content: form,
    actions: [h('button', { type: 'button', class: 'btn', testid: 'client-cancel', text: () => t('common.cancel'), onclick: () => dialog.close() }), save],
  });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearFieldErrors(form);
    const body = formBody(form);
    if (!body.name) {
      setFieldError(form, 'name', t('clients.nameRequired'));
      return;
    }
    save.disabled = true;
    try {
      const saved = key ? await api.updateClientKey(key.id, body) : await api.createClientKey(body);
      dialog.close();
      onSaved(saved);
    } catch (err) {
      if (!(err.field && setFieldError(form, err.field, err.serverMessage))) reportError(err, 'clients.saveFailed');
    } finally {
      save.disabled = false;
    }
  });
  form.elements.name.focus();
}

function keyRow(key, reload) {
  const row = h('tr', { testid: 'client-row', 'data-id': String(key.id), class: key.is_active && !key.expired ? '' : 'is-inactive' });
  const status = switchButton({
    checked: key.is_active,
    label: () => t('clients.statusLabel', { name: key.name }),
    testid: 'client-status',
    onToggle: async (next) => {
      if (!next && !(await confirmDialog({
        title: t('clients.revokeTitle'), message: t('clients.revokeConfirm', { name: key.name }),
        confirmLabel: t('clients.revoke'), danger: true,
      }))) return;
      try {
        await api.updateClientKey(key.id, { is_active: next });
        key.is_active = next;
        setSwitch(status, next);
        row.classList.toggle('is-inactive', !next);
        toast(t(next ? 'clients.enabled' : 'clients.revoked', { name: key.name }), 'success');
      } catch (err) {
        reportError(err, 'clients.saveFailed');
      }
    },
  });
  const remove = async () => {
    if (!(await confirmDialog({
      title: t('clients.deleteTitle'), message: t('clients.deleteConfirm', { name: key.name }),
      confirmLabel: t('common.delete'), danger: true,
    }))) return;
    try {
      await api.deleteClientKey(key.id);
      toast(t('clients.deleted', { name: key.name }), 'success');
      reload();
    } catch (err) {
      reportError(err, 'clients.saveFailed');
    }
  };
  const usage = key.usage ?? {};
  return replace(row,
    cell('clients.col.name', h('span', { class: 'service-name', testid: 'client-name', text: key.name }),
      key.note ? h('div', { class: 'muted small', text: key.note }) : null),
    cell('clients.col.prefix', h('code', { testid: 'client-prefix', text: `${key.prefix}…` })),
    cell('clients.col.scope', h('div', { testid: 'client-scope', text: () => `${t('clients.services')}: ${scopeText(key.services)}` }),
      h('div', { class: 'muted small', text: () => `${t('clients.models')}: ${scopeText(key.models)}` })),
    cell('clients.col.limits', h('span', { testid: 'client-limits', text: () => limitsText(key) })),
    cell('clients.col.expires', h('span', { testid: 'client-expires', text: () => (key.expires_at ? formatDateTime(key.expires_at) : t('clients.never')) + (key.expired ? ` (${t('clients.expired')})` : '') })),
    cell('clients.col.used', h('span', { testid: 'client-used', text: () => (key.last_used_at ? formatDateTime(key.last_used_at) : t('clients.neverUsed')) }),
      h('div', { class: 'muted small', testid: 'client-usage', text: () => t('clients.usage24h', { requests: formatNumber(usage.requests_24h ?? 0), tokens: formatNumber((usage.tokens_in_24h ?? 0) + (usage.tokens_out_24h ?? 0)) }) })),
    cell('clients.col.status', status),
    h('td', { class: 'actions', 'data-label': () => t('clients.col.actions') },
      h('div', { class: 'button-row' },
        h('button', { type: 'button', class: 'btn btn-sm', testid: 'client-edit', text: () => t('common.edit'), onclick: () => keyDialog(key, () => { toast(t('clients.saved', { name: key.name }), 'success'); reload(); }) }),
        h('button', { type: 'button', class: 'btn btn-sm btn-danger-quiet', testid: 'client-delete', text: () => t('common.delete'), onclick: remove }))));
}

function keysTable(list, reload) {
  const header = ['name', 'prefix', 'scope', 'limits', 'expires', 'used', 'status', 'actions']
    .map((col) => h('th', { scope: 'col', text: () => t(`clients.col.${col}`) }));
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'table responsive-table', testid: 'clients-table' },
      h('thead', {}, h('tr', {}, header)),
      h('tbody', {}, list.map((key) => keyRow(key, reload)))));
}

/** Renders the client keys page into `main`. */
export function renderClientKeys(main) {
  const body = h('div', { class: 'panel', 'aria-busy': 'true' }, h('p', { class: 'muted loading', text: () => t('common.loading') }));
  const heading = h('h1', { tabindex: '-1', text: () => t('clients.title') });
  const create = () => keyDialog(null, (saved) => { showSecret(saved); load(); });
  main.replaceChildren(h('section', { class: 'page', testid: 'clients-page' },
    h('div', { class: 'page-head' }, heading,
      h('button', { type: 'button', class: 'btn btn-primary', testid: 'new-client', text: () => t('clients.new'), onclick: create })),
    h('p', { class: 'muted', text: () => t('clients.intro') }),
    body));
  async function load() {
    try {
      const list = await api.listClientKeys();
      body.removeAttribute('aria-busy');
      replace(body, list.length ? keysTable(list, load) : h('p', { class: 'empty', testid: 'clients-empty', text: () => t('clients.empty') }));
    } catch (err) {
      body.removeAttribute('aria-busy');
      replace(body, h('p', { class: 'alert alert-error', text: () => t('clients.loadFailed') }));
      reportError(err, 'clients.loadFailed');
    }
  }
  load();
  return heading;
}
