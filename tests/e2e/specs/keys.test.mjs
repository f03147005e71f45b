// The key manager: add, import (paste and file), toggle, test, export, delete and clear keys.
import assert from 'node:assert/strict';
import { readFile, writeFile, mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { adminApi, confirm, serviceRow, signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';
import { startUpstream } from '../lib/upstream.mjs';
import { assertContains, assertText } from '../lib/assert-text.mjs';

const FIRST_KEY = 'sk-good-first-0123456789abcdef';
// The fake upstream accepts keys starting with sk-good and refuses the others.
const pastedKeys = ['sk-good-paste-aaaa1111', 'sk-bad-paste-bbbb2222', 'sk-good-paste-cccc3333'];
const fileKeys = Array.from({ length: 1203 }, (_, i) => `sk-file-${String(i).padStart(6, '0')}-zzzz`);

async function openKeyManager(page, serviceId) {
  await signIn(page);
  await page.goto(`/#/services/${serviceId}/keys`);
  await page.getByTestId('keys-page').waitFor();
}

async function runImport(page, fill) {
  await page.getByTestId('open-import').click();
  const dialog = page.getByTestId('import-dialog');
  await fill(dialog);
  await dialog.getByTestId('import-submit').click();
  await dialog.getByTestId('import-summary').waitFor();
  return dialog;
}

async function exportKeys(page, scope) {
  await page.getByTestId('open-export').click();
  const dialog = page.getByTestId('export-dialog');
  await dialog.getByTestId(`export-${scope}`).check();
  const download = page.waitForEvent('download');
  await dialog.getByTestId('export-download').click();
  const file = await download;
  const text = await readFile(await file.path(), 'utf8');
  return { name: file.suggestedFilename(), keys: text.split('\n').filter(Boolean) };
}

const keyRow = (page, index) => page.getByTestId('key-row').nth(index);

describe('key manager', () => {
  const suite = useSuite();
  let service;
  let upstream;
  let api;

  before(async () => {
    upstream = await startUpstream();
    api = await adminApi(suite.server.url);
    service = await api.createService({ name: 'OpenAI pool', slug: 'openai-pool', config_type: 'LLM', method: null, target_url: null, api_key_location: null, api_key_name: null, target_base_url: `${upstream.url}/v1`, api_format: 'openai_compatible' });
  });
  after(() => upstream?.stop());

  /** The row of the key whose full value is `value`. */
  async function rowOf(page, value) {
    const key = (await api.listKeys(service.id)).find((k) => k.key_value === value);
    return page.locator(`[data-testid="key-row"][data-key-id="${key.id}"]`);
  }

  it('shows the empty state and adds one key, refusing a duplicate', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await openKeyManager(page, service.id);
    await assertText(page.getByTestId('keys-empty'), 'No keys yet. Add one above or import a list.');
    await page.getByTestId('new-key-input').fill(`  ${FIRST_KEY}  `);
    await page.getByTestId('add-key').click();
    await page.getByTestId('key-row').first().waitFor();
    const shown = await page.getByTestId('key-value').first().textContent();
    assert.notEqual(shown, FIRST_KEY, 'keys are listed masked');
    assert.ok(shown.endsWith(FIRST_KEY.slice(-4)), `the mask keeps the last characters: ${shown}`);
    await assertText(page.getByTestId('key-state').first(), 'Active');

    tab.expectHttpError(409);
    await page.getByTestId('new-key-input').fill(FIRST_KEY);
    await page.getByTestId('add-key').click();
    await page.getByTestId('error-key_value').waitFor();
    assert.equal(await page.getByTestId('key-row').count(), 1);
  }));

  it('imports pasted keys and a .txt file in chunks, with the counts shown', () => suite.withPage({}, async ({ page }) => {
    await openKeyManager(page, service.id);
    let dialog = await runImport(page, async (d) => {
      await d.getByTestId('import-textarea').fill([...pastedKeys, '', `  ${pastedKeys[0]}  `, FIRST_KEY].join('\n'));
      await assertText(d.getByTestId('import-count'), '5 keys ready to import.');
    });
    await assertText(dialog.getByTestId('import-success'), '3');
    await assertText(dialog.getByTestId('import-skipped'), '2');
    await assertText(dialog.getByTestId('import-failed'), '0');
    await dialog.getByTestId('import-close').click();
    await assertContains(page.getByTestId('keys-summary'), '4 keys, 4 active');
    await screenshot(page, 'key-manager');

    const dir = await mkdtemp(path.join(tmpdir(), 'rotator-keys-'));
    const file = path.join(dir, 'keys.txt');
    await writeFile(file, `${fileKeys.join('\r\n')}\r\n\r\n`);
    const batches = [];
    page.on('request', (request) => {
      if (request.url().endsWith('/keys/batch')) batches.push(request.postDataJSON().keys.length);
    });
    dialog = await runImport(page, async (d) => {
      await d.getByTestId('import-file').setInputFiles(file);
      await assertText(d.getByTestId('import-count'), '1,203 keys ready to import.');
    });
    await assertText(dialog.getByTestId('import-success'), '1,203');
    await assertText(dialog.getByTestId('import-skipped'), '0');
    assert.deepEqual(batches, [500, 500, 203], 'keys are sent 500 at a time');
    assert.equal(await dialog.getByTestId('import-progress').getAttribute('value'), '1203');
    await screenshot(page, 'import-dialog');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'detached' });
    await assertContains(page.getByTestId('keys-summary'), '1,207 keys, 1,207 active');
    await assertText(page.getByTestId('keys-range'), '1–100 of 1,207');
    await page.getByTestId('keys-next').click();
    await assertText(page.getByTestId('keys-range'), '101–200 of 1,207');
  }));

  it('disables a key, and the service list counts follow', () => suite.withPage({}, async ({ page }) => {
    await openKeyManager(page, service.id);
    const toggle = keyRow(page, 0).getByTestId('key-toggle');
    assert.equal(await toggle.getAttribute('aria-checked'), 'true');
    await toggle.click();
    await page.waitForFunction(() => document.querySelector('[data-testid="key-row"] [data-testid="key-toggle"]').getAttribute('aria-checked') === 'false');
    await assertText(keyRow(page, 0).getByTestId('key-state'), 'Disabled');
    await assertContains(page.getByTestId('keys-summary'), '1,207 keys, 1,206 active');
    await page.getByTestId('key-filter').selectOption('disabled');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="key-row"]').length === 1);
    await page.getByTestId('key-filter').selectOption('all');

    await page.goto('/#/services');
    await assertText(serviceRow(page, 'openai-pool').getByTestId('service-key-count'), '1,206 / 1,207');
  }));

  it('exports all keys or only the enabled ones as a .txt file', () => suite.withPage({}, async ({ page }) => {
    await openKeyManager(page, service.id);
    const all = await exportKeys(page, 'all');
    assert.match(all.name, /^openai-pool_keys_\d{8}T\d{6}\.txt$/);
    assert.deepEqual(all.keys.sort(), [FIRST_KEY, ...pastedKeys, ...fileKeys].sort(), 'the file holds the full keys, one per line');

    const active = await exportKeys(page, 'active');
    assert.equal(active.keys.length, all.keys.length - 1);
    assert.ok(!active.keys.includes(FIRST_KEY), 'the disabled key is left out');
  }));

  it('tests keys against the upstream and shows the result', () => suite.withPage({}, async ({ page }) => {
    await openKeyManager(page, service.id);
    const good = await rowOf(page, pastedKeys[0]);
    await good.getByTestId('key-test').click();
    await good.getByTestId('key-test-result').waitFor();
    assert.match(await good.getByTestId('key-test-result').textContent(), /^OK · HTTP 200 · \d+ ms$/);

    const bad = await rowOf(page, pastedKeys[1]);
    await bad.getByTestId('key-test').click();
    await bad.getByTestId('key-test-result').waitFor();
    assert.match(await bad.getByTestId('key-test-result').textContent(), /^Failed · HTTP 401 · \d+ ms/);
    assert.ok(upstream.requests.some((r) => r.key === pastedKeys[1]), 'the test reached the upstream with the real key');

    // The refused key is marked invalid, with the reason; Reset puts it back in rotation.
    await assertText(bad.getByTestId('key-state'), 'Invalid');
    await assertContains(bad.getByTestId('key-state-detail'), 'because: ');
    await assertText(bad.getByTestId('key-usage').locator('span').first(), '1 request');
    await screenshot(page, 'key-manager-states');
    await bad.getByTestId('key-reset').click();
    await assertText(bad.getByTestId('key-state'), 'Active');
    assert.equal(await bad.getByTestId('key-reset').isDisabled(), true);
  }));

  it('deletes one key, then clears them all', () => suite.withPage({}, async ({ page }) => {
    await openKeyManager(page, service.id);
    const firstId = await keyRow(page, 0).getAttribute('data-key-id');
    await keyRow(page, 0).getByTestId('key-delete').click();
    await confirm(page);
    await page.locator(`[data-testid="key-row"][data-key-id="${firstId}"]`).waitFor({ state: 'detached' });
    await assertContains(page.getByTestId('keys-summary'), '1,206 keys');

    await page.getByTestId('clear-keys').click();
    await assertContains(page.getByTestId('confirm-message'), 'Delete all 1,206 keys of “OpenAI pool”?');
    await confirm(page);
    await page.getByTestId('toast').filter({ hasText: '1,206 keys deleted.' }).waitFor();
    await assertText(page.getByTestId('keys-empty'), 'No keys yet. Add one above or import a list.');
    assert.equal(await page.getByTestId('clear-keys').isDisabled(), true);
  }));
});
