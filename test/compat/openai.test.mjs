// The official `openai` Node SDK against the gateway, each reply compared
// with the same request sent straight to mockllm through the same SDK.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { GATEWAY, MOCK, MODEL, KEYS, strip, sleep, waitUsage } from './lib/env.mjs';

const [KEY, KEY_ID] = KEYS.openai;
const gw = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: KEY, maxRetries: 0, timeout: 30000 });
const direct = new OpenAI({ baseURL: `${MOCK}/v1`, apiKey: 'direct-to-mockllm', maxRetries: 0, timeout: 30000 });

const messages = [
  { role: 'system', content: 'be brief' },
  { role: 'user', content: 'hello there world' },
];

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

const usageChunks = (chunks) => chunks.filter((c) => c.usage != null);

test('chat completion, non-stream: same reply as straight from the backend', async () => {
  const req = { model: MODEL, messages, max_tokens: 5 };
  const [a, b] = await Promise.all([gw.chat.completions.create(req), direct.chat.completions.create(req)]);
  assert.deepEqual(strip(a), strip(b));
  assert.equal(a.choices[0].message.content, 'tok0 tok1 tok2 tok3 tok4 ');
  assert.equal(a.choices[0].finish_reason, 'length');
  assert.deepEqual(a.usage, { prompt_tokens: 11, completion_tokens: 5, total_tokens: 16 });
});

test('chat completion, stream without stream_options: no usage chunk', async () => {
  const req = { model: MODEL, messages, max_tokens: 4, stream: true };
  const a = await collect(await gw.chat.completions.create(req));
  assert.equal(usageChunks(a).length, 0, 'the client did not ask for usage, so it must get no usage chunk');
  assert.equal(a.filter((c) => c.choices.length === 0).length, 0, 'no chunk with empty choices');
  assert.equal(a.map((c) => c.choices[0]?.delta?.content ?? '').join(''), 'tok0 tok1 tok2 tok3 ');
  assert.equal(a.at(-1).choices[0].finish_reason, 'length');

  // The same with include_usage set to false explicitly.
  const f = await collect(await gw.chat.completions.create({ ...req, stream_options: { include_usage: false } }));
  assert.equal(usageChunks(f).length, 0, 'include_usage: false, yet a usage chunk');
  assert.equal(f.map((c) => c.choices[0]?.delta?.content ?? '').join(''), 'tok0 tok1 tok2 tok3 ');
});

test('chat completion, stream without stream_options: same chunks as straight from the backend', async () => {
  const req = { model: MODEL, messages, max_tokens: 4, stream: true };
  const a = await collect(await gw.chat.completions.create(req));
  const b = await collect(await direct.chat.completions.create(req));
  assert.deepEqual(strip(a), strip(b), 'chunks through the gateway differ from the backend\'s');
});

test('chat completion, stream with include_usage: same chunks, exactly one usage chunk', async () => {
  const req = { model: MODEL, messages, max_tokens: 4, stream: true, stream_options: { include_usage: true } };
  const a = await collect(await gw.chat.completions.create(req));
  const b = await collect(await direct.chat.completions.create(req));
  const u = usageChunks(a);
  assert.equal(u.length, 1, 'exactly one usage chunk');
  assert.deepEqual(u[0].choices, []);
  assert.deepEqual(u[0].usage, { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 });
  assert.equal(a.at(-1), u[0], 'the usage chunk is the last one');
  assert.deepEqual(strip(a), strip(b), 'chunks through the gateway differ from the backend\'s');
});

test('completions, non-stream', async () => {
  const req = { model: MODEL, prompt: 'once upon a time', max_tokens: 3 };
  const [a, b] = await Promise.all([gw.completions.create(req), direct.completions.create(req)]);
  assert.deepEqual(strip(a), strip(b));
  assert.equal(a.choices[0].text, 'tok0 tok1 tok2 ');
  assert.deepEqual(a.usage, { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });
});

test('completions, stream: no usage chunk, same chunks as straight from the backend', async () => {
  const req = { model: MODEL, prompt: 'once upon a time', max_tokens: 3, stream: true };
  const a = await collect(await gw.completions.create(req));
  const b = await collect(await direct.completions.create(req));
  assert.equal(usageChunks(a).length, 0, 'the client did not ask for usage, so it must get no usage chunk');
  assert.equal(a.map((c) => c.choices[0]?.text ?? '').join(''), 'tok0 tok1 tok2 ');
  assert.deepEqual(strip(a), strip(b), 'chunks through the gateway differ from the backend\'s');
});

test('completions, stream with include_usage: exactly one usage chunk, same chunks', async () => {
  const req = { model: MODEL, prompt: 'once upon a time', max_tokens: 3, stream: true, stream_options: { include_usage: true } };
  const a = await collect(await gw.completions.create(req));
  const b = await collect(await direct.completions.create(req));
  const u = usageChunks(a);
  assert.equal(u.length, 1, 'exactly one usage chunk');
  assert.deepEqual(u[0].usage, { prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 });
  assert.deepEqual(strip(a), strip(b), 'chunks through the gateway differ from the backend\'s');
});

test('embeddings', async () => {
  // mockllm answers floats only (it ignores encoding_format: base64, the SDK's default).
  const req = { model: MODEL, input: ['hello world', 'second input here'], encoding_format: 'float' };
  const [a, b] = await Promise.all([gw.embeddings.create(req), direct.embeddings.create(req)]);
  assert.deepEqual(strip(a), strip(b));
  assert.equal(a.data.length, 2);
  assert.equal(a.data[0].embedding.length, 8);
  assert.equal(a.usage.prompt_tokens, 5);
});

test('models list', async () => {
  const ids = [];
  for await (const m of gw.models.list()) ids.push(m.id);
  const want = [];
  for await (const m of direct.models.list()) want.push(m.id);
  assert.ok(ids.includes(MODEL), `models ${JSON.stringify(ids)} lack ${MODEL}`);
  assert.deepEqual(ids.sort(), want.sort());
});

test('the requests above are metered under the key', async () => {
  // 1 chat + 4 chat streams + 1 completion + 2 completion streams + 1 embeddings (+ models, which may or may not count).
  const u = await waitUsage(KEY_ID, (x) => x.requests >= 9 && x.completion_tokens >= 5 + 4 * 4 + 3 * 3);
  assert.ok(u.prompt_tokens >= 11 * 4 + 4 * 3 + 5, JSON.stringify(u));
});

test('stream: each chunk reaches the SDK when the backend sends it', async () => {
  // mockllm waits 200 ms between tokens (X-Mock-Gap, passed through by the gateway).
  const stream = await gw.chat.completions.create(
    { model: MODEL, messages, max_tokens: 4, stream: true },
    { headers: { 'X-Mock-Gap': '200ms' } },
  );
  const at = [];
  for await (const c of stream) if (c.choices[0]?.delta?.content) at.push(Date.now());
  assert.equal(at.length, 4);
  for (let i = 1; i < at.length; i++) {
    assert.ok(at[i] - at[i - 1] >= 120, `tokens ${i - 1} and ${i} arrived ${at[i] - at[i - 1]} ms apart (backend gap 200 ms): buffered`);
  }
});

test('a backend 400 reaches the SDK as BadRequestError', async () => {
  await assert.rejects(
    gw.chat.completions.create({ model: MODEL, messages }, { headers: { 'X-Mock-Error-Rate': '1', 'X-Mock-Error-Status': '400' } }),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 400);
      assert.equal(typeof err.error?.message, 'string');
      return true;
    },
  );
});

test('bad key → AuthenticationError (401)', async () => {
  const bad = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: 'sk-not-a-key', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: MODEL, messages }), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 401);
    assert.equal(typeof err.error?.message, 'string', 'OpenAI-shaped error body');
    return true;
  });
});

// rate_limit: the key compat-rpm allows one request a minute.
test('429 → RateLimitError with Retry-After', async () => {
  const [key] = KEYS.rpm;
  const c = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: key, maxRetries: 0 });
  const req = { model: MODEL, messages, max_tokens: 1 };
  let err;
  for (let i = 0; i < 3 && !err; i++) {
    try {
      await c.chat.completions.create(req);
    } catch (e) {
      err = e;
    }
  }
  assert.ok(err, 'three requests within a minute on a key limited to 1 request/minute all succeeded: no 429');
  assert.ok(err instanceof OpenAI.RateLimitError, `got ${err?.constructor?.name}: ${err?.message}`);
  assert.equal(err.status, 429);
  const ra = err.headers?.get('retry-after');
  assert.ok(ra && Number(ra) > 0, `Retry-After header: ${ra}`);
  const rl = [...err.headers.keys()].filter((h) => h.startsWith('x-ratelimit-'));
  assert.ok(rl.length > 0, 'no x-ratelimit-* headers on the 429');
  assert.equal(typeof err.error?.message, 'string', 'OpenAI-shaped error body');
});

// A used-up quota's 429 carries a Retry-After of hours (the daily reset):
// with its default retries the SDK must raise it at once (the gateway
// sends x-should-retry: false), not sleep until tomorrow.
test('used-up quota → RateLimitError at once, default retries', async () => {
  const [key] = KEYS.quota;
  const c = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: key });
  const req = { model: MODEL, messages, max_tokens: 1 };
  const call = async () => {
    try {
      await c.chat.completions.create(req);
      return null;
    } catch (e) {
      return e;
    }
  };
  // The first request may be admitted (the quota has its one token).
  let err = await call();
  if (!err) err = await call();
  const start = Date.now();
  if (err?.error?.code !== 'insufficient_quota') err = await call();
  const timer = new Promise((r) => setTimeout(() => r('timeout'), 20000));
  const again = await Promise.race([call(), timer]);
  assert.notEqual(again, 'timeout', 'the SDK is still waiting after 20 s: it sleeps the Retry-After');
  assert.ok(again instanceof OpenAI.RateLimitError, `got ${again?.constructor?.name}: ${again?.message}`);
  assert.equal(again.error?.code, 'insufficient_quota');
  assert.ok(Number(again.headers?.get('retry-after')) > 60, `Retry-After ${again.headers?.get('retry-after')}`);
  assert.ok(Date.now() - start < 20000);
});

// rate_limit: the key compat-rps allows one request a second, so a 429 carries
// a Retry-After of about a second, which the SDK's own retry must honour.
test('the SDK retry honours Retry-After', async () => {
  const [key] = KEYS.rps;
  const attempts = [];
  const recordingFetch = async (url, init) => {
    const start = Date.now();
    const res = await fetch(url, init);
    attempts.push({
      start,
      end: Date.now(),
      status: res.status,
      retryAfter: res.headers.get('retry-after'),
      retryAfterMs: res.headers.get('retry-after-ms'),
    });
    return res;
  };
  const req = { model: MODEL, messages, max_tokens: 1 };
  const first = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: key, maxRetries: 0, fetch: recordingFetch });
  const retrying = new OpenAI({ baseURL: `${GATEWAY}/v1`, apiKey: key, maxRetries: 1, fetch: recordingFetch });

  // Use up the second's allowance, then ask again at once: the first attempt
  // must get a 429 and the SDK's single retry must wait Retry-After and succeed.
  await first.chat.completions.create(req).catch(() => {});
  await sleep(0);
  attempts.length = 0;
  const t0 = Date.now();
  const res = await retrying.chat.completions.create(req).catch((e) => e);
  const took = Date.now() - t0;
  const summary = JSON.stringify(attempts.map(({ status, retryAfter, retryAfterMs }) => ({ status, retryAfter, retryAfterMs })));
  assert.ok(attempts[0], 'no request was made');
  assert.equal(attempts[0].status, 429, `the immediate second request on a 1 req/s key was not rejected: ${summary}`);
  assert.equal(attempts.length, 2, `the SDK made ${attempts.length} attempts: ${summary}`);
  assert.ok(!(res instanceof Error), `the retry failed: ${res?.message} ${summary}`);
  assert.equal(res.choices[0].message.content, 'tok0 ');
  const waitMs = attempts[0].retryAfterMs != null ? Number(attempts[0].retryAfterMs) : Number(attempts[0].retryAfter) * 1000;
  assert.ok(waitMs > 0 && waitMs <= 60000, `Retry-After must be a positive number of seconds within 60 s: ${summary}`);
  const waited = attempts[1].start - attempts[0].end;
  // The SDK's default backoff for a first retry is at most 500 ms; waiting
  // the header's value shows it honoured it.
  assert.ok(waited >= waitMs - 50, `the SDK waited ${waited} ms, Retry-After asked for ${waitMs} ms`);
  assert.ok(took < waitMs + 5000, `took ${took} ms`);
});
