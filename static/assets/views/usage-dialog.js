// "Use" dialog: the service's proxy URL and a ready-made client snippet, each with a copy button.
import { h } from '../dom.js';
import { t } from '../i18n.js';
import { clientSnippet, proxyUrl } from '../format.js';
import { copyText, field, openDialog, toast } from '../ui.js';

function copyButton(text, testid) {
  return h('button', {
    type: 'button', class: 'btn btn-sm', testid, text: () => t('common.copy'),
    onclick: async () => {
      const done = await copyText(text);
      toast(done ? t('usage.copied') : t('usage.copyFailed'), done ? 'success' : 'error');
    },
  });
}

const SNIPPET_TITLES = {
  curl: 'usage.snippet.curl',
  openai_compatible: 'usage.snippet.openai',
  anthropic_native: 'usage.snippet.anthropic',
  gemini_native: 'usage.snippet.gemini',
};

/** Opens the dialog; `configPromise` resolves to `/admin/app-config`. */
export async function openUsageDialog(service, configPromise) {
  const config = await configPromise;
  const url = proxyUrl(config.proxy_public_base_url || location.origin, service);
  const snippet = clientSnippet(url, service);
  openDialog({
    title: t('usage.title', { name: service.name }),
    testid: 'usage-dialog',
    wide: true,
    content: [
      field({
        label: () => t('usage.url'),
        control: h('input', { name: 'proxy_url', readOnly: true, value: url, testid: 'proxy-url', class: 'mono' }),
        addon: copyButton(url, 'copy-url'),
        hint: () => t(service.config_type === 'LLM' ? 'usage.hintLlm' : 'usage.hintGeneric'),
      }),
      h('div', { class: 'snippet-head' },
        h('h3', { text: () => t(SNIPPET_TITLES[snippet.language]) }),
        copyButton(snippet.code, 'copy-snippet')),
      h('pre', { class: 'snippet', tabindex: '0' }, h('code', { testid: 'snippet', text: snippet.code })),
      h('p', { class: 'hint', text: () => t('usage.keyHint') }),
    ],
  });
}
