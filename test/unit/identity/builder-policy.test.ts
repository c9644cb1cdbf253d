import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BuilderPolicy } from '../../../src/identity/builder-policy.ts';
import type { BuilderIdentity } from '../../../src/identity/builder-extensions.ts';
import { isSigilError } from '../../../src/errors.ts';

const who = (over: Partial<BuilderIdentity> = {}): BuilderIdentity => ({
  san: `spiffe://sigil.example/builder/tpm/${'a'.repeat(64)}`,
  ekHash: 'a'.repeat(64),
  akName: '000b' + 'b'.repeat(64),
  pcrSelection: 'sha256:0,1',
  pcrDigest: 'c'.repeat(64),
  policy: 'ci-linux',
  claims: { repository: 'acme/app', ref: 'refs/heads/main' },
  ...over,
});

const policy = new BuilderPolicy([
  {
    keys: ['release/*'],
    identities: [{ san: 'spiffe://sigil.example/builder/tpm/*', policy: 'ci-linux', claims: { repository: 'acme/*', ref: 'refs/heads/main' } }],
  },
  { keys: ['nightly/app', 'nightly/lib'], identities: [{ san: 'spiffe://sigil.example/*' }] },
]);

const denied = (fn: () => void, re: RegExp): void => assert.throws(fn, (e: unknown) => isSigilError(e, 'PERMISSION_DENIED') && re.test((e as Error).message));

test('a rule grants its keys to identities matching san, policy and every claim', () => {
  assert.equal(policy.allows(who(), 'release/app'), true);
  assert.equal(policy.allows(who(), 'release/deep/er'), true, '* crosses slashes');
  assert.equal(policy.allows(who(), 'releasex/app'), false);
  assert.equal(policy.allows(who({ policy: 'ci-windows' }), 'release/app'), false);
  assert.equal(policy.allows(who({ claims: { repository: 'acme/app' } }), 'release/app'), false, 'a missing claim does not match');
  assert.equal(policy.allows(who({ claims: { repository: 'acme/app', ref: 'refs/heads/mainx' } }), 'release/app'), false);
  assert.equal(policy.allows(who({ claims: { repository: 'other/app', ref: 'refs/heads/main' } }), 'release/app'), false);
  assert.equal(policy.allows(who({ claims: { repository: 'acme/x', ref: 'refs/heads/main', extra: 'fine' } }), 'release/app'), true);
  assert.equal(policy.allows(who({ san: 'spiffe://other.example/builder/tpm/x' }), 'release/app'), false);
  assert.equal(policy.allows(who({ policy: 'any', claims: {} }), 'nightly/app'), true, 'a rule without policy or claims');
  assert.equal(policy.allows(who(), 'nightly/other'), false);
  assert.equal(new BuilderPolicy([]).allows(who(), 'release/app'), false, 'no rules, no keys');
});

test('check caches per certificate and key, names the key, and refuses malformed references', () => {
  const b = who();
  policy.check('fp1', b, 'release/app');
  policy.check('fp1', b, 'release/app@3');
  denied(() => policy.check('fp1', b, 'secret/key'), new RegExp(`^builder ${b.san} may not use key secret/key$`));
  denied(() => policy.check('fp1', b, 'secret/key@2'), /may not use key secret\/key$/);
  denied(() => policy.check('fp1', b, 'secret/key'), /secret\/key/);
  assert.throws(() => policy.check('fp1', b, 'Bad Name'), (e: unknown) => isSigilError(e, 'INVALID_ARGUMENT'));
  // Glob metacharacters of regular expressions are literal.
  const dots = new BuilderPolicy([{ keys: ['a.b'], identities: [{ san: 'spiffe://x/(y)' }] }]);
  assert.equal(dots.allows(who({ san: 'spiffe://x/(y)' }), 'a.b'), true);
  assert.equal(dots.allows(who({ san: 'spiffe://x/(y)' }), 'axb'), false);
});

test('the decision cache stays bounded under many certificates and keys', () => {
  const b = who();
  for (let i = 0; i < 12_000; i++) policy.check(`fp-${i}`, b, 'release/app');
  for (let i = 0; i < 3000; i++) denied(() => policy.check('fp-many', b, `other/k${i}`), /may not use/);
  policy.check('fp-many', b, 'release/app');
});
