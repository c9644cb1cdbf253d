import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { parseConfig, ConfigProblems } from '../../../src/config/load.ts';
import { existsSync } from 'node:fs';
import { MINIMAL_CONFIG } from '../../helpers/fixtures-text.ts';

const missing = (cmd: string): string | false => (['/usr/bin', '/bin', '/usr/sbin'].some((d) => existsSync(`${d}/${cmd}`)) ? false : `${cmd} not installed`);

const base = MINIMAL_CONFIG;

test('defaults are filled and relative paths resolve against the config file', () => {
  const c = parseConfig(base, '/srv/sigil/config.yaml');
  assert.equal(c.limits.maxMessageBytes, 64 * 1024 * 1024);
  assert.equal(c.limits.maxBatch, 1024);
  assert.equal(c.store.sqlite.path, '/srv/sigil/db/sigil.db');
  const hsm = c.backends.hsm!;
  assert.equal(hsm.type === 'pkcs11' && hsm.sessions, 8);
  assert.equal(hsm.type === 'pkcs11' && hsm.signThread, false);
  assert.equal(c.log.level, 'info');
});

test('cloud KMS and TPM backends: relative credential and state paths resolve, resilience defaults fill in, a missing credentials file is a problem', () => {
  const text = base.replace(
    'defaultBackend: hsm',
    `  aws: { type: awskms, region: eu-west-1, credentialsFile: creds/aws.json }
  gcp: { type: gcpkms, project: my-project, location: global, keyRing: sigil, credentialsFile: creds/sa.json, resilience: { retries: 0 } }
  tpm: { type: tpm, transport: "device:/dev/tpmrm0", stateDir: tpm-state, handleRange: { first: 0x81000200, last: "0x810002ff" } }
defaultBackend: hsm`,
  );
  const c = parseConfig(text, '/srv/sigil/config.yaml', { checkFiles: false });
  const { aws, gcp, tpm } = c.backends;
  assert.ok(aws?.type === 'awskms' && gcp?.type === 'gcpkms' && tpm?.type === 'tpm');
  assert.equal(aws.credentialsFile, '/srv/sigil/creds/aws.json');
  assert.equal(gcp.credentialsFile, '/srv/sigil/creds/sa.json');
  assert.equal(tpm.stateDir, '/srv/sigil/tpm-state');
  assert.deepEqual(tpm.handleRange, { first: 0x81000200, last: 0x810002ff });
  assert.equal(aws.resilience.retries, 2);
  assert.equal(gcp.resilience.retries, 0);
  assert.equal(gcp.protectionLevel, 'HSM');
  assert.throws(() => parseConfig(text, '/srv/sigil/config.yaml'), /backends\.aws\.credentialsFile/);
  assert.throws(() => parseConfig(text.replace('retries: 0', 'retries: 99'), '/x/c.yaml', { checkFiles: false }), /backends\.gcp\.resilience\.retries/);
});

test('production is the default mode', () => {
  const c = parseConfig(base.replace('mode: development\n', ''), '/x/c.yaml');
  assert.equal(c.mode, 'production');
});

test('yaml errors, duplicate keys and non-mappings are config problems', () => {
  assert.throws(() => parseConfig('listen: [', '/x/c.yaml'), ConfigProblems);
  assert.throws(() => parseConfig(`${base}\nlisten: 127.0.0.1:1\n`, '/x/c.yaml'), ConfigProblems);
  assert.throws(() => parseConfig('- a\n- b\n', '/x/c.yaml'), /must be a yaml mapping/);
});

test('fuzz: arbitrary text never crashes the loader, it is accepted or refused with ConfigProblems', () => {
  fc.assert(
    fc.property(fc.oneof(fc.string({ maxLength: 400 }), fc.jsonValue().map((v) => JSON.stringify(v))), (text) => {
      try {
        parseConfig(text, '/x/c.yaml', { checkFiles: false });
      } catch (err) {
        assert.ok(err instanceof ConfigProblems, String(err));
      }
    }),
    { numRuns: 2000 },
  );
});

test('a path may name systemd\'s $CREDENTIALS_DIRECTORY, and its absence is a clear problem', () => {
  const text = base.replace('pinFile: /etc/hostname', 'pinFile: "${CREDENTIALS_DIRECTORY}/hsm-pin"');
  const saved = process.env.CREDENTIALS_DIRECTORY;
  try {
    process.env.CREDENTIALS_DIRECTORY = '/run/credentials/sigild.service';
    const c = parseConfig(text, '/x/c.yaml', { checkFiles: false });
    const hsm = c.backends.hsm!;
    assert.equal(hsm.type === 'pkcs11' && hsm.pinFile, '/run/credentials/sigild.service/hsm-pin');
    delete process.env.CREDENTIALS_DIRECTORY;
    assert.throws(() => parseConfig(text, '/x/c.yaml', { checkFiles: false }), /backends\.hsm\.pinFile: names \$CREDENTIALS_DIRECTORY, which is not set/);
  } finally {
    if (saved === undefined) delete process.env.CREDENTIALS_DIRECTORY;
    else process.env.CREDENTIALS_DIRECTORY = saved;
  }
});

test('the shipped systemd unit passes systemd-analyze verify', { skip: missing('systemd-analyze') }, async () => {
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  const unit = new URL('../../../systemd/sigild.service', import.meta.url).pathname;
  const r = await promisify(execFile)('systemd-analyze', ['verify', unit]);
  assert.equal(r.stderr, '');
});

test('attestation ekCrlFiles resolve against the config file like ekCaFiles, and an unreadable one is a problem with its path', () => {
  const text = `${base}identity: { trustDomain: sigil.test }
attestation:
  policies:
    ci:
      ekCaFiles: [cas/ek.pem]
      ekCrlFiles: [crls/vendor.crl]
      pcrs: { bank: sha256, select: [0] }
      golden: [{ "0": "${'00'.repeat(32)}" }]
`;
  const c = parseConfig(text, '/srv/sigil/config.yaml', { checkFiles: false });
  const ci = (c.attestation!.policies as Record<string, { ekCaFiles: string[]; ekCrlFiles: string[]; ekCrlExpired: string }>).ci!;
  assert.deepEqual(ci.ekCaFiles, ['/srv/sigil/cas/ek.pem']);
  assert.deepEqual(ci.ekCrlFiles, ['/srv/sigil/crls/vendor.crl']);
  assert.equal(ci.ekCrlExpired, 'refuse');
  assert.throws(() => parseConfig(text, '/srv/sigil/config.yaml'), (e: unknown) => e instanceof ConfigProblems && e.problems.includes('attestation.policies.ci.ekCrlFiles.0: cannot read /srv/sigil/crls/vendor.crl'));
});

test('audit.archiveDir must be an absolute path, archiveAlign a power of two, archiveSegmentMax a multiple of it, archiveEvery needs archiveDir; absent, no directory', () => {
  const withAudit = (audit: string) => `${base}audit: ${audit}\n`;
  const c = parseConfig(base, '/srv/sigil/config.yaml');
  assert.equal(c.audit.archiveDir, undefined);
  assert.deepEqual([c.audit.archiveAlign, c.audit.archiveSegmentMax], [65536, 262144]);
  const ok = parseConfig(withAudit('{ archiveDir: /var/lib/sigil/archive, archiveAlign: 16, archiveSegmentMax: 48 }'), '/srv/sigil/config.yaml');
  assert.deepEqual([ok.audit.archiveDir, ok.audit.archiveAlign, ok.audit.archiveSegmentMax], ['/var/lib/sigil/archive', 16, 48]);
  const refused = (audit: string, pattern: RegExp) =>
    assert.throws(() => parseConfig(withAudit(audit), '/srv/sigil/config.yaml'), (err: unknown) => err instanceof ConfigProblems && pattern.test(err.message), audit);
  refused('{ archiveDir: archive }', /audit\.archiveDir.*must be an absolute path/);
  refused('{ archiveAlign: 24 }', /audit\.archiveAlign.*must be a power of two/);
  refused('{ archiveAlign: 16, archiveSegmentMax: 40 }', /audit\.archiveSegmentMax.*must be a multiple of audit\.archiveAlign \(16\)/);
  refused('{ archiveEvery: 30d }', /audit\.archiveEvery.*needs audit\.archiveDir/);
  // A timer Node cannot hold (above 2^31-1 ms it fires every millisecond) is refused: at most a week.
  refused('{ checkpointInterval: 30d }', /audit\.checkpointInterval.*must be at most 7d/);
  assert.equal(parseConfig(withAudit('{ checkpointInterval: 7d }'), '/srv/sigil/config.yaml').audit.checkpointInterval, 7 * 86_400_000);
  const every = parseConfig(withAudit('{ archiveDir: /a, archiveEvery: 30d, archiveKeep: 1000 }'), '/srv/sigil/config.yaml');
  assert.deepEqual([every.audit.archiveEvery, every.audit.archiveKeep], [30 * 86_400_000, 1000]);
});

test('listen ports: 0 to 65535; above is one problem naming the range, a malformed address only the host:port one', () => {
  assert.equal(parseConfig(base.replace('listen: 127.0.0.1:0', 'listen: 127.0.0.1:65535'), '/c.yaml').listen, '127.0.0.1:65535');
  const problems = (listen: string): string[] => {
    try {
      parseConfig(base.replace('listen: 127.0.0.1:0', `listen: "${listen}"`), '/c.yaml');
    } catch (err) {
      if (err instanceof ConfigProblems) return err.problems;
      throw err;
    }
    return [];
  };
  assert.deepEqual(problems('127.0.0.1:65536'), ['listen: the port must be 0 to 65535 (0 picks a free one)']);
  assert.deepEqual(problems('[::1]:99999'), ['listen: the port must be 0 to 65535 (0 picks a free one)']);
  assert.deepEqual(problems('nowhere'), ['listen: must be host:port, e.g. 127.0.0.1:8443 (port 0 picks a free one)']);
});

test('trustedRoot.validity: 7d by default, between 1m and 90d, at least 1h in production', () => {
  const HOUR = 3_600_000;
  assert.equal(parseConfig(base, '/srv/sigil/config.yaml').trustedRoot.validity, 7 * 24 * HOUR);
  assert.equal(parseConfig(`${base}trustedRoot: { validity: 30m }\n`, '/srv/sigil/config.yaml').trustedRoot.validity, 30 * 60_000);
  const refused = (text: string, pattern: RegExp) =>
    assert.throws(() => parseConfig(text, '/srv/sigil/config.yaml'), (err: unknown) => err instanceof ConfigProblems && pattern.test(err.message), text);
  refused(`${base}trustedRoot: { validity: 30s }\n`, /trustedRoot\.validity.*must be between 1m and 90d/);
  refused(`${base}trustedRoot: { validity: 91d }\n`, /trustedRoot\.validity.*must be between 1m and 90d/);
  refused(`${base}trustedRoot: { validity: 7d, other: 1 }\n`, /trustedRoot/);
  refused(`${base.replace('mode: development', 'mode: production')}trustedRoot: { validity: 30m }\n`, /trustedRoot\.validity.*must be at least 1h in production mode/);
});
