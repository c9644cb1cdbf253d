import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { EV } from '../../../src/attest/eventlog.ts';
import { loadPolicies, PolicyProblems } from '../../../src/attest/policy.ts';
import { TPM_ALG } from '../../../src/tpm/constants.ts';
import { missingTools } from '../../helpers/hw.ts';
import { OpensslCas } from './ek-certs.ts';

const skip = missingTools('openssl');
let cas: OpensslCas;
let files: Record<string, string>;

before(() => {
  if (skip) return;
  cas = new OpensslCas();
  const root = cas.root('root');
  const inter = cas.intermediate(root, 'inter');
  const leaf = cas.intermediate(root, 'leaf', { ca: false });
  files = { '/ca.pem': root.pem + inter.pem, '/leaf.pem': leaf.pem, '/empty.pem': 'nothing here\n' };
});
after(() => cas?.cleanup());

const readFile = (p: string) => {
  const f = files[p];
  if (f === undefined) throw Object.assign(new Error('no such file'), { code: 'ENOENT' });
  return f;
};

const zero = '00'.repeat(32);
const golden = Object.fromEntries([0, 1, 2, 3, 4, 5, 6, 7].map((i) => [String(i), zero]));

test('a policy resolves: certificates loaded, hex decoded, event types named', { skip: skip ?? false }, () => {
  const policies = loadPolicies(
    {
      ci: {
        ekCaFiles: ['/ca.pem'],
        pcrs: { bank: 'sha256', select: [7, 0, 1, 2, 3, 4, 5, 6] },
        golden: [golden],
        eventLog: { rules: [{ pcr: 7, type: 'EV_SEPARATOR', data: '00000000', require: true }, { pcr: [4, 5], type: 0x80000003 }, { text: 'hello' }] },
      },
      lab: { ekHashes: ['ab'.repeat(32)], pcrs: { bank: 'sha1', select: [0] }, golden: [{ 0: '11'.repeat(20) }], akAlgorithms: ['ecc'] },
    },
    readFile,
  );
  const ci = policies.get('ci')!;
  assert.equal(ci.ekCas.length, 2);
  assert.deepEqual(ci.pcrs, { bank: 'sha256', hashAlg: TPM_ALG.SHA256, select: [0, 1, 2, 3, 4, 5, 6, 7] });
  assert.deepEqual(ci.golden![0]!.get(7), Buffer.alloc(32));
  assert.deepEqual(ci.eventLog!.rules[0], { pcrs: [7], type: EV.EV_SEPARATOR, data: Buffer.alloc(4), require: true });
  assert.deepEqual(ci.eventLog!.rules[1], { pcrs: [4, 5], type: 0x80000003, require: false });
  assert.deepEqual(ci.eventLog!.rules[2], { data: Buffer.from('hello'), require: false });
  assert.deepEqual([...ci.akAlgorithms].sort(), ['ecc', 'rsa']);
  const lab = policies.get('lab')!;
  assert.equal(lab.pcrs.hashAlg, TPM_ALG.SHA1);
  assert.deepEqual([...lab.akAlgorithms], ['ecc']);
  assert.ok(lab.ekHashes.has('ab'.repeat(32)));
});

test('every problem is reported at once', { skip: skip ?? false }, () => {
  let err: unknown;
  try {
    loadPolicies(
      {
        nothing: { pcrs: { bank: 'sha256', select: [0, 0] } },
        badgold: { ekHashes: ['AB'], pcrs: { bank: 'sha256', select: [0, 1] }, golden: [{ 0: '00', 9: zero }] },
        badrules: { ekCaFiles: ['/missing.pem', '/empty.pem', '/leaf.pem'], pcrs: { bank: 'sha256', select: [7] }, eventLog: { rules: [{}, { type: 'EV_BOGUS' }, { pcr: 9 }, { data: '00', text: 'x' }] } },
        Upper: {},
        worse: { ekHashes: [], pcrs: { bank: 'md5', select: [] }, golden: [], extra: 1 },
      },
      readFile,
    );
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof PolicyProblems);
  assert.equal(err.code, 'CONFIG_INVALID');
  const want = [
    /^nothing\.ekCaFiles: give ekCaFiles, ekHashes or both$/,
    /^nothing\.golden: give golden values, eventLog rules or both$/,
    /^nothing\.pcrs\.select: lists a pcr twice$/,
    /^badgold\.ekHashes\.0: must be 64 lower-case hex digits/,
    /^badgold\.golden\.0\.9: pcr is not in pcrs.select$/,
    /^badgold\.golden\.0\.0: must be 32 bytes \(sha256\)$/,
    /^badgold\.golden\.0: lacks pcr 1$/,
    /^badrules\.eventLog\.rules\.0: a rule names at least one of/,
    /^badrules\.eventLog\.rules\.1\.type: unknown event type EV_BOGUS$/,
    /^badrules\.eventLog\.rules\.2\.pcr: pcr 9 is not in pcrs.select$/,
    /^badrules\.eventLog\.rules\.3: give data or text, not both$/,
    /^badrules\.ekCaFiles\.0: cannot read \/missing\.pem: ENOENT$/,
    /^badrules\.ekCaFiles\.1: \/empty\.pem holds no PEM certificate$/,
    /^badrules\.ekCaFiles\.2: \/leaf\.pem certificate 1 \(CN=leaf\) is not a ca$/,
    /^Upper: policy names are lower-case letters, digits and -$/,
    /^worse: Unrecognized key: "extra"$/,
    /^worse\.pcrs\.bank: /,
    /^worse\.pcrs\.select: /,
    /^worse\.golden: /,
  ];
  for (const re of want) assert.ok(err.problems.some((p) => re.test(p)), `missing ${re}\n${err.problems.join('\n')}`);
});
