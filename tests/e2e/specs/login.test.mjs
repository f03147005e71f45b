// Signing in and out, the wrong-password message, and the language switch.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { signIn, useSuite } from '../lib/app.mjs';
import { screenshot } from '../lib/browser.mjs';

describe('login', () => {
  const suite = useSuite();

  it('shows a clear message for a wrong password, then signs in', async () => {
    const tab = await suite.open();
    const { page } = tab;
    try {
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
      tab.assertClean();
    } finally {
      await tab.close();
    }
  });

  it('logs out back to the login screen', async () => {
    const tab = await suite.open();
    const { page } = tab;
    try {
      await signIn(page);
      await page.getByTestId('logout').click();
      await page.getByTestId('login-form').waitFor();
      assert.equal(await page.evaluate(() => sessionStorage.getItem('access_token')), null);
      await page.reload();
      await page.getByTestId('login-form').waitFor();
      tab.assertClean();
    } finally {
      await tab.close();
    }
  });

  it('switches language, remembers it across reloads, and follows the browser at first', async () => {
    const tab = await suite.open();
    const { page } = tab;
    try {
      await signIn(page);
      await assertText(page.getByRole('heading', { level: 1 }), 'Services');
      await page.getByTestId('locale-select').selectOption('zh-CN');
      await assertText(page.getByRole('heading', { level: 1 }), '服务');
      await assertText(page.getByTestId('logout'), '退出登录');
      assert.equal(await page.evaluate(() => localStorage.getItem('locale')), 'zh-CN');
      assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');

      await page.reload();
      await assertText(page.getByRole('heading', { level: 1 }), '服务');
      await assertText(page.getByTestId('services-empty'), '还没有服务，先创建一个吧。');
      await page.getByTestId('locale-select').selectOption('en');
      await assertText(page.getByRole('heading', { level: 1 }), 'Services');
      tab.assertClean();
    } finally {
      await tab.close();
    }

    const chinese = await suite.open({ locale: 'zh-CN' });
    try {
      await chinese.page.goto('/');
      await assertText(chinese.page.getByTestId('login-submit'), '登录');
      chinese.assertClean();
    } finally {
      await chinese.close();
    }
  });

  // Last in this file: it leaves the login throttled for this server.
  it('shows the Retry-After seconds when sign-in is throttled', async () => {
    const tab = await suite.open();
    const { page } = tab;
    try {
      await page.goto('/');
      tab.expectHttpError(401);
      tab.expectHttpError(429);
      const error = page.getByTestId('login-error');
      let throttled = false;
      for (let attempt = 0; attempt < 30 && !throttled; attempt += 1) {
        await page.getByTestId('login-password').fill(`wrong-${attempt}`);
        const reply = page.waitForResponse('**/admin/login');
        await page.getByTestId('login-submit').click();
        const response = await reply;
        await error.waitFor();
        throttled = response.status() === 429;
        if (throttled) {
          const seconds = response.headers()['retry-after'];
          assert.match(seconds, /^\d+$/);
          await assertText(error, `Too many failed attempts. Try again in ${seconds} seconds.`);
        }
      }
      assert.ok(throttled, 'the server never answered 429');
      tab.assertClean();
    } finally {
      await tab.close();
    }
  });
});

async function assertText(locator, expected) {
  await locator.waitFor();
  await locator.filter({ hasText: expected }).waitFor({ timeout: 5000 }).catch(() => {});
  assert.equal((await locator.textContent()).trim(), expected);
}
