import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig, ConfigProblems } from '../../../src/config/load.ts';
import { formatDuration, parseDuration } from '../../../src/config/duration.ts';
import { isSigilError } from '../../../src/errors.ts';

const base = `
mode: development
listen: 127.0.0.1:0
tls: { certFile: /etc/hostname, keyFile: /etc/hostname, clientCaFile: /etc/hostname }
auth: { roles: { admin: ["cn:admin"], signer: [] } }
store: { sqlite: { path: db/sigil.db } }
backends:
  hsm: { type: pkcs11, module: /etc/hostname, token: sigil, pinFile: /etc/hostname }
defaultBackend: hsm
`;

const problems = (text: string): string[] => {
  try {
    parseConfig(text, '/srv/sigil/config.yaml');
  } catch (err) {
    assert.ok(err instanceof ConfigProblems);
    return err.problems;
  }
  assert.fail('the config was accepted');
};

test('durations parse in ms, s, m, h and d; anything else is CONFIG_INVALID', () => {
  assert.equal(parseDuration('90s'), 90_000);
  assert.equal(parseDuration('15m'), 900_000);
  assert.equal(parseDuration('24h'), 86_400_000);
  assert.equal(parseDuration('7d'), 604_800_000);
  assert.equal(parseDuration('250ms'), 250);
  for (const bad of ['', '15', 'm', '1.5h', '-1m', '15 m', '1w', '1h30m']) {
    assert.throws(() => parseDuration(bad), (e: unknown) => isSigilError(e, 'CONFIG_INVALID'), bad);
  }
  assert.equal(formatDuration(86_400_000), '1d');
  assert.equal(formatDuration(90_000), '90s');
  assert.equal(formatDuration(1500), '1500ms');
});

test('identity defaults and builder rules parse', () => {
  const c = parseConfig(
    `${base}
identity: { trustDomain: sigil.example }
authorization:
  builders:
    - keys: ["release/*"]
      identities:
        - san: "spiffe://sigil.example/builder/tpm/*"
          policy: ci-linux
          claims: { repository: "acme/*", ref: refs/heads/main }
`,
    '/srv/sigil/config.yaml',
  );
  assert.deepEqual(c.identity, { trustDomain: 'sigil.example', caKey: 'sigil/identity-ca', algorithm: 'ECDSA_P256_SHA256', lifetime: 900_000, maxLifetime: 86_400_000 });
  assert.equal(c.authorization.builders[0]!.identities[0]!.claims!.repository, 'acme/*');
  assert.deepEqual(parseConfig(base, '/srv/sigil/config.yaml').authorization, { builders: [] });
});

test('identity problems are all reported at once', () => {
  const p = problems(`${base}
identity: { trustDomain: "Sigil Example", caKey: "Bad Key", lifetime: 2h, maxLifetime: 25h, backend: nope, extra: 1 }
`);
  const text = p.join('\n');
  assert.match(text, /identity\.trustDomain: must be a spiffe trust domain/);
  assert.match(text, /identity\.caKey: invalid key name/);
  assert.match(text, /identity: Unrecognized key: "extra"|identity: unrecognized key/i);
  const q = problems(`${base}
identity: { trustDomain: sigil.example, lifetime: 26h, maxLifetime: 25h, backend: nope }
`).join('\n');
  assert.match(q, /identity\.maxLifetime: must be at most 24h/);
  assert.match(q, /identity\.lifetime: must not exceed identity\.maxLifetime/);
  assert.match(q, /identity\.backend: names no configured backend/);
  assert.match(problems(`${base}\nidentity: { trustDomain: x, lifetime: 15 minutes }\n`).join('\n'), /identity\.lifetime: invalid duration/);
});

test('builder rules need the identity section and well-formed globs', () => {
  const rule = `authorization: { builders: [ { keys: ["release/*"], identities: [ { san: "spiffe://x/*" } ] } ] }`;
  assert.match(problems(`${base}\n${rule}\n`).join('\n'), /authorization\.builders: builder rules need the identity section/);
  const badKeys = `identity: { trustDomain: x }\nauthorization: { builders: [ { keys: ["Release/*"], identities: [] } ] }`;
  const text = problems(`${base}\n${badKeys}\n`).join('\n');
  assert.match(text, /authorization\.builders\.0\.keys\.0: must be a key-name glob/);
  assert.match(text, /authorization\.builders\.0\.identities/);
});
