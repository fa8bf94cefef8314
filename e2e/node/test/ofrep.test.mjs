// OFREP end to end: the Node OpenFeature server SDK with @openfeature/ofrep-provider against
// the real server. Every flag type for several units equals the native /v1/allocate answer,
// and the error paths reach the client as the right OpenFeature error codes.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { OFREPProvider } from '@openfeature/ofrep-provider';
import { ErrorCode, OpenFeature } from '@openfeature/server-sdk';

import { ADMIN_TOKEN, FLAGS, Server, contexts, details } from './support.mjs';

let server;
let client;

before(async () => {
  server = await Server.start('--admin-token', ADMIN_TOKEN);
  await OpenFeature.setProviderAndWait('ofrep', new OFREPProvider({ baseUrl: server.http }));
  client = OpenFeature.getClient('ofrep');
});

after(async () => {
  await OpenFeature.close();
  await server?.stop();
});

test('every type for several units equals the native /v1/allocate answer', async () => {
  const experiments = new Set();
  const reasons = new Set();
  for (const [unit, attrs] of contexts()) {
    const answer = await server.native({ targetingKey: unit, ...attrs });
    for (const [key, kind, defaultValue] of FLAGS) {
      const got = await details(client, kind, key, defaultValue, { targetingKey: unit, ...attrs });
      const want = answer.flags[key];
      assert.equal(got.errorCode, undefined, `${key}: ${got.errorMessage}`);
      assert.deepEqual(got.value, want.value, key);
      assert.equal(got.variant, want.variant, key);
      assert.equal(got.reason, want.reason, key);
      const meta = got.flagMetadata;
      assert.equal(meta.revision, answer.revision, key);
      if ('experiment' in want) {
        assert.deepEqual([meta.experiment, meta.cell, meta.layer], [want.experiment, want.cell, want.layer], key);
        experiments.add(want.experiment);
      } else {
        assert.equal(meta.experiment, undefined, key);
      }
      reasons.add(want.reason);
    }
  }
  // The units reach every decision kind and every experiment, so the comparison covers them.
  assert.deepEqual([...reasons].sort(), ['DEFAULT', 'DISABLED', 'SPLIT', 'STATIC', 'TARGETING_MATCH']);
  assert.deepEqual([...experiments].sort(), ['abr-tuning', 'artwork-v2', 'smarter-prefetch', 'tv-ui-refresh']);
});

test('an unknown flag is FLAG_NOT_FOUND', async () => {
  const got = await client.getBooleanDetails('no-such-flag', true, { targetingKey: 'm-1' });
  assert.equal(got.errorCode, ErrorCode.FLAG_NOT_FOUND);
  assert.equal(got.value, true);
});

test('a flag of another type is TYPE_MISMATCH', async () => {
  let got = await client.getBooleanDetails('artwork-style', false, { targetingKey: 'm-1' });
  assert.equal(got.errorCode, ErrorCode.TYPE_MISMATCH);
  assert.equal(got.value, false);
  got = await client.getStringDetails('row-count', 'x', { targetingKey: 'm-1' });
  assert.equal(got.errorCode, ErrorCode.TYPE_MISMATCH);
});

test('a rollout without its unit is TARGETING_KEY_MISSING', async () => {
  const got = await client.getBooleanDetails('search.new-ranker', true, { country: 'DE' });
  assert.equal(got.errorCode, ErrorCode.TARGETING_KEY_MISSING);
  assert.equal(got.value, true);
});

test('flags decided without a unit evaluate without a targeting key', async () => {
  let got = await client.getNumberDetails('checkout.retry-limit', -1, {});
  assert.deepEqual([got.errorCode, got.value, got.reason], [undefined, 3, 'STATIC']);
  got = await client.getBooleanDetails('search.new-ranker', false, { country: 'SE' });
  assert.deepEqual([got.errorCode, got.value, got.reason], [undefined, true, 'TARGETING_MATCH']);
});
