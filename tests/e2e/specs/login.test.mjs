// Signing in and out, the wrong-password and throttling messages, and the language switch.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';
import { assertText } from '../lib/assert-text.mjs';

describe('login', () => {
  const suite = useSuite();

  it('shows a clear message for a wrong password, then signs in', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await page.goto('/');
    await page.getByTestId('login-form').waitFor();
    await screenshot(page, 'login');
    await page.getByTestId('login-password').fill('not-the-password');
    tab.expectHttpError(401);
    await page.getByTestId('login-submit').click();
    await assertText(page.getByTestId('login-error'), 'Wrong username or password.');

    await signIn(page);
    assert.ok(await page.evaluate(() => sessionStorage.getItem('access_token')), 'the token is kept in sessionStorage');
    await assertText(page.getByTestId('services-empty'), 'No services yet — create one.');
  }));

  it('logs out back to the login screen', () => suite.withPage({}, async ({ page }) => {
    await signIn(page);
    await page.getByTestId('logout').click();
    await page.getByTestId('login-form').waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('access_token')), null);
    await page.reload();
    await page.getByTestId('login-form').waitFor();
  }));

  it('switches language and remembers it across reloads', () => suite.withPage({}, async ({ page }) => {
    const heading = page.getByRole('heading', { level: 1 });
    await signIn(page);
    await assertText(heading, 'Services');
    await page.getByTestId('locale-select').selectOption('zh-CN');
    await assertText(heading, '服务');
    await assertText(page.getByTestId('logout'), '退出登录');
    assert.equal(await page.evaluate(() => localStorage.getItem('locale')), 'zh-CN');
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');

    await page.reload();
    await assertText(heading, '服务');
    await assertText(page.getByTestId('services-empty'), '还没有服务，先创建一个吧。');
    await page.getByTestId('locale-select').selectOption('en');
    await assertText(heading, 'Services');
  }));

  it('follows the browser language at first', () => suite.withPage({ locale: 'zh-CN' }, async ({ page }) => {
    await page.goto('/');
    await assertText(page.getByTestId('login-submit'), '登录');
    assert.equal(await page.getByTestId('locale-select').inputValue(), 'zh-CN');
  }));

  // Last in this file: it leaves the login throttled for this server.
  it('shows the Retry-After seconds when sign-in is throttled', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await page.goto('/');
    tab.expectHttpError(401);
    tab.expectHttpError(429);
    const error = page.getByTestId('login-error');
    let seconds = null;
    for (let attempt = 0; attempt < 30 && seconds === null; attempt += 1) {
      await page.getByTestId('login-password').fill(`wrong-${attempt}`);
      const reply = page.waitForResponse('**/admin/login');
      await page.getByTestId('login-submit').click();
      const response = await reply;
      await error.waitFor();
      if (response.status() === 429) seconds = response.headers()['retry-after'];
    }
    assert.match(seconds ?? '', /^\d+$/, 'the server answers 429 with Retry-After after repeated failures');
    await assertText(error, `Too many failed attempts. Try again in ${seconds} second${seconds === '1' ? '' : 's'}.`);
  }));
});
