// Starts the api-key-rotator binary on a free port in a fresh temp dir, and stops it.
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const ADMIN_PASSWORD = 'e2e-admin-pass';
export const PROXY_KEY = 'e2e-proxy-key';

export function binaryPath() {
  return path.resolve(REPO_ROOT, process.env.ROTATOR_BIN ?? 'target/release/api-key-rotator');
}

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForHealth(url, child, output, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}:\n${output.join('')}`);
    try {
      const response = await fetch(`${url}/health`);
      if (response.status === 200) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error(`server did not answer GET /health within ${timeoutMs} ms:\n${output.join('')}`);
}

/** Starts a server; `env` adds or overrides variables (e.g. JWT_TTL_SECONDS). */
export async function startServer(env = {}) {
  const port = await freePort();
  const dir = await mkdtemp(path.join(tmpdir(), 'rotator-e2e-'));
  const url = `http://127.0.0.1:${port}`;
  const child = spawn(binaryPath(), [], {
    cwd: dir,
    env: {
      PATH: process.env.PATH,
      ADMIN_PASSWORD,
      JWT_SECRET: randomBytes(32).toString('hex'),
      GLOBAL_PROXY_KEYS: PROXY_KEY,
      BACKEND_PORT: String(port),
      DATABASE_PATH: path.join(dir, 'db.sqlite'),
      PROXY_PUBLIC_BASE_URL: url,
      LOG_LEVEL: 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = [];
  child.stdout.on('data', (chunk) => output.push(chunk.toString()));
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  await waitForHealth(url, child, output);
  return {
    url,
    port,
    output,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await Promise.race([exited, sleep(5000)]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}
