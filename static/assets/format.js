// Pure helpers (no DOM): key lists, file names, proxy URLs and client snippets.

/** Splits pasted or uploaded text into keys: one per line, trimmed, blank lines dropped. */
export function parseKeys(text) {
  const trimmed = text.trim();
  if (trimmed.startsWith('[') || trimmed.startsWith('{')) {
    try {
      return keysOfJson(JSON.parse(trimmed));
    } catch {
      // not JSON after all: one key per line
    }
  }
  const lines = text.split(/\r?\n/).map((line) => line.trim()).filter(Boolean);
  return lines.some((line) => line.includes(',')) ? keysOfCsv(lines) : lines;
}

const KEY_COLUMNS = ['key', 'key_value', 'api_key', 'apikey'];

// A list of keys, of {key_value|key|api_key} objects, or an export ({keys: [...]}).
function keysOfJson(value) {
  const list = Array.isArray(value) ? value : (value.keys ?? []);
  return list
    .map((item) => (typeof item === 'string' ? item : KEY_COLUMNS.map((c) => item?.[c]).find((v) => typeof v === 'string')))
    .filter((v) => typeof v === 'string')
    .map((v) => v.trim())
    .filter(Boolean);
}

// The column named key, key_value or api_key when the first row names it; else the first.
function keysOfCsv(lines) {
  const cells = (line) => line.split(',').map((c) => c.trim().replace(/^"(.*)"$/, '$1'));
  const header = cells(lines[0]).map((c) => c.toLowerCase());
  const named = header.findIndex((c) => KEY_COLUMNS.includes(c));
  const rows = named >= 0 ? lines.slice(1) : lines;
  const column = Math.max(named, 0);
  return rows.map((line) => cells(line)[column] ?? '').filter(Boolean);
}

/** Splits `items` into arrays of at most `size` items. */
export function chunk(items, size) {
  const chunks = [];
  for (let i = 0; i < items.length; i += size) chunks.push(items.slice(i, i + size));
  return chunks;
}

const pad = (n) => String(n).padStart(2, '0');

/** `<slug>_keys_<YYYYMMDDTHHMMSS>.txt`, in local time. */
export function exportFileName(slug, date = new Date()) {
  const stamp = `${date.getFullYear()}${pad(date.getMonth() + 1)}${pad(date.getDate())}`
    + `T${pad(date.getHours())}${pad(date.getMinutes())}${pad(date.getSeconds())}`;
  return `${slug}_keys_${stamp}.txt`;
}

/** The URL clients call: `<base>/proxy/<slug>` (GENERIC) or `<base>/llm/<slug>` (LLM). */
export function proxyUrl(baseUrl, service) {
  const base = String(baseUrl ?? '').replace(/\/+$/, '');
  const prefix = service.config_type === 'LLM' ? 'llm' : 'proxy';
  return `${base}/${prefix}/${service.slug}`;
}

export const PROXY_KEY_PLACEHOLDER = '<your proxy key>';

function curlSnippet(url, service) {
  const method = (service.method ?? 'ANY').toUpperCase();
  const verb = method === 'ANY' || method === 'GET' ? '' : ` -X ${method}`;
  return `curl${verb} "${url}" \\\n  -H "X-Proxy-Key: ${PROXY_KEY_PLACEHOLDER}"`;
}

const PYTHON_SNIPPETS = {
  openai_compatible: (url) => `from openai import OpenAI

client = OpenAI(
    base_url="${url}",
    api_key="${PROXY_KEY_PLACEHOLDER}",
)
reply = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "user", "content": "Hello!"}],
)
print(reply.choices[0].message.content)`,
  anthropic_native: (url) => `from anthropic import Anthropic

client = Anthropic(
    base_url="${url}",
    api_key="${PROXY_KEY_PLACEHOLDER}",
)
reply = client.messages.create(
    model="claude-sonnet-4-5",
    max_tokens=1024,
    messages=[{"role": "user", "content": "Hello!"}],
)
print(reply.content[0].text)`,
  gemini_native: (url) => `from google import genai
from google.genai import types

client = genai.Client(
    api_key="${PROXY_KEY_PLACEHOLDER}",
    http_options=types.HttpOptions(base_url="${url}"),
)
reply = client.models.generate_content(model="gemini-2.5-flash", contents="Hello!")
print(reply.text)`,
};

/** A ready-made client snippet: `{language, code}` (curl for GENERIC, Python SDK for LLM). */
export function clientSnippet(url, service) {
  if (service.config_type !== 'LLM') return { language: 'curl', code: curlSnippet(url, service) };
  const format = Object.hasOwn(PYTHON_SNIPPETS, service.api_format) ? service.api_format : 'openai_compatible';
  return { language: format, code: PYTHON_SNIPPETS[format](url) };
}

/** The key's state: the server's `status`, or one derived from `is_active` for older servers. */
export function keyState(key) {
  if (['active', 'cooling', 'invalid', 'disabled'].includes(key.status)) return key.status;
  return key.is_active === false ? 'disabled' : 'active';
}
