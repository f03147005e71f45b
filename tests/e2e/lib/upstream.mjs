// A fake upstream API on 127.0.0.1, so that key tests and proxied calls never leave the machine.
// It accepts keys that start with `sk-good` (from Authorization: Bearer, x-api-key,
// x-goog-api-key or ?key=) and answers 401 to any other key.
import { createServer } from 'node:http';

function presentedKey(request) {
  const url = new URL(request.url, 'http://upstream');
  const bearer = /^Bearer (.+)$/.exec(request.headers.authorization ?? '')?.[1];
  return bearer ?? request.headers['x-api-key'] ?? request.headers['x-goog-api-key'] ?? url.searchParams.get('key') ?? '';
}

export async function startUpstream() {
  const requests = [];
  const server = createServer((request, response) => {
    const key = presentedKey(request);
    requests.push({ method: request.method, url: request.url, key });
    const ok = key.startsWith('sk-good');
    response.writeHead(ok ? 200 : 401, { 'Content-Type': 'application/json' });
    response.end(JSON.stringify(ok ? { object: 'list', data: [] } : { error: { message: 'invalid api key' } }));
    request.resume();
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}
