// opencode (`opencode run`, non-interactive) with the gateway as an
// OpenAI-compatible provider, offline: HOME in a temp dir, no auto-update, no
// models.dev fetch, every non-loopback HTTP(S) request sent to a dead proxy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { arch, platform } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { GATEWAY, MODEL, KEYS, TMP, usage, waitUsage } from './lib/env.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const [KEY, KEY_ID] = KEYS.opencode;

// The platform package holds the real binary; opencode-ai's bin is a copy
// made by its postinstall, so prefer the former.
function opencodeBinary() {
  const os = { linux: 'linux', darwin: 'darwin', win32: 'windows' }[platform()] ?? platform();
  const exe = os === 'windows' ? 'opencode.exe' : 'opencode';
  for (const pkg of [`opencode-${os}-${arch()}`, `opencode-${os}-${arch()}-baseline`, `opencode-${os}-${arch()}-musl`, `opencode-${os}-${arch()}-baseline-musl`]) {
    const p = join(here, 'node_modules', pkg, 'bin', exe);
    if (existsSync(p)) return p;
  }
  return join(here, 'node_modules', '.bin', 'opencode');
}

function run(cmd, args, opts) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeout);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

test('opencode run against the gateway exits 0 and is metered under its key', async () => {
  const home = mkdtempSync(join(TMP, 'opencode-home-'));
  const project = join(home, 'project');
  mkdirSync(join(home, '.config', 'opencode'), { recursive: true });
  mkdirSync(project);
  const config = {
    $schema: 'https://opencode.ai/config.json',
    autoupdate: false,
    share: 'disabled',
    provider: {
      llmproxy: {
        npm: '@ai-sdk/openai-compatible',
        name: 'LLMProxy',
        // The key comes from the environment, as in the README's "Use with your tools".
        options: { baseURL: `${GATEWAY}/v1`, apiKey: '{env:LLMPROXY_API_KEY}' },
        models: { [MODEL]: { name: 'Mock model' } },
      },
    },
    model: `llmproxy/${MODEL}`,
    small_model: `llmproxy/${MODEL}`,
  };
  writeFileSync(join(home, '.config', 'opencode', 'opencode.json'), JSON.stringify(config, null, 2));

  const before = await usage(KEY_ID);
  const dead = 'http://127.0.0.1:9';
  const env = {
    PATH: process.env.PATH,
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CACHE_HOME: join(home, '.cache'),
    XDG_STATE_HOME: join(home, '.local', 'state'),
    TERM: 'dumb',
    LLMPROXY_API_KEY: KEY,
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    HTTP_PROXY: dead,
    HTTPS_PROXY: dead,
    http_proxy: dead,
    https_proxy: dead,
    NO_PROXY: '127.0.0.1,localhost',
    no_proxy: '127.0.0.1,localhost',
    npm_config_offline: 'true',
  };
  const r = await run(
    opencodeBinary(),
    ['run', '--print-logs', '--log-level', 'WARN', '--model', `llmproxy/${MODEL}`, 'Reply with one short sentence.'],
    { cwd: project, env, timeout: 90000 },
  );
  const out = `exit ${r.code} signal ${r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
  assert.equal(r.code, 0, out);
  assert.match(r.stdout, /tok0 tok1/, `mockllm's reply is not in opencode's output\n${out}`);

  const u = await waitUsage(KEY_ID, (x) => x.requests > before.requests && x.total_tokens > before.total_tokens);
  assert.ok(u.completion_tokens > before.completion_tokens, JSON.stringify(u));
});
