// Shared settings and helpers for the compatibility tests. run.sh exports
// the COMPAT_* variables after it has started mockllm and the gateway.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the suite with test/compat/run.sh`);
  return v;
}

export const ROOT = need('COMPAT_ROOT');
export const TMP = need('COMPAT_TMP');
export const CONFIG = need('COMPAT_CONFIG');
export const LLMPROXY = need('COMPAT_LLMPROXY');
export const GATEWAY = need('COMPAT_GATEWAY_URL');
export const MOCK = need('COMPAT_MOCK_URL');
export const ADMIN = need('COMPAT_ADMIN_URL');
export const ADMIN_TOKEN = need('COMPAT_ADMIN_TOKEN');
export const MODEL = process.env.COMPAT_MODEL || 'mock-model';

// Keys of the config written by run.sh: [secret, public id].
export const KEYS = {
  openai: ['sk-compat-openai-0001', 'compat-openai'],
  anthropic: ['sk-compat-anthropic-0001', 'compat-anthropic'],
  opencode: ['sk-compat-opencode-0001', 'compat-opencode'],
  readme: ['sk-compat-readme-0001', 'compat-readme'],
  rpm: ['sk-compat-rpm-0001', 'compat-rpm'],
  rps: ['sk-compat-rps-0001', 'compat-rps'],
  quota: ['sk-compat-quota-0001', 'compat-quota'],
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export { sleep };

// usage(keyId) sums the rows of GET /admin/usage?key=ID (one row per period).
export async function usage(keyId) {
  const res = await fetch(`${ADMIN}/admin/usage?key=${encodeURIComponent(keyId)}`, {
    headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET /admin/usage?key=${keyId}: ${res.status} ${text}`);
  const body = JSON.parse(text);
  const rows = (body.usage || []).filter((r) => r.key_id === keyId);
  const sum = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, requests: 0, rows };
  for (const r of rows) {
    for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens', 'requests']) sum[k] += r[k] || 0;
  }
  return sum;
}

// waitUsage polls the admin API until pred(usage) holds (the meter is
// asynchronous) and returns the last reading; it throws after timeoutMs.
export async function waitUsage(keyId, pred, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await usage(keyId);
    if (pred(last)) return last;
    if (Date.now() > deadline) {
      throw new Error(`usage of ${keyId} did not reach the expected value in ${timeoutMs} ms; last: ${JSON.stringify(last)}`);
    }
    await sleep(100);
  }
}

// cliUsage runs `llmproxy usage --config F --json --key ID`.
export async function cliUsage(keyId) {
  const { stdout } = await promisify(execFile)(LLMPROXY, ['usage', '--config', CONFIG, '--json', '--key', keyId], {
    cwd: TMP,
    timeout: 20000,
  });
  const body = JSON.parse(stdout);
  const rows = (body.usage || []).filter((r) => r.key_id === keyId);
  const sum = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0, requests: 0 };
  for (const r of rows) for (const k of Object.keys(sum)) sum[k] += r[k] || 0;
  return sum;
}

// strip returns a deep copy of v without the fields that differ between two
// otherwise identical requests (ids, timestamps, mockllm's send time).
const VOLATILE = new Set(['id', 'created', 'mock_sent_ns']);
export function strip(v) {
  if (Array.isArray(v)) return v.map(strip);
  if (v && typeof v === 'object') {
    const out = {};
    for (const [k, x] of Object.entries(v)) if (!VOLATILE.has(k)) out[k] = strip(x);
    return out;
  }
  return v;
}
