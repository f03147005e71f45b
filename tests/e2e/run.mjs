// Runs the browser tests: `node run.mjs` (or `npm test`) from tests/e2e.
// Env: ROTATOR_BIN (default target/release/api-key-rotator, relative to the repo root),
// CHROMIUM_PATH (default /usr/bin/chromium), SCREENSHOTS=1 to refresh docs/screenshots.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { binaryPath } from './lib/server.mjs';
import { CHROMIUM } from './lib/browser.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const missing = [
  [binaryPath(), 'build the server first (cargo build --release) or set ROTATOR_BIN'],
  [CHROMIUM, 'install it: apt-get install -y chromium'],
].filter(([file]) => !existsSync(file));
for (const [file, hint] of missing) console.error(`missing ${file}: ${hint}`);
if (missing.length) process.exit(2);

const specs = readdirSync(path.join(here, 'specs'))
  .filter((name) => name.endsWith('.test.mjs'))
  .sort()
  .map((name) => path.join('specs', name));
const only = process.argv.slice(2);
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...(only.length ? only : specs)], {
  cwd: here,
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
