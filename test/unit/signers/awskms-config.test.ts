import assert from 'node:assert/strict';
import { test } from 'node:test';
import { backendConfigSchema } from '../../../src/signers/config.ts';
import { awsKmsConfigSchema } from '../../../src/signers/awskms/config.ts';

test('fills the defaults and canonicalizes the endpoint', () => {
  const c = awsKmsConfigSchema.parse({ type: 'awskms', region: 'eu-west-1', endpoint: 'HTTP://127.0.0.1:4566/' });
  assert.deepEqual(c, { type: 'awskms', region: 'eu-west-1', endpoint: 'http://127.0.0.1:4566', timeoutMs: 5000, aliasPrefix: 'alias/sigil/', pendingWindowDays: 30, orphanSearchLimit: 1000 });
  assert.equal(backendConfigSchema.parse({ type: 'awskms', region: 'us-east-1' }).type, 'awskms');
});

test('refuses bad values and unknown keys, reporting every problem at once', () => {
  const r = awsKmsConfigSchema.safeParse({
    type: 'awskms', region: 'Europe', endpoint: 'https://kms.example/path', timeoutMs: 50, aliasPrefix: 'alias/aws/x', pendingWindowDays: 31, pin: 'x',
  });
  assert.equal(r.success, false);
  const paths = new Set(r.error!.issues.map((i) => String(i.path[0] ?? (i.code === 'unrecognized_keys' ? 'unknown' : ''))));
  for (const p of ['region', 'endpoint', 'timeoutMs', 'aliasPrefix', 'pendingWindowDays', 'unknown']) assert.ok(paths.has(p), `${p} reported`);
  for (const bad of [{ aliasPrefix: 'sigil/' }, { aliasPrefix: 'alias/a.b' }, { pendingWindowDays: 6 }, { timeoutMs: 120001 }, { endpoint: 'ftp://x' }, { credentialsFile: '' }, { orphanSearchLimit: 0 }, { orphanSearchLimit: 100_001 }, { orphanSearchLimit: 2.5 }]) {
    assert.equal(awsKmsConfigSchema.safeParse({ type: 'awskms', region: 'us-east-1', ...bad }).success, false, JSON.stringify(bad));
  }
});
