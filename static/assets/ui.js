// Shared widgets: toasts, modal dialogs, switches, form fields, clipboard and downloads.
import { h, nextId } from './dom.js';
import { t } from './i18n.js';
import { SessionExpiredError } from './api.js';

// ---- toasts ----------------------------------------------------------------------------------

/**
 * The toast region is a manual popover, so it sits in the top layer; showing it again after a
 * dialog opened puts it above that dialog's backdrop.
 */
function raiseToasts(region) {
  if (!region.showPopover) return;
  if (region.matches(':popover-open')) region.hidePopover();
  if (region.childElementCount) region.showPopover();
}

/** Shows a short message in the corner. `kind`: info, success or error. */
export function toast(message, kind = 'info') {
  const region = document.getElementById('toasts');
  const dismiss = () => {
    item.remove();
    raiseToasts(region);
  };
  const item = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: 'toast', 'data-kind': kind },
    h('span', { class: 'toast-text', text: message }),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': () => t('common.dismiss'), onclick: dismiss }, '×'));
  region.append(item);
  raiseToasts(region);
  setTimeout(dismiss, kind === 'error' ? 8000 : 4000);
}

/** A readable text for a failed call. */
export function errorText(err) {
  if (err?.status === 0) return t('error.network');
  if (err?.serverMessage) return err.serverMessage;
  if (err?.status) return t('error.status', { status: err.status });
  return String(err?.message ?? err);
}

/** Toasts `t(key, {error})` for a failed call; a session expiry is already handled elsewhere. */
export function reportError(err, key) {
  if (err instanceof SessionExpiredError) return;
  toast(t(key, { error: errorText(err) }), 'error');
}

// ---- dialogs ---------------------------------------------------------------------------------

/**
 * Opens a modal `<dialog>` (focus is kept inside it, Escape closes it) and removes it once closed.
 * `content` and `actions` are nodes; returns the dialog element. `onClose` runs after closing.
 */
export function openDialog({ title, content, actions, testid, onClose, wide = false }) {
  const titleId = nextId('dialog-title');
  const dialog = h('dialog', { class: `modal${wide ? ' modal-wide' : ''}`, testid, 'aria-labelledby': titleId },
    h('div', { class: 'modal-head' },
      h('h2', { id: titleId, text: title }),
      h('button', { type: 'button', class: 'btn btn-icon', testid: 'dialog-close', 'aria-label': () => t('common.close'), onclick: () => dialog.close() }, '×')),
    h('div', { class: 'modal-body' }, content),
    actions ? h('div', { class: 'modal-actions' }, actions) : null);
  dialog.addEventListener('close', () => {
    dialog.remove();
    onClose?.(dialog.returnValue);
  });
  document.body.append(dialog);
  dialog.showModal();
  return dialog;
}

/** Closes every open dialog (used when the screen changes). */
export function closeAllDialogs() {
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
}

/** Asks a yes/no question in a modal; resolves true only if confirmed. */
export function confirmDialog({ title, message, confirmLabel, danger = false }) {
  return new Promise((resolve) => {
    let confirmed = false;
    const ok = h('button', {
      type: 'button', class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, testid: 'confirm-ok', text: confirmLabel,
      onclick: () => { confirmed = true; dialog.close(); },
    });
    const dialog = openDialog({
      title,
      testid: 'confirm-dialog',
      content: h('p', { class: 'confirm-message', testid: 'confirm-message', text: message }),
      actions: [
        h('button', { type: 'button', class: 'btn', testid: 'confirm-cancel', text: t('common.cancel'), onclick: () => dialog.close() }),
        ok,
      ],
      onClose: () => resolve(confirmed),
    });
    ok.focus();
  });
}

// ---- controls --------------------------------------------------------------------------------

/** An on/off switch button; `onToggle(next)` decides whether and when the state changes. */
export function switchButton({ checked, label, testid, onToggle }) {
  const button = h('button', { type: 'button', class: 'switch', role: 'switch', testid, 'aria-label': label },
    h('span', { class: 'switch-track', 'aria-hidden': 'true' }, h('span', { class: 'switch-thumb' })));
  setSwitch(button, checked);
  button.addEventListener('click', () => onToggle(button.getAttribute('aria-checked') !== 'true'));
  return button;
}

export function setSwitch(button, checked) {
  button.setAttribute('aria-checked', String(Boolean(checked)));
}

/** Marks a button busy (disabled, spinner) while `work` runs. */
export async function busy(button, work) {
  button.disabled = true;
  button.classList.add('is-busy');
  try {
    return await work();
  } finally {
    button.disabled = false;
    button.classList.remove('is-busy');
  }
}

/**
 * A labelled form field with a hint and an error line (`data-testid="error-<name>"`).
 * `control` must carry `name`; it gets an id for the label. `addon` (a button) sits beside it.
 */
export function field({ label, control, hint, addon, className = '' }) {
  const name = control.name;
  control.id ||= nextId(`field-${name}`);
  const errorId = `${control.id}-error`;
  const hintId = hint ? `${control.id}-hint` : null;
  control.setAttribute('aria-describedby', [hintId, errorId].filter(Boolean).join(' '));
  return h('div', { class: `field ${className}`.trim(), 'data-field': name },
    h('label', { for: control.id, text: label }),
    addon ? h('div', { class: 'input-with-button' }, control, addon) : control,
    hint ? h('p', { class: 'hint', id: hintId, text: hint }) : null,
    h('p', { class: 'field-error', id: errorId, testid: `error-${name}`, hidden: true }));
}

/** Shows (or with an empty message, hides) the error line of field `name` inside `root`. */
export function setFieldError(root, name, message) {
  const wrapper = root.querySelector(`[data-field="${CSS.escape(name)}"]`);
  if (!wrapper) return false;
  const control = wrapper.querySelector('input, select, textarea');
  const line = wrapper.querySelector('.field-error');
  line.textContent = message ?? '';
  line.hidden = !message;
  if (message) control?.setAttribute('aria-invalid', 'true');
  else control?.removeAttribute('aria-invalid');
  return true;
}

/** Hides a field's error as soon as the user edits that field. */
export function clearErrorsOnInput(form) {
  const clear = (event) => {
    if (event.target.name) setFieldError(form, event.target.name, '');
  };
  form.addEventListener('input', clear);
  form.addEventListener('change', clear);
}

export function clearFieldErrors(root) {
  for (const line of root.querySelectorAll('.field-error')) {
    line.hidden = true;
    line.textContent = '';
  }
  for (const control of root.querySelectorAll('[aria-invalid]')) control.removeAttribute('aria-invalid');
}

/** A `<select>` from `[value, label]` pairs; a label may be a function (live binding). */
export function select(props, options) {
  return h('select', props, options.map(([value, label]) => h('option', { value, text: label })));
}

// ---- clipboard and downloads -----------------------------------------------------------------

/** Copies text, with the textarea fallback for pages not served over a secure context. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h('textarea', { class: 'offscreen', readOnly: true, value: text, 'aria-hidden': 'true' });
    document.body.append(area);
    area.select();
    const done = document.execCommand('copy');
    area.remove();
    return done;
  }
}

/** Offers `text` as a file download. */
export function downloadText(fileName, text) {
  const url = URL.createObjectURL(new Blob([text], { type: 'text/plain;charset=utf-8' }));
  const link = h('a', { href: url, download: fileName, class: 'offscreen' });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
