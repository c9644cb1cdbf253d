import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../../../src/config/load.ts';
import { planReload, RELOADABLE } from '../../../src/config/reload.ts';
import { MINIMAL_CONFIG } from '../../helpers/fixtures-text.ts';

const base = `${MINIMAL_CONFIG}identity: { trustDomain: sigil.test }
`;
const attestation = `
attestation:
  policies:
    ci: { pcrs: { bank: sha256, select: [0, 7] }, golden: [{ "0": "${'00'.repeat(32)}", "7": "${'00'.repeat(32)}" }], ekHashes: ["${'ab'.repeat(32)}"] }
`;
const parse = (text: string) => parseConfig(text, '/srv/sigil/config.yaml', { checkFiles: false });

test('the same config: nothing applied, nothing ignored', () => {
  const p = planReload(parse(base + attestation), parse(base + attestation));
  assert.deepEqual([p.applied, p.ignored], [[], []]);
});

test('reloadable parts apply; every other changed leaf is named by its key path and left as it runs', () => {
  const now = parse(base + attestation);
  const next = parse(
    base.replace('cn:admin', 'cn:other').replace('token: sigil', 'token: other').replace('127.0.0.1:0', '127.0.0.1:9') +
      attestation.replace(`"7": "${'00'.repeat(32)}"`, `"7": "${'11'.repeat(32)}"`) +
      `authorization: { builders: [{ keys: ["ci/*"], identities: [{ san: "spiffe://sigil.test/*" }] }] }\nlimits: { maxBatch: 8 }\n`,
  );
  const p = planReload(now, next);
  assert.deepEqual(p.applied, ['auth.roles', 'authorization.builders', 'attestation.policies']);
  assert.deepEqual(p.ignored, ['backends.hsm.token', 'limits.maxBatch', 'listen']);
  assert.deepEqual(p.effective.auth.roles.admin, ['cn:other']);
  assert.equal(p.effective.attestation!.policies.ci!.golden![0]!['7'], '11'.repeat(32));
  assert.equal(p.effective.listen, '127.0.0.1:0', 'the running value stays');
  assert.equal(p.effective.limits.maxBatch, 1024);
  assert.equal((p.effective.backends.hsm as { token: string }).token, 'sigil');
  // The running config is not changed by planning.
  assert.deepEqual(now.auth.roles.admin, ['cn:admin']);
});

test('attestation turned on or off, or its nonce lifetime changed, needs a restart', () => {
  const off = parse(base);
  const on = parse(base + attestation);
  assert.deepEqual([planReload(off, on).applied, planReload(off, on).ignored], [[], ['attestation']]);
  assert.deepEqual([planReload(on, off).applied, planReload(on, off).ignored], [[], ['attestation']]);
  const ttl = parse(base + attestation.replace('attestation:\n', 'attestation:\n  nonceTtl: 30s\n'));
  assert.deepEqual([planReload(on, ttl).applied, planReload(on, ttl).ignored], [[], ['attestation.nonceTtl']]);
  assert.deepEqual(RELOADABLE, ['auth.roles', 'authorization.builders', 'attestation.policies', 'tls']);
});

test('tls file paths are taken as they are, not reported as ignored: the daemon compares what the files hold', () => {
  const cur = parse(base);
  const next = structuredClone(cur);
  next.tls.certFile = '/etc/sigil/renewed.pem';
  const plan = planReload(cur, next);
  assert.deepEqual([plan.applied, plan.ignored], [[], []]);
  assert.equal(plan.effective.tls.certFile, '/etc/sigil/renewed.pem');
});

