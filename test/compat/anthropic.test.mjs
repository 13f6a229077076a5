// The official `@anthropic-ai/sdk` against the gateway's /v1/messages, passed
// to mockllm's Anthropic format, and the usage it must meter.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Anthropic from '@anthropic-ai/sdk';
import { GATEWAY, MOCK, MODEL, KEYS, strip, waitUsage, cliUsage } from './lib/env.mjs';

const [KEY, KEY_ID] = KEYS.anthropic;
// The SDK appends /v1/messages to baseURL and sends the key as x-api-key.
const gw = new Anthropic({ baseURL: GATEWAY, apiKey: KEY, maxRetries: 0, timeout: 30000 });
const direct = new Anthropic({ baseURL: MOCK, apiKey: 'direct-to-mockllm', maxRetries: 0, timeout: 30000 });

const req = {
  model: MODEL,
  max_tokens: 6,
  system: 'be brief',
  messages: [{ role: 'user', content: 'hello there world' }],
};
// mockllm: 3 per message + words; the top-level system counts as one more message.
const INPUT = 3 + 2 + 3 + 3;

// What the SDK reports, summed, to compare with the meter.
const seen = { input: 0, output: 0, requests: 0 };

test('messages, non-stream', async () => {
  const [a, b] = await Promise.all([gw.messages.create(req), direct.messages.create(req)]);
  seen.input += a.usage.input_tokens;
  seen.output += a.usage.output_tokens;
  seen.requests++;
  assert.deepEqual(strip(a), strip(b));
  assert.equal(a.type, 'message');
  assert.equal(a.content[0].text, 'tok0 tok1 tok2 tok3 tok4 tok5 ');
  assert.equal(a.stop_reason, 'max_tokens');
  assert.equal(a.usage.input_tokens, INPUT);
  assert.equal(a.usage.output_tokens, 6);
});

test('messages, stream: same events as the backend, and the helper assembles the message', async () => {
  const sreq = { ...req, max_tokens: 4 };
  const events = async (client) => {
    const out = [];
    for await (const ev of await client.messages.create({ ...sreq, stream: true })) out.push(ev);
    return out;
  };
  const a = await events(gw);
  seen.input += a.find((e) => e.type === 'message_start')?.message?.usage?.input_tokens ?? 0;
  seen.output += a.find((e) => e.type === 'message_delta')?.usage?.output_tokens ?? 0;
  seen.requests++;
  const b = await events(direct);
  assert.deepEqual(strip(a), strip(b), 'events through the gateway differ from the backend\'s');
  // The SDK drops `ping` events itself.
  assert.deepEqual(
    a.map((e) => e.type),
    ['message_start', 'content_block_start', ...Array(4).fill('content_block_delta'), 'content_block_stop', 'message_delta', 'message_stop'],
  );
  assert.equal(a[0].message.usage.input_tokens, INPUT);
  assert.equal(a.find((e) => e.type === 'message_delta').usage.output_tokens, 4);

  // The SDK's stream helper (what most apps use).
  const stream = gw.messages.stream({ ...sreq, max_tokens: 3 });
  const text = [];
  stream.on('text', (t) => text.push(t));
  const msg = await stream.finalMessage();
  seen.input += msg.usage.input_tokens;
  seen.output += msg.usage.output_tokens;
  seen.requests++;
  assert.equal(text.join(''), 'tok0 tok1 tok2 ');
  assert.equal(msg.content[0].text, 'tok0 tok1 tok2 ');
  assert.equal(msg.stop_reason, 'max_tokens');
  assert.equal(msg.usage.input_tokens, INPUT);
  assert.equal(msg.usage.output_tokens, 3);
});

test('bad key → AuthenticationError (401)', async () => {
  const bad = new Anthropic({ baseURL: GATEWAY, apiKey: 'sk-not-a-key', maxRetries: 0 });
  await assert.rejects(bad.messages.create(req), (err) => {
    assert.ok(err instanceof Anthropic.AuthenticationError, `got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.status, 401);
    return true;
  });
});

test('usage is metered under the key (admin API and CLI)', async () => {
  assert.equal(seen.requests, 3, 'the earlier tests must have run');
  const u = await waitUsage(KEY_ID, (x) => x.requests >= seen.requests && x.completion_tokens >= seen.output);
  assert.equal(u.requests, seen.requests, JSON.stringify(u));
  assert.equal(u.prompt_tokens, seen.input, `prompt tokens metered vs. reported by the SDK: ${JSON.stringify(u)}`);
  assert.equal(u.completion_tokens, seen.output, `completion tokens metered vs. reported by the SDK: ${JSON.stringify(u)}`);
  assert.equal(u.total_tokens, seen.input + seen.output);

  const c = await cliUsage(KEY_ID);
  assert.deepEqual(c, { prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens, requests: u.requests });
});
