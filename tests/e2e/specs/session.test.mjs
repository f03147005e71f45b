// An expired access token (JWT_TTL_SECONDS=2) sends the page back to the login screen.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { signIn, useSuite } from '../lib/app.mjs';
import { assertText } from '../lib/assert-text.mjs';

/**
 * Waits (at most 90 s) until the server refuses `token`. The server may allow some clock
 * skew past the token's expiry, so the wait is measured rather than assumed.
 */
async function waitUntilRejected(baseUrl, token) {
  const deadline = Date.now() + 90_000;
  while (Date.now() < deadline) {
    const response = await fetch(`${baseUrl}/admin/proxy-configs`, { headers: { Authorization: `Bearer ${token}` } });
    if (response.status === 401) return;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new Error('the token was still accepted 90 s after sign-in');
}

describe('session', () => {
  const suite = useSuite({ JWT_TTL_SECONDS: '2' });

  it('returns to the login screen with a message once the token has expired', { timeout: 120_000 }, () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await signIn(page);
    await page.getByTestId('services-page').waitFor();
    const token = await page.evaluate(() => sessionStorage.getItem('access_token'));
    await waitUntilRejected(suite.server.url, token);

    tab.expectHttpError(401);
    await page.getByTestId('new-service').click();
    await page.getByTestId('service-form').waitFor();
    await page.getByTestId('input-name').fill('Too late');
    await page.getByTestId('input-target_url').fill('https://example.invalid');
    await page.getByTestId('input-api_key_name').fill('Authorization');
    await page.getByTestId('form-submit').click();

    await assertText(page.getByTestId('login-notice'), 'Your session has expired, please sign in again.');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('access_token')), null, 'the stale token is dropped');
    assert.equal(await page.getByTestId('logout').isVisible(), false);

    // Signing in again brings the user back where they were.
    await page.getByTestId('login-password').fill('e2e-admin-pass');
    await page.getByTestId('login-submit').click();
    await page.getByTestId('service-form').waitFor();
  }));

  it('a stored token that the server rejects at load also leads to the login screen', () => suite.withPage({}, async (tab) => {
    const { page } = tab;
    await page.goto('/');
    await page.evaluate(() => sessionStorage.setItem('access_token', 'not-a-valid-token'));
    tab.expectHttpError(401);
    await page.reload();
    await assertText(page.getByTestId('login-notice'), 'Your session has expired, please sign in again.');
  }));
});
