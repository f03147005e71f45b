// The usage dashboard: charts, top keys and models, sparklines, a key's failure history and the
// request log, against real traffic through the proxy to a fake upstream that sends known usage.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { adminApi, signIn, useSuite } from '../lib/app.mjs';
import { PHONE, screenshot } from '../lib/browser.mjs';
import { PROXY_KEY } from '../lib/server.mjs';
import { assertContains, assertText } from '../lib/assert-text.mjs';

/** An OpenAI-compatible upstream: key sk-good-* answers with usage 10 in / 4 out, others 429. */
async function usageUpstream() {
  const server = createServer((request, response) => {
    request.resume();
    const ok = (request.headers.authorization ?? '').startsWith('Bearer sk-good');
    response.writeHead(ok ? 200 : 429, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify(ok
      ? { model: 'gpt-dash', choices: [], usage: { prompt_tokens: 10, completion_tokens: 4 } }
      : { error: { code: 'rate_limit_exceeded', message: 'slow down' } }));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, stop: () => new Promise((r) => server.close(r)) };
}

async function chat(baseUrl, slug, requestId) {
  const response = await fetch(`${baseUrl}/llm/${slug}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${PROXY_KEY}`, 'Content-Type': 'application/json', ...(requestId ? { 'X-Request-Id': requestId } : {}) },
    body: JSON.stringify({ model: 'gpt-dash', messages: [] }),
  });
  await response.text();
  return response.status;
}

describe('usage dashboard', () => {
  const suite = useSuite({ STATS_FLUSH_SECONDS: '0.5' });
  let upstream;

  before(async () => {
    upstream = await usageUpstream();
    const api = await adminApi(suite.server.url);
    const svc = await api.createService({ name: 'Chat', slug: 'chat', config_type: 'LLM', method: null, target_url: null, api_key_location: null, api_key_name: null, target_base_url: `${upstream.url}/v1`, api_format: 'openai_compatible', max_retries: 0 });
    await api.importKeys(svc.id, ['sk-good-dashboard-0001', 'sk-limited-dashboard-0002']);
    // The limited key answers 429 once and then cools down: 5 answers 200 (50 in, 20 out), 1 is 429.
    const statuses = [];
    for (let i = 0; i < 6; i += 1) statuses.push(await chat(suite.server.url, 'chat', i === 0 ? 'dash-first-request' : undefined));
    assert.equal(statuses.filter((s) => s === 429).length, 1, String(statuses));
  });
  after(() => upstream?.stop());

  it('shows totals, charts with tables, top keys and models, and sparklines', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.getByTestId('nav-dashboard').click();
    await page.getByTestId('dashboard-page').waitFor();
    await assertText(page.getByTestId('tile-requests').locator('.tile-value'), '6');
    await assertText(page.getByTestId('tile-failures').locator('.tile-value'), '1');
    await assertText(page.getByTestId('tile-tokens-in').locator('.tile-value'), '50');
    await assertText(page.getByTestId('tile-tokens-out').locator('.tile-value'), '20');

    // The chart's table holds the same numbers (its last row is the current hour).
    const table = page.getByTestId('chart-requests-table');
    await page.getByTestId('chart-requests').locator('summary').click();
    const last = table.locator('tbody tr').last();
    assert.deepEqual(await last.locator('td').allTextContents(), ['5', '1']);
    const tokenRows = await page.getByTestId('chart-tokens-table').locator('tbody tr').count();
    assert.equal(tokenRows, 24, 'one bucket per hour of the last 24 hours');

    // Keyboard: focus the chart, move with the arrows; the readout says the bucket's values.
    await page.getByTestId('chart-requests').locator('svg').focus();
    await page.keyboard.press('End');
    await assertContains(page.getByTestId('chart-requests-readout'), ': Successes 5, Failures 1');
    await page.keyboard.press('ArrowLeft');
    await assertContains(page.getByTestId('chart-requests-readout'), ': Successes 0, Failures 0');

    assert.equal(await page.getByTestId('top-key-row').count(), 2);
    assert.deepEqual(await page.getByTestId('top-model-row').first().locator('td').allTextContents(), ['gpt-dash', '6', '50', '20']);
    const spark = page.locator('[data-testid="service-spark-row"][data-slug="chat"] [data-testid="service-spark"]');
    const values = (await spark.getAttribute('data-values')).split(',').map(Number);
    assert.equal(values.length, 24);
    assert.equal(values.at(-1), 6);
    assert.match(await spark.getAttribute('aria-label'), /6 requests, of which 1 failed/);
    await screenshot(page, 'dashboard', { height: 1500 });
  }));

  it('opens a key\'s failure history', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.goto('/#/dashboard');
    const rows = page.getByTestId('top-key-row');
    await rows.first().waitFor();
    // The limited key: its sparkline has failures.
    let limited = null;
    for (let i = 0; i < await rows.count(); i += 1) {
      const cells = await rows.nth(i).locator('td').allTextContents();
      if (cells[3] === '1') limited = rows.nth(i);
    }
    assert.ok(limited, 'the key with a failure is listed');
    await limited.getByTestId('key-history').click();
    const dialog = page.getByTestId('key-history-dialog');
    await dialog.waitFor();
    await dialog.locator('summary').click();
    const last = dialog.getByTestId('chart-key-failures-table').locator('tbody tr').last();
    assert.deepEqual(await last.locator('td').allTextContents(), ['1', '0', '0', '0'], 'one 429');
    assert.equal(await dialog.getByTestId('log-row').count(), 1);
    await assertText(dialog.getByTestId('log-status').first(), '429');
  }));

  it('lists the request log with filters and a detail panel', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.goto('/#/dashboard');
    const log = page.getByTestId('request-log');
    await log.getByTestId('log-row').first().waitFor();
    assert.equal(await log.getByTestId('log-row').count(), 6);
    await log.getByTestId('log-status-filter').selectOption('4xx');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="request-log"] [data-testid="log-row"]').length === 1);
    await log.getByTestId('log-status-filter').selectOption('');
    await log.getByTestId('log-request-id').fill('dash-first-request');
    await log.getByTestId('log-request-id').press('Enter');
    await page.waitForFunction(() => document.querySelectorAll('[data-testid="request-log"] [data-testid="log-row"]').length === 1);
    await log.getByTestId('log-open').first().click();
    const detail = page.getByTestId('log-detail');
    await detail.waitFor();
    await assertText(detail.getByTestId('detail-request_id'), 'dash-first-request');
    await assertText(detail.getByTestId('detail-tokens_in'), '10');
    await assertText(detail.getByTestId('detail-path'), '/llm/chat/v1/chat/completions');
    assert.ok(!(await detail.textContent()).includes('sk-good-dashboard-0001'), 'the key is masked');
    await page.keyboard.press('Escape');
    await detail.waitFor({ state: 'detached' });
  }));

  it('speaks Chinese and fits a phone', () => suite.withPage({ viewport: PHONE, locale: 'zh-CN' }, async ({ page }) => {
    await signIn(page);
    await page.goto('/#/dashboard');
    await page.getByTestId('tile-requests').waitFor();
    await assertText(page.getByTestId('tile-requests').locator('.tile-label'), '请求数');
    await assertText(page.getByTestId('nav-dashboard'), '用量');
    const { scrollWidth, clientWidth } = await page.evaluate(() => ({ scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth }));
    assert.ok(scrollWidth <= clientWidth, `page is ${scrollWidth}px wide in ${clientWidth}px`);
  }));
});
