// Checks of the page's files that need no browser: the two dictionaries, the CSP rules, and the
// pure helpers of format.js.
import assert from 'node:assert/strict';
import { readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { describe, it } from 'node:test';
import { REPO_ROOT } from '../lib/server.mjs';

const STATIC = path.join(REPO_ROOT, 'static');
const { dictionaries, pickLocale } = await import(path.join(STATIC, 'assets/i18n.js'));
const format = await import(path.join(STATIC, 'assets/format.js'));

async function pageFiles(dir = STATIC) {
  const files = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) files.push(...await pageFiles(full));
    else files.push(full);
  }
  return files;
}

async function sources(extension) {
  const files = (await pageFiles()).filter((file) => file.endsWith(extension));
  return Promise.all(files.map(async (file) => ({ file: path.relative(STATIC, file), text: await readFile(file, 'utf8') })));
}

/** Source text without comments, so that prose about e.g. innerHTML does not count. */
const code = (text) => text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');

const placeholders = (text) => [...text.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

describe('dictionaries', () => {
  const en = dictionaries.en;
  const zh = dictionaries['zh-CN'];

  it('English and Chinese have exactly the same keys', () => {
    assert.deepEqual(Object.keys(zh).sort(), Object.keys(en).sort());
  });

  it('every text is non-empty and uses the same placeholders in both languages', () => {
    // An entry is a string or plural forms {one, other}; a `one` form may leave out {n}.
    const forms = (entry) => (typeof entry === 'string' ? [entry] : [entry.one, entry.other]);
    for (const key of Object.keys(en)) {
      const reference = placeholders(forms(en[key]).at(-1));
      for (const text of [...forms(en[key]), ...forms(zh[key])]) {
        assert.ok(typeof text === 'string' && text.trim(), `empty text for ${key}`);
        const extra = placeholders(text).filter((name) => !reference.includes(name));
        assert.deepEqual(extra, [], `unknown placeholders in ${key}: ${text}`);
      }
      assert.deepEqual(placeholders(forms(zh[key]).at(-1)), reference, `placeholders of ${key} in Chinese`);
    }
  });

  it('formats numbers and picks English plural forms', async () => {
    const { t, getLocale } = await import(path.join(STATIC, 'assets/i18n.js'));
    assert.equal(getLocale(), 'en');
    assert.equal(t('keys.cleared', { n: 1 }), '1 key deleted.');
    assert.equal(t('keys.cleared', { n: 1207 }), '1,207 keys deleted.');
    assert.equal(t('keys.cleared', { n: 0 }), '0 keys deleted.');
    assert.equal(t('no.such.key'), 'no.such.key');
  });

  it('every key the code asks for exists', async () => {
    const used = new Set();
    for (const { text } of await sources('.js')) {
      for (const match of text.matchAll(/\bt\(\s*'([\w.]+)'/g)) used.add(match[1]);
    }
    for (const { text } of await sources('.html')) {
      for (const match of text.matchAll(/data-i18n="([\w.]+)"/g)) used.add(match[1]);
    }
    assert.ok(used.size > 50, `found only ${used.size} keys in the code`);
    assert.deepEqual([...used].filter((key) => !(key in en)), []);
  });

  it('picks the saved language, else zh-CN for zh* browsers, else English', () => {
    assert.equal(pickLocale('zh-CN', 'en-US'), 'zh-CN');
    assert.equal(pickLocale('en', 'zh-CN'), 'en');
    assert.equal(pickLocale(null, 'zh-TW'), 'zh-CN');
    assert.equal(pickLocale(null, 'zh'), 'zh-CN');
    assert.equal(pickLocale('fr', 'de-DE'), 'en');
    assert.equal(pickLocale(null, undefined), 'en');
  });
});

describe('content security policy', () => {
  it('index.html has no inline script, style or handler and loads only local files', async () => {
    const html = await readFile(path.join(STATIC, 'index.html'), 'utf8');
    assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, 'inline <script>');
    assert.doesNotMatch(html, /<style/i, '<style> block');
    assert.doesNotMatch(html, /\sstyle=/i, 'style attribute');
    assert.doesNotMatch(html, /\son[a-z]+=/i, 'inline event handler');
    assert.doesNotMatch(html, /(src|href)="(https?:)?\/\//i, 'file from another host');
    assert.match(html, /<script type="module" src="\/assets\/app\.js"><\/script>/);
    assert.match(html, /<link rel="stylesheet" href="\/assets\/style\.css">/);
    assert.match(html, /<link rel="icon" href="\/assets\/favicon\.svg"/);
  });

  it('scripts use no eval, innerHTML, inline styles or remote URLs', async () => {
    for (const { file, text: source } of await sources('.js')) {
      const text = code(source);
      assert.doesNotMatch(text, /\beval\(|new Function\(|innerHTML|outerHTML|insertAdjacentHTML/, file);
      assert.doesNotMatch(text, /setAttribute\(\s*'style'|\bstyle:\s*['`]/, file);
      assert.doesNotMatch(text, /\bimport\s[^;]*from\s+'https?:/, file);
      assert.doesNotMatch(text, /window\.(alert|confirm|prompt)\(|[^.\w](alert|confirm|prompt)\(/, file);
    }
  });

  it('the stylesheet loads no fonts or images from elsewhere', async () => {
    for (const { file, text } of await sources('.css')) {
      assert.doesNotMatch(text, /@import|@font-face|url\(\s*['"]?https?:/, file);
    }
  });
});

describe('format helpers', () => {
  it('parses pasted keys: one per line, trimmed, blank lines dropped', () => {
    assert.deepEqual(format.parseKeys(' a \r\n\r\nb\n  \nc'), ['a', 'b', 'c']);
    assert.deepEqual(format.parseKeys(''), []);
  });

  it('splits keys into chunks of at most 500', () => {
    const keys = Array.from({ length: 1001 }, (_, i) => `k${i}`);
    assert.deepEqual(format.chunk(keys, 500).map((c) => c.length), [500, 500, 1]);
    assert.deepEqual(format.chunk([], 500), []);
  });

  it('names export files <slug>_keys_<YYYYMMDDTHHMMSS>.txt', () => {
    assert.equal(format.exportFileName('weather', new Date(2026, 10, 26, 7, 5, 9)), 'weather_keys_20261126T070509.txt');
  });

  it('builds proxy URLs without a double slash', () => {
    assert.equal(format.proxyUrl('http://localhost:8000/', { config_type: 'GENERIC', slug: 'weather' }), 'http://localhost:8000/proxy/weather');
    assert.equal(format.proxyUrl('http://localhost:8000', { config_type: 'LLM', slug: 'gpt' }), 'http://localhost:8000/llm/gpt');
  });

  it('gives curl for GENERIC and the matching Python SDK for LLM services', () => {
    const curl = format.clientSnippet('http://h/proxy/w', { config_type: 'GENERIC', method: 'ANY' });
    assert.equal(curl.code, 'curl "http://h/proxy/w" \\\n  -H "X-Proxy-Key: <your proxy key>"');
    const post = format.clientSnippet('http://h/proxy/w', { config_type: 'GENERIC', method: 'POST' });
    assert.ok(post.code.startsWith('curl -X POST '));
    const sdk = (api_format) => format.clientSnippet('http://h/llm/x', { config_type: 'LLM', api_format }).code;
    assert.match(sdk('openai_compatible'), /from openai import OpenAI[\s\S]*base_url="http:\/\/h\/llm\/x"/);
    assert.match(sdk('anthropic_native'), /from anthropic import Anthropic[\s\S]*base_url="http:\/\/h\/llm\/x"/);
    assert.match(sdk('gemini_native'), /from google import genai[\s\S]*base_url="http:\/\/h\/llm\/x"/);
    assert.match(sdk(undefined), /from openai import OpenAI/);
  });

  it('derives a key state when the server sends none', () => {
    assert.equal(format.keyState({ is_active: true }), 'active');
    assert.equal(format.keyState({ is_active: false }), 'disabled');
    assert.equal(format.keyState({ is_active: true, status: 'cooling' }), 'cooling');
  });
});
