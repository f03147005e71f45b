// Entry point: language picker, session handling and the hash router.
import { api, session, setSessionExpiredHandler } from './api.js';
import { applyLocale, getLocale, LANGUAGES, setLocale, t } from './i18n.js';
import { closeAllDialogs, toast } from './ui.js';
import { renderLogin } from './views/login.js';
import { renderServices } from './views/services.js';
import { renderServiceForm } from './views/service-form.js';
import { renderKeys } from './views/keys.js';
import { renderDashboard } from './views/dashboard.js';
import { renderClientKeys } from './views/client-keys.js';

const main = document.getElementById('app');
const logoutButton = document.getElementById('logout');
const dashboardLink = document.getElementById('dashboard-link');
const clientsLink = document.getElementById('clients-link');
const localeSelect = document.getElementById('locale-select');

let configPromise = null;
/** `/admin/app-config`, fetched once; the page's own origin if it cannot be read. */
function appConfig() {
  configPromise ??= api.appConfig().catch(() => {
    configPromise = null;
    return { proxy_public_base_url: location.origin };
  });
  return configPromise;
}

/** `#/services`, `#/services/new`, `#/services/:id/edit`, `#/services/:id/keys`, `#/dashboard`, `#/client-keys`. */
export function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean);
  if (parts[0] === 'dashboard') return { name: 'dashboard' };
  if (parts[0] === 'client-keys') return { name: 'clients' };
  if (parts[0] !== 'services' || parts.length === 1) return { name: 'services' };
  if (parts[1] === 'new') return { name: 'new' };
  if (/^\d+$/.test(parts[1]) && (parts[2] === 'edit' || parts[2] === 'keys')) return { name: parts[2], id: Number(parts[1]) };
  return { name: 'services' };
}

function showLogin(notice) {
  closeAllDialogs();
  logoutButton.hidden = true;
  dashboardLink.hidden = true;
  clientsLink.hidden = true;
  renderLogin(main, { notice, onSuccess: render });
}

function render() {
  closeAllDialogs();
  if (!session.token()) {
    showLogin(null);
    return;
  }
  logoutButton.hidden = false;
  dashboardLink.hidden = false;
  clientsLink.hidden = false;
  const route = parseRoute(location.hash);
  const views = {
    services: () => renderServices(main, { config: appConfig }),
    new: () => renderServiceForm(main, {}),
    edit: () => renderServiceForm(main, { id: route.id }),
    keys: () => renderKeys(main, { id: route.id }),
    dashboard: () => renderDashboard(main),
    clients: () => renderClientKeys(main),
  };
  const heading = views[route.name]();
  heading?.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

let expiredShown = false;
setSessionExpiredHandler(() => {
  if (expiredShown) return;
  expiredShown = true;
  showLogin(t('session.expired'));
  // Several calls may fail together; show the login screen once for all of them.
  setTimeout(() => { expiredShown = false; }, 1000);
});

logoutButton.addEventListener('click', () => {
  session.clear();
  showLogin(null);
  toast(t('session.loggedOut'), 'info');
});

for (const { code, label } of LANGUAGES) {
  localeSelect.append(new Option(label, code, false, code === getLocale()));
}
localeSelect.addEventListener('change', () => setLocale(localeSelect.value));

window.addEventListener('hashchange', render);
applyLocale();
render();
