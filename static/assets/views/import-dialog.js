// Batch import: keys pasted or read from a .txt file, sent in chunks with a progress bar.
import { h } from '../dom.js';
import { formatNumber, t } from '../i18n.js';
import { api, SessionExpiredError } from '../api.js';
import { chunk, parseKeys } from '../format.js';
import { errorText, field, openDialog, toast } from '../ui.js';

export const CHUNK_SIZE = 500;

/** Sends `keys` in chunks; `onProgress(done)` after each one. Returns the summed counts. */
export async function importInChunks(serviceId, keys, onProgress) {
  const total = { success_count: 0, skipped_count: 0, failed_count: 0, failed_keys: [], error: null };
  let done = 0;
  for (const part of chunk(keys, CHUNK_SIZE)) {
    try {
      const reply = await api.importKeys(serviceId, part);
      total.success_count += reply.success_count ?? 0;
      total.skipped_count += reply.skipped_count ?? 0;
      total.failed_count += reply.failed_count ?? 0;
      total.failed_keys.push(...(reply.failed_keys ?? []));
    } catch (err) {
      if (err instanceof SessionExpiredError) throw err;
      total.error = err;
      break;
    }
    done += part.length;
    onProgress(done);
  }
  total.notSent = keys.length - done;
  return total;
}

function summaryView(total) {
  const stat = (labelKey, value, testid, cls) => h('div', { class: `stat ${cls}` },
    h('span', { class: 'stat-value', testid, text: formatNumber(value) }),
    h('span', { class: 'stat-label', text: () => t(labelKey) }));
  return h('div', { class: 'import-summary', testid: 'import-summary', role: 'status' },
    h('div', { class: 'stats' },
      stat('import.imported', total.success_count, 'import-success', 'ok'),
      stat('import.skipped', total.skipped_count, 'import-skipped', ''),
      stat('import.failed', total.failed_count, 'import-failed', total.failed_count ? 'bad' : '')),
    total.error ? h('p', { class: 'alert alert-error', testid: 'import-error', text: () => t('import.stopped', { error: errorText(total.error), n: total.notSent }) }) : null,
    total.failed_keys.length ? h('details', { class: 'failed-keys', open: true },
      h('summary', { text: () => t('import.failedKeys') }),
      h('pre', { class: 'snippet', testid: 'import-failed-keys', text: total.failed_keys.join('\n') })) : null);
}

/** Opens the import dialog for `service`; `onDone` runs after an import (to reload the list). */
export function openImportDialog(service, onDone) {
  const textarea = h('textarea', { name: 'keys', rows: '10', class: 'mono', spellcheck: 'false', testid: 'import-textarea', autocomplete: 'off', placeholder: 'sk-...\nsk-...' });
  const file = h('input', { name: 'file', type: 'file', accept: '.txt,.csv,.json,text/plain,text/csv,application/json', testid: 'import-file', class: 'file-input' });
  const count = h('p', { class: 'hint', testid: 'import-count', 'aria-live': 'polite' });
  const progress = h('progress', { class: 'progress', testid: 'import-progress', max: '1', value: '0', hidden: true });
  const progressText = h('p', { class: 'hint', testid: 'import-progress-text', hidden: true });
  const result = h('div', {});
  const submit = h('button', { type: 'button', class: 'btn btn-primary', testid: 'import-submit', text: () => t('import.submit') });
  let running = false;

  const updateCount = () => {
    const n = parseKeys(textarea.value).length;
    count.textContent = t('import.detected', { n });
    submit.disabled = n === 0;
  };
  textarea.addEventListener('input', updateCount);
  file.addEventListener('change', async () => {
    const chosen = file.files?.[0];
    if (!chosen) return;
    textarea.value = await chosen.text();
    updateCount();
  });

  submit.addEventListener('click', async () => {
    const keys = parseKeys(textarea.value);
    if (!keys.length) return;
    running = true;
    for (const el of [textarea, file, submit]) el.disabled = true;
    progress.max = keys.length;
    progress.value = 0;
    progress.hidden = false;
    progressText.hidden = false;
    const showProgress = (done) => {
      progress.value = done;
      progressText.textContent = t('import.progress', { done, total: keys.length });
    };
    showProgress(0);
    try {
      const total = await importInChunks(service.id, keys, showProgress);
      result.replaceChildren(summaryView(total));
      submit.hidden = true;
      // The summary in the dialog says it all; a toast is only needed once the dialog is closed.
      if (!dialog.open) toast(t('import.done', { success: total.success_count, skipped: total.skipped_count, failed: total.failed_count }), total.error || total.failed_count ? 'error' : 'success');
    } catch {
      return; // the session expired: the login screen is shown
    } finally {
      running = false;
    }
    onDone();
  });

  const dialog = openDialog({
    title: t('import.title', { name: service.name }),
    testid: 'import-dialog',
    wide: true,
    content: [
      h('p', { class: 'hint', text: () => t('import.intro', { size: CHUNK_SIZE }) }),
      field({ label: () => t('import.paste'), control: textarea }),
      count,
      field({ label: () => t('import.file'), control: file }),
      progress, progressText, result,
    ],
    actions: [
      h('button', { type: 'button', class: 'btn', testid: 'import-close', text: () => t('common.close'), onclick: () => dialog.close() }),
      submit,
    ],
  });
  dialog.addEventListener('cancel', (event) => { if (running) event.preventDefault(); });
  updateCount();
  textarea.focus();
}
