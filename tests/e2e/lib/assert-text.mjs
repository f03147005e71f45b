// Text assertions that wait for the page to settle first.
import assert from 'node:assert/strict';

/** Waits until `locator` shows exactly `expected` (trimmed), then asserts it. */
export async function assertText(locator, expected, timeout = 5000) {
  await locator.waitFor({ timeout });
  const deadline = Date.now() + timeout;
  let actual = (await locator.textContent()).trim();
  while (actual !== expected && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    actual = (await locator.textContent()).trim();
  }
  assert.equal(actual, expected);
}

/** Waits until `locator` contains `expected`, then asserts it. */
export async function assertContains(locator, expected, timeout = 5000) {
  await locator.filter({ hasText: expected }).first().waitFor({ timeout }).catch(() => {});
  const actual = await locator.first().textContent();
  assert.ok(actual.includes(expected), `expected ${JSON.stringify(actual)} to contain ${JSON.stringify(expected)}`);
}
