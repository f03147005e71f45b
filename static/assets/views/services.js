// Services list: one row (a card on phones) per service, with its status and actions.
import { h, replace } from '../dom.js';
import { t, formatNumber } from '../i18n.js';
import { api } from '../api.js';
import { confirmDialog, reportError, setSwitch, switchButton, toast } from '../ui.js';
import { openUsageDialog } from './usage-dialog.js';

const typeLabel = (service) => (service.config_type === 'LLM' ? t('type.llm') : t('type.generic'));
const target = (service) => (service.config_type === 'LLM' ? service.target_base_url : service.target_url) ?? '';

function cell(labelKey, ...children) {
  return h('td', { 'data-label': () => t(labelKey) }, children);
}

async function toggleStatus(service, button) {
  const next = !service.is_active;
  const confirmed = await confirmDialog({
    title: next ? t('services.enableTitle') : t('services.disableTitle'),
    message: t(next ? 'services.enableConfirm' : 'services.disableConfirm', { name: service.name }),
    confirmLabel: next ? t('common.enable') : t('common.disable'),
    danger: !next,
  });
  if (!confirmed) return;
  try {
    await api.setServiceActive(service.id, next);
    service.is_active = next;
    setSwitch(button, next);
    button.closest('tr')?.classList.toggle('is-inactive', !next);
    toast(t(next ? 'services.enabled' : 'services.disabled', { name: service.name }), 'success');
  } catch (err) {
    reportError(err, 'services.statusFailed');
  }
}

async function deleteService(service, row, reload) {
  const confirmed = await confirmDialog({
    title: t('services.deleteTitle'),
    message: t('services.deleteConfirm', { name: service.name, n: service.key_count ?? 0 }),
    confirmLabel: t('common.delete'),
    danger: true,
  });
  if (!confirmed) return;
  try {
    await api.deleteService(service.id);
    row.remove();
    toast(t('services.deleted', { name: service.name }), 'success');
    reload();
  } catch (err) {
    reportError(err, 'services.deleteFailed');
  }
}

function keyCount(service) {
  if (service.key_count === undefined) return h('span', { class: 'muted', text: '—' });
  return h('span', {
    class: 'key-count', testid: 'service-key-count',
    title: () => t('services.keyCountTitle', { active: service.active_key_count ?? 0, n: service.key_count }),
  },
  h('strong', { text: formatNumber(service.active_key_count ?? 0) }), ` / ${formatNumber(service.key_count)}`);
}

function serviceRow(service, ctx) {
  const row = h('tr', { testid: 'service-row', 'data-slug': service.slug, class: service.is_active ? '' : 'is-inactive' });
  const status = switchButton({
    checked: service.is_active,
    label: () => t('services.statusLabel', { name: service.name }),
    testid: 'service-status',
    onToggle: () => toggleStatus(service, status),
  });
  const action = (key, testid, onclick, extra = '') =>
    h('button', { type: 'button', class: `btn btn-sm ${extra}`.trim(), testid, text: () => t(key), onclick });
  return replace(row,
    cell('services.col.name', h('span', { class: 'service-name', testid: 'service-name', text: service.name })),
    cell('services.col.slug', h('code', { testid: 'service-slug', text: service.slug })),
    cell('services.col.type', h('span', { class: `badge badge-${service.config_type === 'LLM' ? 'llm' : 'generic'}`, text: () => typeLabel(service) })),
    cell('services.col.target', h('span', { class: 'target', testid: 'service-target', title: target(service), text: target(service) })),
    cell('services.col.keys', keyCount(service)),
    cell('services.col.status', status),
    h('td', { class: 'actions', 'data-label': () => t('services.col.actions') },
      h('div', { class: 'button-row' },
        action('services.use', 'service-use', () => openUsageDialog(service, ctx.config())),
        action('services.keys', 'service-keys', () => { location.hash = `#/services/${service.id}/keys`; }),
        action('common.edit', 'service-edit', () => { location.hash = `#/services/${service.id}/edit`; }),
        action('common.delete', 'service-delete', () => deleteService(service, row, ctx.reload), 'btn-danger-quiet'))));
}

function servicesTable(list, ctx) {
  const header = ['name', 'slug', 'type', 'target', 'keys', 'status', 'actions']
    .map((col) => h('th', { scope: 'col', text: () => t(`services.col.${col}`) }));
  return h('div', { class: 'table-wrap' },
    h('table', { class: 'table responsive-table', testid: 'services-table' },
      h('thead', {}, h('tr', {}, header)),
      h('tbody', {}, list.map((service) => serviceRow(service, ctx)))));
}

function emptyState() {
  return h('div', { class: 'empty' },
    h('p', { testid: 'services-empty', text: () => t('services.empty') }),
    h('button', { type: 'button', class: 'btn btn-primary', text: () => t('services.create'), onclick: () => { location.hash = '#/services/new'; } }));
}

/** Renders the list into `main`. `config()` gives the app-config promise. */
export function renderServices(main, { config }) {
  const body = h('div', { class: 'panel', 'aria-busy': 'true' }, h('p', { class: 'muted loading', text: () => t('common.loading') }));
  const heading = h('h1', { tabindex: '-1', text: () => t('services.title') });
  main.replaceChildren(h('section', { class: 'page', testid: 'services-page' },
    h('div', { class: 'page-head' },
      heading,
      h('button', { type: 'button', class: 'btn btn-primary', testid: 'new-service', text: () => t('services.new'), onclick: () => { location.hash = '#/services/new'; } })),
    body));

  const ctx = { config, reload: load };
  async function load() {
    try {
      const list = await api.listServices();
      body.removeAttribute('aria-busy');
      replace(body, list?.length ? servicesTable(list, ctx) : emptyState());
    } catch (err) {
      body.removeAttribute('aria-busy');
      replace(body, h('p', { class: 'alert alert-error', text: () => t('services.loadFailed') }));
      reportError(err, 'services.loadFailedDetail');
    }
  }
  load();
  return heading;
}
