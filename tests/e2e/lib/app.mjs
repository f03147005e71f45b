// Shared steps: a server + browser per test file, signing in, and the admin API for setup.
import { after, before } from 'node:test';
import { ADMIN_PASSWORD, startServer } from './server.mjs';
import { launchBrowser, openPage } from './browser.mjs';

/** Starts a server and a browser before the file's tests and stops them after. */
export function useSuite(env = {}) {
  const suite = {
    server: null,
    browser: null,
    /** Opens a page (see openPage) on this suite's server. */
    open: (options) => openPage(suite.browser, suite.server.url, options),
    /** Runs `fn(tab)` on a fresh page, fails on any unexpected console error, then closes it. */
    async withPage(options, fn) {
      const tab = await suite.open(options);
      try {
        await fn(tab);
        tab.assertClean();
      } finally {
        await tab.close();
      }
    },
  };
  before(async () => {
    suite.server = await startServer(env);
    suite.browser = await launchBrowser();
  });
  after(async () => {
    await suite.browser?.close();
    await suite.server?.stop();
  });
  return suite;
}

/** Signs in through the login screen and waits for the services list. */
export async function signIn(page, password = ADMIN_PASSWORD) {
  await page.goto('/');
  await page.getByTestId('login-username').fill('admin');
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('services-page').waitFor();
}

/** Clicks the confirm button of the open confirm dialog. */
export async function confirm(page) {
  await page.getByTestId('confirm-dialog').getByTestId('confirm-ok').click();
  await page.getByTestId('confirm-dialog').waitFor({ state: 'detached' });
}

export function serviceRow(page, slug) {
  return page.locator(`[data-testid="service-row"][data-slug="${slug}"]`);
}

/** The admin API, for test setup that is not itself under test. */
export async function adminApi(baseUrl) {
  const login = await fetch(`${baseUrl}/admin/login`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: 'admin', password: ADMIN_PASSWORD }),
  });
  if (!login.ok) throw new Error(`login failed: ${login.status}`);
  const { access_token: token } = await login.json();
  const call = async (method, path, body) => {
    const response = await fetch(`${baseUrl}${path}`, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
    return data;
  };
  return {
    createService: (fields) => call('POST', '/admin/proxy-configs', {
      config_type: 'GENERIC', is_active: true, method: 'GET', api_key_location: 'header', api_key_name: 'Authorization',
      target_url: 'https://example.invalid/api', target_base_url: null, api_format: null, max_retries: 2, ...fields,
    }),
    importKeys: (id, keys) => call('POST', `/admin/proxy-configs/${id}/keys/batch`, { keys }),
    listKeys: (id) => call('GET', `/admin/proxy-configs/${id}/keys?reveal=true`),
    listServices: () => call('GET', '/admin/proxy-configs'),
    createClientKey: (fields) => call('POST', '/admin/client-keys', fields),
  };
}
