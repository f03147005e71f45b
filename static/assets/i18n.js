// Languages: the dictionaries, the current locale and `t()`.
import en from './locales/en.js';
import zhCN from './locales/zh-CN.js';
import { refreshBindings } from './dom.js';

export const dictionaries = { en, 'zh-CN': zhCN };
export const LANGUAGES = [
  { code: 'en', label: 'English' },
  { code: 'zh-CN', label: '简体中文' },
];
const STORAGE_KEY = 'locale';

/** The saved choice if it is a known locale, else the browser's language (zh* → zh-CN). */
export function pickLocale(saved, browserLanguage) {
  if (saved && Object.hasOwn(dictionaries, saved)) return saved;
  return /^zh/i.test(browserLanguage ?? '') ? 'zh-CN' : 'en';
}

function savedLocale() {
  try {
    return globalThis.localStorage?.getItem(STORAGE_KEY) ?? null;
  } catch {
    return null;
  }
}

let current = pickLocale(savedLocale(), globalThis.navigator?.language);
const listeners = new Set();

export const getLocale = () => current;

/**
 * Fills `{name}` placeholders of a template with `params`; numbers are written the local way
 * (1,207 in English).
 */
export function format(template, params = {}, locale = current) {
  return template.replace(/\{(\w+)\}/g, (whole, name) => {
    if (!Object.hasOwn(params, name)) return whole;
    const value = params[name];
    return typeof value === 'number' ? value.toLocaleString(locale) : String(value);
  });
}

/**
 * The template of `key` in `dict`. An entry may be `{one, other}` (plural forms, chosen by the
 * number `params.n`), or a plain string.
 */
function template(dict, key, params, locale) {
  const entry = dict[key];
  if (entry === undefined || typeof entry === 'string') return entry;
  const n = typeof params.n === 'number' ? params.n : 0;
  return entry[new Intl.PluralRules(locale).select(n)] ?? entry.other;
}

/** The text of `key` in the current language (English, then the key itself, as fallbacks). */
export function t(key, params = {}) {
  const text = template(dictionaries[current], key, params, current)
    ?? template(dictionaries.en, key, params, 'en')
    ?? key;
  return format(text, params);
}

/** Applies the current language to the document: static `data-i18n` texts and live bindings. */
export function applyLocale() {
  document.documentElement.lang = current;
  document.title = t('app.title');
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  refreshBindings(document);
  for (const fn of listeners) fn(current);
}

/** Switches the language and remembers it. */
export function setLocale(code) {
  if (!Object.hasOwn(dictionaries, code)) return;
  current = code;
  try {
    localStorage.setItem(STORAGE_KEY, code);
  } catch {
    // Storage may be unavailable (private mode); the choice then lasts for this page only.
  }
  applyLocale();
}

export function onLocaleChange(fn) {
  listeners.add(fn);
}

/** A date-time in the reader's time zone and language; '' for a missing value. */
export function formatDateTime(value) {
  if (!value) return '';
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString(current, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function formatNumber(value) {
  return typeof value === 'number' ? value.toLocaleString(current) : '—';
}
