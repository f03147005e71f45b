// Debian's chromium through playwright-core, with console and page errors turned into failures.
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { REPO_ROOT } from './server.mjs';

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
export const PHONE = { width: 390, height: 844 };
export const LAPTOP = { width: 1366, height: 900 };

export function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/**
 * A fresh context and page on `baseURL`. Every console error and page error is recorded;
 * `expectHttpError(status)` allows Chromium's "Failed to load resource" line for a status the
 * test provokes on purpose, and `assertClean()` fails on anything else.
 */
export async function openPage(browser, baseURL, { viewport = LAPTOP, locale = 'en-US' } = {}) {
  const context = await browser.newContext({ baseURL, viewport, locale, acceptDownloads: true });
  const page = await context.newPage();
  const errors = [];
  const allowed = new Set();
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`));
  page.setDefaultTimeout(10000);
  return {
    context,
    page,
    expectHttpError(status) {
      allowed.add(`the server responded with a status of ${status}`);
    },
    assertClean() {
      const unexpected = errors.filter((line) => ![...allowed].some((text) => line.includes(text)));
      errors.length = 0;
      allowed.clear();
      assert.deepEqual(unexpected, [], 'the page logged errors');
    },
    close: () => context.close(),
  };
}

/**
 * Saves `docs/screenshots/<name>.png` when SCREENSHOTS=1: the viewport, made `height` pixels
 * tall for the shot if given (a taller viewport keeps the sticky header in place).
 */
export async function screenshot(page, name, { height } = {}) {
  if (process.env.SCREENSHOTS !== '1') return;
  const dir = path.join(REPO_ROOT, 'docs', 'screenshots');
  await mkdir(dir, { recursive: true });
  const viewport = page.viewportSize();
  if (height) await page.setViewportSize({ width: viewport.width, height });
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(dir, `${name}.png`), animations: 'disabled' });
  if (height) await page.setViewportSize(viewport);
}
