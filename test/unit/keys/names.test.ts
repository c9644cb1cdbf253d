import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { checkKeyName, parseKeyRef, backendLabel } from '../../../src/keys/names.ts';
import { SigilError } from '../../../src/errors.ts';

test('valid names and refs parse', () => {
  assert.deepEqual(parseKeyRef('release/ci-provenance'), { name: 'release/ci-provenance', version: null });
  assert.deepEqual(parseKeyRef('release/ci-provenance@12'), { name: 'release/ci-provenance', version: 12 });
  assert.equal(checkKeyName('a'), 'a');
  assert.equal(backendLabel('release/ci.provenance', 3), 'sigil-release-ci-provenance-v3');
});

test('bad names and refs are refused with INVALID_ARGUMENT', () => {
  for (const bad of ['', 'A', '-x', 'x/', 'x//y', 'a/../b', 'x y', 'é', 'x'.repeat(129), 'x@', 'x@0', 'x@01', 'x@-1', '@1', 'x@1@2', 'x@1e3']) {
    assert.throws(() => parseKeyRef(bad), (e: unknown) => e instanceof SigilError && e.code === 'INVALID_ARGUMENT', JSON.stringify(bad));
  }
});

test('fuzz: parseKeyRef either parses or throws INVALID_ARGUMENT, never anything else', () => {
  fc.assert(
    fc.property(fc.string({ maxLength: 300, unit: 'binary' }), (s) => {
      try {
        const r = parseKeyRef(s);
        assert.ok(/^[a-z0-9]/.test(r.name));
        assert.ok(r.version === null || (Number.isInteger(r.version) && r.version >= 1));
      } catch (err) {
        assert.ok(err instanceof SigilError && err.code === 'INVALID_ARGUMENT', String(err));
      }
    }),
    { numRuns: 5000 },
  );
});

test('fuzz: name@N round-trips', () => {
  const name = fc.stringMatching(/^[a-z0-9][a-z0-9-]{0,20}(\/[a-z0-9][a-z0-9_.-]{0,20}){0,3}$/).filter((n) => !n.includes('..'));
  fc.assert(
    fc.property(name, fc.integer({ min: 1, max: 999_999_999 }), (n, v) => {
      assert.deepEqual(parseKeyRef(`${n}@${v}`), { name: n, version: v });
    }),
  );
});
