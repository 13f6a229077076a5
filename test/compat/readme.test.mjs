// Runs the curl examples of the repository's README.md against the test
// gateway, so the README cannot drift from what the gateway does.
//
// Every ```sh block that contains `curl` is taken; each command in it (lines
// joined at trailing backslashes, comments and blank lines dropped) is run
// with bash from the repository root after these substitutions:
//   http://127.0.0.1:8080     → the test gateway's URL (COMPAT_GATEWAY_URL)
//   sk-llmproxy-demo-123      → the test key sk-compat-readme-0001
//   examples/quickstart.yaml  → the test config written by run.sh
//   ./bin/                    → <repo>/bin/
// A curl command must exit 0 and print a JSON body, or an SSE stream of JSON
// events (and [DONE]), with no error object. Other commands must exit 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CONFIG, GATEWAY, KEYS, ROOT, waitUsage } from './lib/env.mjs';

const [KEY, KEY_ID] = KEYS.readme;
const QUICKSTART = { url: 'http://127.0.0.1:8080', key: 'sk-llmproxy-demo-123', config: 'examples/quickstart.yaml' };

function blocks(markdown) {
  const out = [];
  const re = /^```(?:sh|bash|shell)[ \t]*\n([\s\S]*?)^```/gm;
  for (let m; (m = re.exec(markdown)); ) out.push(m[1]);
  return out;
}

function commands(block) {
  const cmds = [];
  let cur = '';
  for (const raw of block.split('\n')) {
    const line = raw.trimEnd();
    if (!cur && (line.trim() === '' || line.trim().startsWith('#'))) continue;
    if (line.endsWith('\\')) {
      cur += line.slice(0, -1) + ' ';
      continue;
    }
    cmds.push(cur + line);
    cur = '';
  }
  if (cur.trim()) cmds.push(cur);
  return cmds.map((c) => c.trim()).filter(Boolean);
}

function substitute(cmd) {
  return cmd
    .replaceAll(QUICKSTART.url, GATEWAY)
    .replaceAll(QUICKSTART.key, KEY)
    .replaceAll(QUICKSTART.config, CONFIG)
    .replaceAll('./bin/', join(ROOT, 'bin') + '/');
}

function hasError(v) {
  return v != null && typeof v === 'object' && !Array.isArray(v) && 'error' in v && v.error != null;
}

// checkBody asserts a JSON body or an SSE stream of JSON events without an error.
function checkBody(body, what) {
  const text = body.trim();
  assert.ok(text, `${what}: empty body`);
  if (text.startsWith('{') || text.startsWith('[')) {
    let v;
    assert.doesNotThrow(() => (v = JSON.parse(text)), `${what}: body is not JSON: ${text.slice(0, 500)}`);
    assert.ok(!hasError(v), `${what}: error object in the body: ${text.slice(0, 500)}`);
    return 'json';
  }
  const data = text.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
  assert.ok(data.length > 0, `${what}: neither JSON nor SSE: ${text.slice(0, 500)}`);
  for (const d of data) {
    if (d === '[DONE]') continue;
    let v;
    assert.doesNotThrow(() => (v = JSON.parse(d)), `${what}: SSE data is not JSON: ${d.slice(0, 300)}`);
    assert.ok(!hasError(v) && v.type !== 'error', `${what}: error event in the stream: ${d.slice(0, 300)}`);
  }
  assert.equal(data.at(-1), '[DONE]', `${what}: the stream does not end with [DONE]`);
  return 'sse';
}

const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
const curlBlocks = blocks(readme).filter((b) => /\bcurl\b/.test(b));

test('the README has curl examples', () => {
  assert.ok(curlBlocks.length > 0, 'no ```sh block with curl in README.md');
});

let curlCount = 0;
curlBlocks.forEach((block, bi) => {
  commands(block).forEach((cmd, ci) => {
    const isCurl = /^curl\b/.test(cmd);
    if (isCurl) curlCount++;
    const name = `README block ${bi + 1}, command ${ci + 1}: ${cmd.slice(0, 70)}${cmd.length > 70 ? '…' : ''}`;
    test(name, async () => {
      const run = substitute(cmd);
      if (isCurl) assert.notEqual(run, cmd, 'nothing to substitute: the example does not use the quickstart address or key');
      let r;
      try {
        r = await promisify(execFile)('bash', ['-o', 'pipefail', '-c', run], { cwd: ROOT, timeout: 30000, maxBuffer: 16 << 20 });
      } catch (e) {
        assert.fail(`exit ${e.code}: ${run}\n--- stdout\n${e.stdout}\n--- stderr\n${e.stderr}`);
      }
      if (isCurl) checkBody(r.stdout, run);
    });
  });
});

test('the README curl requests are metered under the key', async () => {
  assert.ok(curlCount > 0);
  const u = await waitUsage(KEY_ID, (x) => x.requests >= curlCount && x.completion_tokens > 0);
  assert.ok(u.total_tokens > 0, JSON.stringify(u));
});
