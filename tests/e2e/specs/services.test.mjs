// Creating, editing, enabling/disabling and deleting services, and their proxy URL and snippet.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { confirm, serviceRow, signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';
import { assertContains, assertText } from '../lib/assert-text.mjs';

/** Fills the common part of the service form. */
async function fillNameAndSlug(page, name, slug) {
  await page.getByTestId('input-name').fill(name);
  await page.getByTestId('input-slug').fill(slug);
}

async function openUsage(page, slug) {
  await serviceRow(page, slug).getByTestId('service-use').click();
  const dialog = page.getByTestId('usage-dialog');
  await dialog.waitFor();
  return dialog;
}

describe('services', () => {
  const suite = useSuite();

  it('creates a GENERIC service, showing the API validation error next to the field', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await signIn(page);
    await page.getByTestId('new-service').click();
    await page.getByTestId('service-form').waitFor();
    assert.equal(await page.getByTestId('type-generic').isChecked(), true, 'GENERIC is the default type');
    assert.equal(await page.getByTestId('llm-fields').isVisible(), false);

    // Required fields are checked before sending.
    await page.getByTestId('form-submit').click();
    await assertText(page.getByTestId('error-name'), 'This field is required.');

    await fillNameAndSlug(page, 'Weather', 'Bad Slug!');
    await page.getByTestId('input-method').selectOption('POST');
    await page.getByTestId('input-target_url').fill('https://api.weatherstack.com/current');
    await page.getByTestId('input-api_key_location').selectOption('query');
    await page.getByTestId('input-api_key_name').fill('access_key');
    tab.expectHttpError(400);
    await page.getByTestId('form-submit').click();
    const slugError = page.getByTestId('error-slug');
    await slugError.waitFor();
    await screenshot(page, 'service-form', { height: 1140 });
    assert.ok((await slugError.textContent()).trim().length > 0, 'the server message is shown under the slug');
    assert.equal(await page.getByTestId('error-name').isVisible(), false);
    assert.equal(await page.getByTestId('input-slug').getAttribute('aria-invalid'), 'true');

    await page.getByTestId('input-slug').fill('weather');
    await page.getByTestId('form-submit').click();
    await page.getByTestId('services-table').waitFor();
    const row = serviceRow(page, 'weather');
    await assertText(row.getByTestId('service-name'), 'Weather');
    await assertText(row.getByTestId('service-target'), 'https://api.weatherstack.com/current');
    await assertContains(row, 'Generic API');
    await assertText(row.getByTestId('service-key-count'), '0 / 0');
  }));

  it('creates an LLM service and rejects a duplicate slug', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await signIn(page);
    await page.getByTestId('new-service').click();
    await page.getByTestId('type-llm').check();
    assert.equal(await page.getByTestId('generic-fields').isVisible(), false);
    await fillNameAndSlug(page, 'Claude', 'weather');
    await page.getByTestId('input-api_format').selectOption('anthropic_native');
    assert.equal(await page.getByTestId('input-target_base_url').getAttribute('placeholder'), 'https://api.anthropic.com');
    await page.getByTestId('input-target_base_url').fill('https://api.anthropic.com');
    await page.getByTestId('advanced').locator('summary').click();
    await page.getByTestId('input-max_retries').fill('99');
    tab.expectHttpError(400);
    await page.getByTestId('form-submit').click();
    await page.getByTestId('error-max_retries').waitFor();
    await page.getByTestId('input-max_retries').fill('3');
    assert.equal(await page.getByTestId('error-max_retries').isVisible(), false, 'the error goes once the field is edited');
    tab.expectHttpError(409);
    await page.getByTestId('form-submit').click();
    await page.getByTestId('error-slug').waitFor();

    await page.getByTestId('input-slug').fill('claude');
    await page.getByTestId('form-submit').click();
    const row = serviceRow(page, 'claude');
    await row.waitFor();
    await assertText(row.getByTestId('service-target'), 'https://api.anthropic.com');
    await assertContains(row, 'LLM API');
    await screenshot(page, 'services');

    await page.getByTestId('services-table').locator('[data-slug="claude"]').getByTestId('service-edit').click();
    await page.getByTestId('service-form').waitFor();
    assert.equal(await page.getByTestId('type-llm').isChecked(), true);
    assert.equal(await page.getByTestId('type-generic').isDisabled(), true, 'the type cannot change when editing');
    assert.equal(await page.getByTestId('input-max_retries').inputValue(), '3');
    assert.equal(await page.getByTestId('input-api_format').inputValue(), 'anthropic_native');
    await page.getByTestId('input-name').fill('Claude (Anthropic)');
    await page.getByTestId('form-submit').click();
    await assertText(serviceRow(page, 'claude').getByTestId('service-name'), 'Claude (Anthropic)');
  }));

  it('shows the proxy URL and a ready-made snippet for each type', () => suite.withPage({}, async ({ page, context }) => {
    await context.grantPermissions(['clipboard-read', 'clipboard-write']);
    await signIn(page);
    const base = suite.server.url;

    let dialog = await openUsage(page, 'weather');
    assert.equal(await dialog.getByTestId('proxy-url').inputValue(), `${base}/proxy/weather`);
    const curl = await dialog.getByTestId('snippet').textContent();
    assert.match(curl, /^curl -X POST "http:\/\/127\.0\.0\.1:\d+\/proxy\/weather"/);
    assert.ok(curl.includes('-H "X-Proxy-Key: <your proxy key>"'));
    await dialog.getByTestId('copy-url').click();
    await page.getByTestId('toast').filter({ hasText: 'Copied' }).first().waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), `${base}/proxy/weather`);
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });

    dialog = await openUsage(page, 'claude');
    assert.equal(await dialog.getByTestId('proxy-url').inputValue(), `${base}/llm/claude`);
    const python = await dialog.getByTestId('snippet').textContent();
    assert.ok(python.includes('from anthropic import Anthropic'));
    assert.ok(python.includes(`base_url="${base}/llm/claude"`));
    await screenshot(page, 'usage-dialog');
    await dialog.getByTestId('dialog-close').click();
    await dialog.waitFor({ state: 'detached' });
  }));

  it('disables and re-enables a service after confirmation', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    const toggle = serviceRow(page, 'weather').getByTestId('service-status');
    assert.equal(await toggle.getAttribute('aria-checked'), 'true');

    await toggle.click();
    await page.getByTestId('confirm-cancel').click();
    assert.equal(await toggle.getAttribute('aria-checked'), 'true', 'cancel leaves the service as it was');

    await toggle.click();
    await assertContains(page.getByTestId('confirm-message'), 'Disable “Weather”?');
    await confirm(page);
    await page.waitForFunction(() => document.querySelector('[data-slug="weather"] [data-testid="service-status"]').getAttribute('aria-checked') === 'false');
    await page.reload();
    assert.equal(await serviceRow(page, 'weather').getByTestId('service-status').getAttribute('aria-checked'), 'false', 'the change is saved');

    await serviceRow(page, 'weather').getByTestId('service-status').click();
    await confirm(page);
    await page.waitForFunction(() => document.querySelector('[data-slug="weather"] [data-testid="service-status"]').getAttribute('aria-checked') === 'true');
  }));

  it('shows confirmations and messages in the chosen language', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.getByTestId('locale-select').selectOption('zh-CN');
    await serviceRow(page, 'weather').getByTestId('service-delete').click();
    await assertText(page.getByTestId('confirm-dialog').locator('h2'), '删除服务？');
    await assertContains(page.getByTestId('confirm-message'), '删除“Weather”');
    await assertText(page.getByTestId('confirm-cancel'), '取消');
    await page.getByTestId('confirm-cancel').click();
    await serviceRow(page, 'weather').getByTestId('service-use').click();
    await page.getByTestId('usage-dialog').getByTestId('copy-url').click();
    await page.getByTestId('toast').filter({ hasText: '已复制到剪贴板。' }).waitFor();
    await page.keyboard.press('Escape');
    await page.getByTestId('locale-select').selectOption('en');
  }));

  it('deletes a service after confirmation', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await serviceRow(page, 'claude').getByTestId('service-delete').click();
    await assertContains(page.getByTestId('confirm-message'), 'Delete “Claude (Anthropic)”');
    await confirm(page);
    await serviceRow(page, 'claude').waitFor({ state: 'detached' });
    await page.reload();
    await serviceRow(page, 'weather').waitFor();
    assert.equal(await serviceRow(page, 'claude').count(), 0);
  }));
});
