// Login screen.
import { h, refreshBindings } from '../dom.js';
import { t } from '../i18n.js';
import { api, session } from '../api.js';
import { busy, errorText, field } from '../ui.js';

function loginErrorText(err) {
  if (err.status === 401) return t('login.invalid');
  if (err.status === 429) {
    return err.retryAfter === null ? t('login.throttledNoTime') : t('login.throttled', { n: err.retryAfter });
  }
  return t('login.failed', { error: errorText(err) });
}

/** Renders the login card into `main`; `notice` is an info line (e.g. session expired). */
export function renderLogin(main, { notice, onSuccess }) {
  const error = h('p', { class: 'alert alert-error', role: 'alert', testid: 'login-error', hidden: true });
  const username = h('input', { name: 'username', autocomplete: 'username', required: true, testid: 'login-username', value: 'admin' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, testid: 'login-password' });
  const reveal = h('button', {
    type: 'button', class: 'btn btn-ghost btn-sm', 'aria-pressed': 'false', testid: 'login-reveal',
    text: () => t(password.type === 'password' ? 'login.show' : 'login.hide'),
    onclick: () => {
      const show = password.type === 'password';
      password.type = show ? 'text' : 'password';
      reveal.setAttribute('aria-pressed', String(show));
      refreshBindings(reveal.parentElement);
    },
  });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-block', testid: 'login-submit', text: () => t('login.submit') });

  const form = h('form', { class: 'card login-card', testid: 'login-form', novalidate: true },
    h('h1', { class: 'login-title', tabindex: '-1', text: () => t('login.title') }),
    h('p', { class: 'muted', text: () => t('login.subtitle') }),
    notice ? h('p', { class: 'alert alert-info', role: 'status', testid: 'login-notice', text: notice }) : null,
    error,
    field({ label: () => t('login.username'), control: username }),
    field({ label: () => t('login.password'), control: password, addon: reveal }),
    submit);

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!username.value.trim() || !password.value) {
      error.textContent = t('login.missing');
      error.hidden = false;
      (username.value.trim() ? password : username).focus();
      return;
    }
    try {
      const reply = await busy(submit, () => api.login(username.value.trim(), password.value));
      if (!reply?.access_token) throw new Error(t('login.noToken'));
      session.save(reply.access_token);
      onSuccess();
    } catch (err) {
      error.textContent = loginErrorText(err);
      error.hidden = false;
      password.select();
    }
  });

  main.replaceChildren(h('section', { class: 'login-page' }, form));
  (username.value ? password : username).focus();
}
