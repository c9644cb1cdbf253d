import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createDevCa } from '../../../src/dev/pki.ts';
import { bundleProblem } from '../../../src/config/tls-files.ts';

test('a client ca bundle is checked block by block: empty, junk, cut short, another kind of block or a bad certificate are refused', async () => {
  const a = (await createDevCa('ca a')).cert;
  const b = (await createDevCa('ca b')).cert;
  assert.equal(bundleProblem(Buffer.from(a)), null);
  assert.equal(bundleProblem(Buffer.from(`# operators\n${a}\n${b}`)), null, 'comments between blocks are fine');
  assert.equal(bundleProblem(Buffer.from('')), 'holds no pem certificate');
  assert.equal(bundleProblem(Buffer.from('hello, not a pem')), 'holds no pem certificate');
  assert.equal(bundleProblem(Buffer.from(a + b.slice(0, b.indexOf('-----END')))), 'holds a pem block without its end line (cut short?)');
  assert.equal(bundleProblem(Buffer.from(`${a}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n`)), 'holds a pem private key (block 2): give certificates only');
  assert.equal(bundleProblem(Buffer.from('-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n')), 'holds a certificate that does not parse (block 1)');
});
