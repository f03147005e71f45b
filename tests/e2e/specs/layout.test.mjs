// Phone-width layout (no horizontal page overflow) and keyboard use of dialogs.
import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import { adminApi, serviceRow, signIn, useSuite } from '../lib/app.mjs';
import { PHONE, screenshot } from '../lib/browser.mjs';

/** Asserts that the page does not scroll sideways. */
async function assertNoHorizontalOverflow(page, screen) {
  const { scrollWidth, clientWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    clientWidth: document.documentElement.clientWidth,
  }));
  assert.ok(scrollWidth <= clientWidth, `${screen}: page is ${scrollWidth}px wide in a ${clientWidth}px viewport`);
}

describe('layout and keyboard', () => {
  const suite = useSuite();
  let llm;

  before(async () => {
    const api = await adminApi(suite.server.url);
    await api.createService({ name: 'Weather with a rather long service name', slug: 'weather-with-a-long-slug', target_url: 'https://api.weatherstack.com/current/with/a/very/long/path/that/could/overflow' });
    llm = await api.createService({ name: 'Gemini', slug: 'gemini', config_type: 'LLM', method: null, target_url: null, api_key_location: null, api_key_name: null, target_base_url: 'https://generativelanguage.googleapis.com', api_format: 'gemini_native' });
    await api.importKeys(llm.id, ['AIzaSy-phone-width-key-0000000000000001', 'AIzaSy-phone-width-key-0000000000000002']);
  });

  it('has no horizontal overflow at phone width', () => suite.withPage({ viewport: PHONE }, async ({ page }) => {
    await page.goto('/');
    await page.getByTestId('login-form').waitFor();
    await assertNoHorizontalOverflow(page, 'login');

    await signIn(page);
    await serviceRow(page, 'gemini').waitFor();
    await assertNoHorizontalOverflow(page, 'services');
    await screenshot(page, 'services-phone');

    await serviceRow(page, 'gemini').getByTestId('service-use').click();
    await page.getByTestId('usage-dialog').waitFor();
    await assertNoHorizontalOverflow(page, 'usage dialog');
    await page.keyboard.press('Escape');

    await page.goto('/#/services/new');
    await page.getByTestId('service-form').waitFor();
    await assertNoHorizontalOverflow(page, 'service form');

    await page.goto(`/#/services/${llm.id}/keys`);
    await page.getByTestId('key-row').first().waitFor();
    await assertNoHorizontalOverflow(page, 'key manager');
    await screenshot(page, 'key-manager-phone');

    await page.getByTestId('open-import').click();
    await page.getByTestId('import-dialog').waitFor();
    await assertNoHorizontalOverflow(page, 'import dialog');
  }));

  it('opens and closes dialogs from the keyboard', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    const remove = serviceRow(page, 'gemini').getByTestId('service-delete');
    await remove.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByTestId('confirm-dialog');
    await dialog.waitFor();
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'confirm-ok', 'focus moves into the dialog');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await serviceRow(page, 'gemini').waitFor();

    // The status switch is a real button: Space opens its confirmation.
    await serviceRow(page, 'gemini').getByTestId('service-status').focus();
    await page.keyboard.press('Space');
    await dialog.waitFor();
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    assert.equal(await serviceRow(page, 'gemini').getByTestId('service-status').getAttribute('aria-checked'), 'true');
  }));
});
