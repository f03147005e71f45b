// Create / edit form for a service. Fields follow the service type; the API's validation errors
// are shown under the field they name.
import { bind, h, refreshBindings, replace } from '../dom.js';
import { t } from '../i18n.js';
import { api, SessionExpiredError } from '../api.js';
import { busy, clearErrorsOnInput, clearFieldErrors, errorText, field, reportError, select, setFieldError, toast } from '../ui.js';

const METHODS = ['ANY', 'GET', 'POST', 'PUT', 'PATCH', 'DELETE'];
const FORMATS = ['openai_compatible', 'anthropic_native', 'gemini_native'];
const BASE_URL_PLACEHOLDERS = {
  openai_compatible: 'https://api.openai.com/v1',
  anthropic_native: 'https://api.anthropic.com',
  gemini_native: 'https://generativelanguage.googleapis.com',
};
const DEFAULT_KEY_NAMES = {
  openai_compatible: 'Authorization',
  anthropic_native: 'x-api-key',
  gemini_native: 'x-goog-api-key',
};
const DEFAULT_RETRIES = 2;

/** Suggests a slug from a name: lowercase ASCII letters, digits and single hyphens. */
export function slugify(name) {
  return name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '');
}

function input(name, props = {}) {
  return h('input', { name, testid: `input-${name}`, autocomplete: 'off', ...props });
}

function typeChoice(value, labelKey, hintKey, current, disabled) {
  return h('label', { class: 'choice' },
    h('input', { type: 'radio', name: 'config_type', value, checked: current === value, disabled, testid: `type-${value.toLowerCase()}` }),
    h('span', { class: 'choice-text' },
      h('strong', { text: () => t(labelKey) }),
      h('span', { class: 'muted', text: () => t(hintKey) })));
}

/** Builds the form controls, filled from `service` (or defaults when creating). */
function buildControls(service) {
  const llm = service.config_type === 'LLM';
  const format = service.api_format ?? 'openai_compatible';
  return {
    name: input('name', { value: service.name ?? '', maxlength: '100', required: true }),
    slug: input('slug', { value: service.slug ?? '', maxlength: '100', required: true, class: 'mono', spellcheck: 'false' }),
    is_active: h('input', { type: 'checkbox', name: 'is_active', testid: 'input-is_active', checked: service.is_active ?? true }),
    method: select({ name: 'method', testid: 'input-method' },
      METHODS.map((m) => [m, m === 'ANY' ? () => t('form.methodAny') : m])),
    target_url: input('target_url', { type: 'url', value: llm ? '' : service.target_url ?? '', placeholder: 'https://api.weatherstack.com', class: 'mono' }),
    api_format: select({ name: 'api_format', testid: 'input-api_format' },
      FORMATS.map((f) => [f, () => t(`format.${f}`)])),
    target_base_url: input('target_base_url', { type: 'url', value: llm ? service.target_base_url ?? '' : '', class: 'mono' }),
    api_key_location: select({ name: 'api_key_location', testid: 'input-api_key_location' }, [
      ['', () => t('form.locationDefault')], ['header', () => t('form.locationHeader')], ['query', () => t('form.locationQuery')]]),
    api_key_name: input('api_key_name', { value: service.api_key_name ?? '', class: 'mono', spellcheck: 'false' }),
    max_retries: input('max_retries', { type: 'number', min: '0', max: '10', step: '1', inputmode: 'numeric', value: String(service.max_retries ?? (service.id ? '' : DEFAULT_RETRIES)) }),
    retry_on: input('retry_on', { value: service.retry_on ?? '', class: 'mono', placeholder: '429, 500, 502, 503', spellcheck: 'false' }),
    probe_path: input('probe_path', { value: llm ? '' : service.probe_path ?? '', class: 'mono', placeholder: 'v1/status', spellcheck: 'false' }),
    revalidate_interval: input('revalidate_interval', { type: 'number', min: '0', max: '604800', step: '60', inputmode: 'numeric', value: service.revalidate_interval ? String(service.revalidate_interval) : '', placeholder: '3600' }),
    idle_timeout: service.idle_timeout ?? null,
    initial: { method: service.method ?? 'GET', format, location: service.api_key_location ?? (service.id ? '' : 'header') },
  };
}

/** Whether an edited service has advanced settings that differ from the defaults. */
function hasAdvancedSettings(service) {
  if (service.id === undefined) return false;
  return Boolean(service.retry_on || service.probe_path || service.revalidate_interval)
    || (service.max_retries !== undefined && service.max_retries !== DEFAULT_RETRIES);
}

/** The JSON body for create/update (full replace: every field is sent, null when unused). */
function payload(c, type) {
  const llm = type === 'LLM';
  const text = (el) => el.value.trim();
  const retries = text(c.max_retries);
  const revalidate = text(c.revalidate_interval);
  return {
    name: text(c.name),
    slug: text(c.slug),
    config_type: type,
    is_active: c.is_active.checked,
    api_key_location: c.api_key_location.value || null,
    api_key_name: text(c.api_key_name) || null,
    method: llm ? null : c.method.value,
    target_url: llm ? null : text(c.target_url) || null,
    target_base_url: llm ? text(c.target_base_url) || null : null,
    api_format: llm ? c.api_format.value : null,
    max_retries: retries === '' ? null : Number(retries),
    retry_on: text(c.retry_on) || null,
    probe_path: llm ? null : text(c.probe_path) || null,
    revalidate_interval: revalidate === '' ? null : Number(revalidate),
    idle_timeout: c.idle_timeout,
  };
}

/** The fields the page requires before sending (the server checks formats). */
function missingFields(body) {
  const required = body.config_type === 'LLM'
    ? ['name', 'slug', 'target_base_url']
    : ['name', 'slug', 'target_url', 'api_key_location', 'api_key_name'];
  return required.filter((name) => !body[name]);
}

/** Renders the create (`id` undefined) or edit form into `main`. */
export function renderServiceForm(main, { id }) {
  const editing = id !== undefined;
  const heading = h('h1', { tabindex: '-1', text: () => t(editing ? 'form.editTitle' : 'form.newTitle') });
  const page = h('section', { class: 'page page-narrow', testid: 'service-form-page' },
    h('a', { class: 'back-link', href: '#/services', text: () => t('common.backToServices') }),
    heading,
    h('div', { class: 'panel', 'aria-busy': 'true' }, h('p', { class: 'muted', text: () => t('common.loading') })));
  main.replaceChildren(page);

  const show = (service) => {
    const form = buildForm(service, editing);
    page.lastChild.replaceWith(form);
    if (!editing) form.querySelector('[name=name]').focus();
  };
  if (!editing) show({});
  else {
    api.getService(id).then(show, (err) => {
      replace(page.lastChild, h('p', { class: 'alert alert-error', text: () => t('form.loadFailed') }));
      page.lastChild.removeAttribute('aria-busy');
      reportError(err, 'form.loadFailedDetail');
    });
  }
  return heading;
}

function buildForm(service, editing) {
  const c = buildControls(service);
  const formError = h('p', { class: 'alert alert-error', role: 'alert', testid: 'form-error', hidden: true });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'form-submit', text: () => t(editing ? 'form.save' : 'form.create') });
  let type = service.config_type === 'LLM' ? 'LLM' : 'GENERIC';
  let slugTouched = editing;

  const genericPart = h('div', { class: 'form-grid', testid: 'generic-fields' },
    field({ label: () => t('form.method'), control: c.method, hint: () => t('form.methodHint') }),
    field({ label: () => t('form.targetUrl'), control: c.target_url, hint: () => t('form.targetUrlHint'), className: 'span-2' }));
  const llmPart = h('div', { class: 'form-grid', testid: 'llm-fields' },
    field({ label: () => t('form.apiFormat'), control: c.api_format }),
    field({ label: () => t('form.targetBaseUrl'), control: c.target_base_url, hint: () => t('form.targetBaseUrlHint'), className: 'span-2' }));
  const probePart = field({ label: () => t('form.probePath'), control: c.probe_path, hint: () => t('form.probePathHint'), className: 'span-2' });
  const locationHint = h('p', { class: 'hint', text: () => t(type === 'LLM' ? 'form.keyLlmHint' : 'form.keyGenericHint') });
  bind(c.target_base_url, 'placeholder', () => BASE_URL_PLACEHOLDERS[c.api_format.value]);
  bind(c.api_key_name, 'placeholder', () => (type === 'LLM'
    ? t('form.keyNameDefault', { name: DEFAULT_KEY_NAMES[c.api_format.value] })
    : t('form.keyNamePlaceholder')));

  const sync = () => {
    const llm = type === 'LLM';
    genericPart.hidden = llm;
    probePart.hidden = llm;
    llmPart.hidden = !llm;
    c.api_key_location.options[0].hidden = !llm;
    if (!llm && !c.api_key_location.value) c.api_key_location.value = 'header';
    refreshBindings(form);
  };

  c.method.value = METHODS.includes(c.initial.method) ? c.initial.method : 'GET';
  c.api_format.value = c.initial.format;
  c.api_key_location.value = c.initial.location;
  c.api_format.addEventListener('change', sync);
  c.name.addEventListener('input', () => { if (!slugTouched) c.slug.value = slugify(c.name.value); });
  c.slug.addEventListener('input', () => { slugTouched = true; });

  const form = h('form', { class: 'panel form', testid: 'service-form', novalidate: true },
    formError,
    h('fieldset', { class: 'choices', disabled: editing },
      h('legend', { text: () => t('form.type') }),
      typeChoice('GENERIC', 'type.generic', 'form.genericHint', type, editing),
      typeChoice('LLM', 'type.llm', 'form.llmHint', type, editing)),
    h('div', { class: 'form-grid' },
      field({ label: () => t('form.name'), control: c.name }),
      field({ label: () => t('form.slug'), control: c.slug, hint: () => t('form.slugHint') })),
    genericPart,
    llmPart,
    h('fieldset', { class: 'group' },
      h('legend', { text: () => t('form.upstreamKey') }),
      locationHint,
      h('div', { class: 'form-grid' },
        field({ label: () => t('form.keyLocation'), control: c.api_key_location }),
        field({ label: () => t('form.keyName'), control: c.api_key_name }))),
    h('label', { class: 'check' }, c.is_active, h('span', { text: () => t('form.isActive') })),
    h('details', { class: 'advanced', testid: 'advanced', open: hasAdvancedSettings(service) },
      h('summary', { text: () => t('form.advanced') }),
      h('div', { class: 'form-grid' },
        field({ label: () => t('form.maxRetries'), control: c.max_retries, hint: () => t('form.maxRetriesHint') }),
        field({ label: () => t('form.retryOn'), control: c.retry_on, hint: () => t('form.retryOnHint') }),
        probePart,
        field({ label: () => t('form.revalidate'), control: c.revalidate_interval, hint: () => t('form.revalidateHint') }))),
    h('div', { class: 'form-actions' },
      h('a', { class: 'btn', href: '#/services', testid: 'form-cancel', text: () => t('common.cancel') }),
      submit));

  clearErrorsOnInput(form);
  form.addEventListener('change', (event) => {
    if (event.target.name === 'config_type') {
      type = event.target.value;
      sync();
    }
  });
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    save(form, formError, submit, payload(c, type), service.id);
  });
  sync();
  return form;
}

function showError(form, formError, err) {
  const fieldName = err.field ?? null;
  const message = errorText(err);
  if (fieldName && setFieldError(form, fieldName, message)) {
    const control = form.querySelector(`[name="${CSS.escape(fieldName)}"]`);
    const details = control?.closest('details');
    if (details) details.open = true;
    control?.focus();
    return;
  }
  formError.textContent = t('form.saveFailed', { error: message });
  formError.hidden = false;
  formError.scrollIntoView({ block: 'nearest' });
}

async function save(form, formError, submit, body, id) {
  clearFieldErrors(form);
  formError.hidden = true;
  const missing = missingFields(body);
  if (missing.length) {
    for (const name of missing) setFieldError(form, name, t('form.required'));
    form.querySelector(`[name="${missing[0]}"]`)?.focus();
    return;
  }
  try {
    await busy(submit, () => (id === undefined ? api.createService(body) : api.updateService(id, body)));
    toast(t(id === undefined ? 'form.created' : 'form.saved', { name: body.name }), 'success');
    location.hash = '#/services';
  } catch (err) {
    if (!(err instanceof SessionExpiredError)) showError(form, formError, err);
  }
}
