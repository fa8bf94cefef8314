// flagd RPC end to end: the Node OpenFeature server SDK with @openfeature/flagd-provider (RPC
// mode, no TLS) against the real server's gRPC port. Every flag type for several units equals
// the native /v1/allocate answer; error paths reach the client as OpenFeature error codes; an
// admin PUT reaches the provider as PROVIDER_CONFIGURATION_CHANGED through EventStream.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { FlagdProvider } from '@openfeature/flagd-provider';
import { ErrorCode, OpenFeature, ProviderEvents } from '@openfeature/server-sdk';

import { ADMIN_TOKEN, DEMO, FLAGS, Server, contexts, details } from './support.mjs';

const provider = (server) =>
  new FlagdProvider({ host: '127.0.0.1', port: server.grpcPort, tls: false, resolverType: 'rpc', deadlineMs: 5000 });

let server;
let client;

before(async () => {
  server = await Server.start('--admin-token', ADMIN_TOKEN);
  await OpenFeature.setProviderAndWait('flagd', provider(server));
  client = OpenFeature.getClient('flagd');
});

after(async () => {
  await OpenFeature.close();
  await server?.stop();
});

test('every type for several units equals the native /v1/allocate answer', async () => {
  for (const [unit, attrs] of contexts()) {
    const answer = await server.native({ targetingKey: unit, ...attrs });
    for (const [key, kind, defaultValue] of FLAGS) {
      const got = await details(client, kind, key, defaultValue, { targetingKey: unit, ...attrs });
      const want = answer.flags[key];
      assert.equal(got.errorCode, undefined, `${key}: ${got.errorMessage}`);
      assert.deepEqual(got.value, want.value, key);
      assert.equal(got.variant, want.variant, key);
      // The provider caches STATIC answers and then reports CACHED.
      assert.ok([want.reason, 'CACHED'].includes(got.reason), `${key}: ${got.reason} vs ${want.reason}`);
      if (got.reason !== 'CACHED') {
        assert.equal(got.flagMetadata.revision, answer.revision, key);
        assert.equal(got.flagMetadata.experiment, want.experiment, key);
        assert.equal(got.flagMetadata.cell, want.cell, key);
      }
    }
  }
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
  got = await client.getObjectDetails('tv-theme', {}, { targetingKey: 'm-1' });
  assert.equal(got.errorCode, ErrorCode.TYPE_MISMATCH);
});

test('a rollout without its unit is an error the message names', async () => {
  // flagd's gRPC protocol has no status for TARGETING_KEY_MISSING: allot answers
  // FAILED_PRECONDITION with the code first in the message, which the provider reports as GENERAL.
  const got = await client.getBooleanDetails('search.new-ranker', true, { country: 'DE' });
  assert.equal(got.errorCode, ErrorCode.GENERAL);
  assert.match(got.errorMessage, /^TARGETING_KEY_MISSING: /);
  assert.equal(got.value, true);
});

test('an admin PUT reaches the provider as a configuration change', async () => {
  const own = await Server.start('--admin-token', ADMIN_TOKEN);
  try {
    await OpenFeature.setProviderAndWait('flagd-change', provider(own));
    const c = OpenFeature.getClient('flagd-change');
    const changed = [];
    const seen = new Promise((ok) => {
      c.addHandler(ProviderEvents.ConfigurationChanged, (event) => {
        changed.push(event.flagsChanged ?? []);
        if ((event.flagsChanged ?? []).includes('checkout.retry-limit')) ok();
      });
    });
    const before = await c.getNumberDetails('checkout.retry-limit', -1, { targetingKey: 'm-1' });
    assert.equal(before.value, 3);

    const status = await own.putConfig(DEMO.replace('variants: { three: 3 }', 'variants: { three: 4 }'));
    assert.equal(status, 200);

    let timer;
    const timeout = new Promise((_, fail) => {
      timer = setTimeout(() => fail(new Error(`no configuration change seen: ${JSON.stringify(changed)}`)), 10000);
    });
    await Promise.race([seen, timeout]).finally(() => clearTimeout(timer));
    assert.deepEqual(changed.at(-1), ['checkout.retry-limit']);
    const afterPut = await c.getNumberDetails('checkout.retry-limit', -1, { targetingKey: 'm-1' });
    assert.equal(afterPut.value, 4);
    const native = await own.native({ targetingKey: 'm-1' });
    assert.equal(native.flags['checkout.retry-limit'].value, 4);
  } finally {
    await own.stop();
  }
});
