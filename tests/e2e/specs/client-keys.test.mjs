// Client keys in the admin page: create (the secret shown once), use it through the proxy,
// edit its limits, revoke it, field errors, the dashboard's client key filter, both languages.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { adminApi, confirm, signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';
import { startUpstream } from '../lib/upstream.mjs';
import { assertContains, assertText } from '../lib/assert-text.mjs';

async function chat(baseUrl, secret, model = 'gpt-4o-mini') {
  const response = await fetch(`${baseUrl}/llm/chat/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${secret}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages: [] }),
  });
  await response.text();
  return response.status;
}

async function openClients(page) {
  await signIn(page);
  await page.getByTestId('nav-clients').click();
  await page.getByTestId('clients-page').waitFor();
}

describe('client keys', () => {
  const suite = useSuite({ STATS_FLUSH_SECONDS: '0.5' });
  let upstream;

  before(async () => {
    upstream = await startUpstream();
    const api = await adminApi(suite.server.url);
    const svc = await api.createService({ name: 'Chat', slug: 'chat', config_type: 'LLM', method: null, target_url: null, api_key_location: null, api_key_name: null, target_base_url: `${upstream.url}/v1`, api_format: 'openai_compatible', max_retries: 0 });
    await api.importKeys(svc.id, ['sk-good-client-keys-0001']);
  });
  after(() => upstream?.stop());

  it('creates a key, shows its secret once, and the key works within its scope and limit', () => suite.withPage({}, async ({ page }) => {
    await openClients(page);
    await page.getByTestId('clients-empty').waitFor();
    await page.getByTestId('new-client').click();
    const dialog = page.getByTestId('client-dialog');
    await dialog.getByTestId('client-name').fill('Mobile app');
    await dialog.getByTestId('client-note').fill('iOS build');
    await dialog.getByTestId('client-services').fill('chat');
    await dialog.getByTestId('client-models').fill('gpt-4o*, o3');
    await dialog.getByTestId('client-rpm').fill('2');
    await dialog.getByTestId('client-save').click();

    const shown = page.getByTestId('client-secret-dialog');
    await shown.waitFor();
    const secret = await shown.getByTestId('client-secret').inputValue();
    assert.match(secret, /^akr-[A-Za-z0-9_-]{43}$/);
    await shown.getByTestId('dialog-close').click();

    const row = page.getByTestId('client-row');
    await assertText(row.getByTestId('client-name'), 'Mobile app');
    await assertText(row.getByTestId('client-prefix'), `${secret.slice(0, 10)}…`);
    await assertText(row.getByTestId('client-limits'), '2/min');
    await assertContains(row.getByTestId('client-scope'), 'chat');
    assert.ok(!(await page.content()).includes(secret), 'the secret is gone from the page');

    assert.equal(await chat(suite.server.url, secret), 200);
    assert.equal(await chat(suite.server.url, secret, 'claude-3'), 403, 'a model the key may not use');
    assert.equal(await chat(suite.server.url, secret), 200);
    assert.equal(await chat(suite.server.url, secret), 429, 'over 2 a minute');
    assert.ok(upstream.requests.every((r) => !r.key.startsWith('akr-')), 'the client key never went upstream');

    await page.reload();
    await page.getByTestId('clients-page').waitFor();
    await assertContains(page.getByTestId('client-used'), String(new Date().getFullYear()));
    await screenshot(page, 'client-keys');
  }));

  it('edits limits, shows field errors from the server, and revokes with a confirmation', () => suite.withPage({}, async ({ page, expectHttpError }) => {
    const api = await adminApi(suite.server.url);
    const created = await api.createClientKey({ name: 'Batch job', rpd: 1000 });
    await openClients(page);
    const row = page.locator(`[data-testid="client-row"][data-id="${created.id}"]`);
    await assertText(row.getByTestId('client-limits'), '1,000/day');

    await row.getByTestId('client-edit').click();
    const dialog = page.getByTestId('client-dialog');
    await dialog.getByTestId('client-models').fill('a*b');
    expectHttpError(400);
    await dialog.getByTestId('client-save').click();
    await assertContains(dialog.getByTestId('error-models'), 'models must be');
    await dialog.getByTestId('client-models').fill('');
    await dialog.getByTestId('client-rpd').fill('');
    await dialog.getByTestId('client-max_streams').fill('3');
    await dialog.getByTestId('client-save').click();
    await dialog.waitFor({ state: 'detached' });
    await assertText(row.getByTestId('client-limits'), '3 at once');

    assert.equal(await chat(suite.server.url, created.secret), 200);
    await row.getByTestId('client-status').click();
    await confirm(page);
    assert.equal(await row.getByTestId('client-status').getAttribute('aria-checked'), 'false');
    assert.equal(await chat(suite.server.url, created.secret), 401, 'revoked');
  }));

  it('filters the usage dashboard by client key', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.getByTestId('nav-dashboard').click();
    await page.getByTestId('dashboard-page').waitFor();
    const option = page.getByTestId('dash-client').locator('option', { hasText: 'Mobile app' });
    await option.waitFor({ state: 'attached' });
    await page.getByTestId('dash-client').selectOption({ label: await option.textContent() });
    // Mobile app: 2 answered, 1 refused for its model, 1 over its limit.
    await assertText(page.getByTestId('tile-requests').locator('.tile-value'), '4');
    await assertText(page.getByTestId('tile-failures').locator('.tile-value'), '2');
  }));

  it('speaks Chinese', () => suite.withPage({ locale: 'zh-CN' }, async ({ page }) => {
    await openClients(page);
    await assertText(page.locator('h1'), '客户端密钥');
    await assertText(page.getByTestId('nav-clients'), '客户端密钥');
    await assertContains(page.getByTestId('client-limits').first(), '/分钟');
  }));
});
