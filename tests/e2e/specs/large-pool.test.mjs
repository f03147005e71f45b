// A pool of 100,000 keys in the key manager: imported from a file with progress, paged on
// the server, searched, and changed in bulk after a confirmation that says how many keys.
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { adminApi, signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';
import { startUpstream } from '../lib/upstream.mjs';
import { assertContains, assertText } from '../lib/assert-text.mjs';

const N = 100_000;
const keyOf = (i) => `sk-big-${String(i).padStart(6, '0')}-${String(i % 9973).padStart(4, '0')}`;

describe('a pool of 100,000 keys', () => {
  const suite = useSuite();
  let service;
  let upstream;
  let api;

  before(async () => {
    upstream = await startUpstream();
    api = await adminApi(suite.server.url);
    service = await api.createService({ name: 'Big pool', slug: 'big-pool', config_type: 'LLM', method: null, target_url: null, api_key_location: null, api_key_name: null, target_base_url: `${upstream.url}/v1`, api_format: 'openai_compatible' });
  });
  after(() => upstream?.stop());

  it('imports 100,000 keys from a CSV file with progress, then pages, searches and disables in bulk', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.goto(`/#/services/${service.id}/keys`);
    await page.getByTestId('keys-page').waitFor();

    const dir = await mkdtemp(path.join(tmpdir(), 'rotator-big-'));
    const file = path.join(dir, 'keys.csv');
    const rows = Array.from({ length: N }, (_, i) => `${keyOf(i)},team-${i % 7}`);
    await writeFile(file, `api_key,owner\n${rows.join('\n')}\n${keyOf(5)},dup\n`);
    await page.getByTestId('open-import').click();
    const dialog = page.getByTestId('import-dialog');
    await dialog.getByTestId('import-file').setInputFiles(file);
    await assertText(dialog.getByTestId('import-count'), '100,001 keys ready to import.');
    await dialog.getByTestId('import-submit').click();
    // Progress moves while the parts go in.
    await page.waitForFunction(() => {
      const p = document.querySelector('[data-testid="import-progress"]');
      return p && Number(p.value) > 0 && Number(p.value) < Number(p.max);
    }, null, { timeout: 120_000 });
    await dialog.getByTestId('import-summary').waitFor({ timeout: 300_000 });
    await assertText(dialog.getByTestId('import-success'), '100,000');
    await assertText(dialog.getByTestId('import-skipped'), '1');
    await dialog.getByTestId('import-close').click();
    await dialog.waitFor({ state: 'detached' });

    await assertContains(page.getByTestId('keys-summary'), '100,000 keys, 100,000 active');
    await assertText(page.getByTestId('keys-range'), '1–100 of 100,000');
    assert.equal(await page.getByTestId('key-row').count(), 100, 'one page of rows, not the pool');
    await page.getByTestId('keys-next').click();
    await assertText(page.getByTestId('keys-range'), '101–200 of 100,000');
    await page.getByTestId('keys-prev').click();
    await assertText(page.getByTestId('keys-range'), '1–100 of 100,000');

    // Search by the last characters: keys 42, 10015, 19988, … end in 0042.
    await page.getByTestId('key-search').fill('0042');
    await page.waitForFunction(() => document.querySelector('[data-testid="keys-range"]') === null
      && document.querySelectorAll('[data-testid="key-row"]').length === 11);
    await screenshot(page, 'key-manager-large-pool');

    // Select the page, then everything that matches, and disable it after the confirmation.
    await page.getByTestId('keys-select-page').check();
    await assertText(page.getByTestId('bulk-count'), '11 keys selected');
    await page.getByTestId('bulk-disable').click();
    await assertText(page.getByTestId('confirm-message'), 'Disable 11 keys?');
    await page.getByTestId('confirm-ok').click();
    await page.getByTestId('toast').filter({ hasText: '11 keys changed.' }).waitFor();
    await page.getByTestId('key-search').fill('');
    await page.getByTestId('key-filter').selectOption('disabled');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="key-row"][data-state="disabled"]').length === 11);
    await assertContains(page.getByTestId('keys-summary'), '100,000 keys, 99,989 active');

    // Everything the filter matches beyond one page: 'active' is 99,989 keys; select all of
    // them and cancel the delete: the confirmation names the number.
    await page.getByTestId('key-filter').selectOption('active');
    await page.waitForFunction(() => document.querySelector('[data-testid="keys-range"]')?.textContent.includes('99,989'));
    await page.getByTestId('keys-select-page').check();
    await page.getByTestId('bulk-select-all-matching').click();
    await assertText(page.getByTestId('bulk-count'), 'All 99,989 keys that match are selected');
    await page.getByTestId('bulk-delete').click();
    await assertText(page.getByTestId('confirm-message'), 'Delete 99,989 keys? This cannot be undone.');
    await page.getByTestId('confirm-cancel').click();
    await assertContains(page.getByTestId('keys-summary'), '100,000 keys');
  }));
});
