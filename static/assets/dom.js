// Tiny DOM helpers. Every text goes through textContent, never innerHTML, so names and keys
// coming from the server can never inject markup.

/** Element properties set as properties rather than attributes. */
const PROPERTIES = new Set([
  'value', 'checked', 'disabled', 'hidden', 'selected', 'readOnly', 'required', 'open', 'multiple',
]);

function setProp(el, key, value) {
  if (key === 'text') el.textContent = value;
  else if (key === 'class') el.className = value;
  else if (key === 'testid') el.dataset.testid = value;
  else if (PROPERTIES.has(key)) el[key] = value;
  else if (value === false || value === null) el.removeAttribute(key);
  else el.setAttribute(key, value === true ? '' : String(value));
}

/**
 * Creates an element. `props` keys: `text`, `class`, `testid`, `on<event>` listeners, DOM
 * properties and attributes. A function value (other than a listener) is a live binding: it is
 * evaluated now and again by `refreshBindings`, e.g. `{text: () => t('app.title')}` follows the
 * language.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  const bindings = [];
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === undefined) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (typeof value === 'function') {
      bindings.push([key, value]);
    } else {
      setProp(el, key, value);
    }
  }
  for (const [key, fn] of bindings) bind(el, key, fn);
  append(el, children);
  return el;
}

/** Adds a live binding to an existing element and applies it now. */
export function bind(el, key, fn) {
  el.bindings ??= [];
  el.bindings.push([key, fn]);
  el.setAttribute('data-bound', '');
  setProp(el, key, fn());
}

/** Appends children, flattening arrays and skipping null, undefined and false. */
export function append(el, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Replaces all children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, ...children);
}

/** Re-evaluates every live binding below `root` (used when the language changes). */
export function refreshBindings(root = document) {
  for (const el of root.querySelectorAll('[data-bound]')) {
    for (const [key, fn] of el.bindings ?? []) setProp(el, key, fn());
  }
}

let uid = 0;
/** A unique id for label/aria wiring. */
export function nextId(prefix = 'id') {
  uid += 1;
  return `${prefix}-${uid}`;
}
