import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { SqliteStore } from '../../../src/store/sqlite.ts';
import { SigilError } from '../../../src/errors.ts';
import { STORE_V4_TABLES } from '../../helpers/fixtures-text.ts';

const t0 = new Date('2026-01-02T03:04:05.678Z');
const version = { uri: 'pkcs11:token=t;id=%01', state: 'ENABLED' as const, generated: true, spki: Buffer.from([1, 2, 3]), createdAt: t0 };

test('a key and its first version are stored together and survive a reopen', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sub', 'sigil.db');
    const s = new SqliteStore(path);
    s.insertKey({ name: 'b/key', algorithm: 'ED25519', backend: 'hsm', createdAt: t0 }, version);
    s.insertKey({ name: 'a/key', algorithm: 'RSA_PSS_SHA256', backend: 'hsm', createdAt: t0 }, { ...version, uri: 'pkcs11:token=t;id=%02', generated: false });
    s.close();
    const r = new SqliteStore(path);
    const k = r.getKey('b/key')!;
    assert.deepEqual(k, {
      name: 'b/key',
      algorithm: 'ED25519',
      backend: 'hsm',
      primaryVersion: 1,
      createdAt: t0,
      versions: [{ name: 'b/key', version: 1, ...version, label: null, disabledAt: null, revokedAt: null, destroyAt: null, destroyedAt: null }],
      policy: { minSignVersion: 1, minVerifyVersion: 1, autoRotatePeriodMs: null, destroyNeedsApproval: false },
      nextRotationAt: null,
    });
    assert.deepEqual(r.listKeys('').map((x) => x.name), ['a/key', 'b/key']);
    assert.deepEqual(r.listKeys('a/').map((x) => x.versions[0]!.generated), [false]);
    assert.deepEqual(r.listKeys('%'), [], 'the prefix is literal, not a LIKE pattern');
    assert.equal(r.uriInUse('hsm', 'pkcs11:token=t;id=%02'), true);
    assert.equal(r.uriInUse('other', 'pkcs11:token=t;id=%02'), false);
    assert.equal(r.getKey('nope'), null);
    r.close();
    const raw = new DatabaseSync(path);
    assert.equal((raw.prepare('PRAGMA journal_mode').get() as { journal_mode: string }).journal_mode, 'wal');
    raw.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a taken name is refused with KEY_EXISTS and nothing changes', () => {
  const s = new SqliteStore(':memory:');
  s.insertKey({ name: 'k', algorithm: 'ED25519', backend: 'hsm', createdAt: t0 }, version);
  assert.throws(
    () => s.insertKey({ name: 'k', algorithm: 'RSA_PKCS1_SHA256', backend: 'other', createdAt: t0 }, { ...version, uri: 'x:y=z' }),
    (e: unknown) => e instanceof SigilError && e.code === 'KEY_EXISTS',
  );
  assert.equal(s.getKey('k')!.algorithm, 'ED25519');
  assert.equal(s.uriInUse('other', 'x:y=z'), false);
  s.close();
});

test('a store written by a newer sigild is refused', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    const raw = new DatabaseSync(path);
    raw.exec('PRAGMA user_version = 99');
    raw.close();
    assert.throws(() => new SqliteStore(path), /schema version 99 is newer/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('ca certificates are kept per key version, newest first, and survive a reopen', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    const s = new SqliteStore(path);
    assert.equal(s.latestCaCertificate('sigil/identity-ca@1'), null);
    const first = { keyVersion: 'sigil/identity-ca@1', der: Buffer.from([0x30, 1]), notAfter: new Date('2036-01-01T00:00:00Z'), createdAt: t0 };
    s.insertCaCertificate(first);
    s.insertCaCertificate({ ...first, keyVersion: 'other/ca@1', der: Buffer.from([0x30, 9]) });
    s.close();
    const r = new SqliteStore(path);
    assert.deepEqual(r.latestCaCertificate('sigil/identity-ca@1'), first);
    const second = { ...first, der: Buffer.from([0x30, 2]), notAfter: new Date('2046-01-01T00:00:00Z') };
    r.insertCaCertificate(second);
    assert.deepEqual(r.latestCaCertificate('sigil/identity-ca@1'), second);
    assert.equal(r.latestCaCertificate('sigil/identity-ca@2'), null);
    r.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('identity ca generations: every ca certificate of one key, oldest first; issued and revoked certificates keep their generation (1 for rows from before)', () => {
  const s = new SqliteStore(':memory:');
  try {
    const ca = (keyVersion: string, b: number) => ({ keyVersion, der: Buffer.from([0x30, b]), notAfter: new Date('2036-01-01T00:00:00Z'), createdAt: new Date(t0.getTime() + b) });
    s.insertCaCertificate(ca('sigil/identity-ca@1', 1));
    s.insertCaCertificate(ca('sigil/identity-ca2@1', 2));
    s.insertCaCertificate(ca('sigil/identity-ca@2', 3));
    s.insertCaCertificate(ca('sigil/identity-ca@1', 4));
    assert.deepEqual(s.listCaCertificates('sigil/identity-ca').map((c) => [c.keyVersion, c.der[1]]), [['sigil/identity-ca@1', 1], ['sigil/identity-ca@2', 3], ['sigil/identity-ca@1', 4]]);
    assert.deepEqual(s.listCaCertificates('sigil/identity'), []);
    s.insertIssuedCertificate({ serial: 'a1', ekHash: 'ee', san: 'spiffe://x/b', notAfter: t0, issuedAt: t0, caVersion: 2 });
    assert.equal(s.getIssuedCertificate('a1')!.caVersion, 2);
    assert.ok(s.insertRevokedIdentity({ serial: 'a1', reason: 'keyCompromise', revokedAt: t0, revokedBy: 'CN=a', notAfter: t0, ekHash: 'ee', caVersion: 2 }));
    assert.deepEqual(s.listRevokedIdentities().map((r) => r.caVersion), [2]);
  } finally {
    s.close();
  }
  // A row written by a sigild from before migration 8 (no ca_version): generation 1, the only one there was.
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    new SqliteStore(path).close();
    const db = new DatabaseSync(path);
    db.prepare('INSERT INTO issued_certificates (serial, ek_hash, san, not_after, issued_at) VALUES (?, ?, ?, ?, ?)').run('b2', 'ee', 'spiffe://x/b', 1, 1);
    db.prepare('INSERT INTO revoked_identities (serial, reason, revoked_at, revoked_by) VALUES (?, ?, ?, ?)').run('b2', 'unspecified', 1, 'CN=a');
    db.close();
    const r = new SqliteStore(path);
    assert.equal(r.getIssuedCertificate('b2')!.caVersion, 1);
    assert.equal(r.listRevokedIdentities()[0]!.caVersion, 1);
    r.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('root key transition statements: kept per key by version across a reopen; a second one for a version is refused; the table refuses updates and deletes', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    const s = new SqliteStore(path);
    const rec = (v: number, b: number) => ({ key: 'sigil/trust-root', version: v, statement: Buffer.from([b]), previousSignature: Buffer.from([b, 1]), signature: Buffer.from([b, 2]), createdAt: t0 });
    s.insertRootKeyTransition(rec(3, 30));
    s.insertRootKeyTransition(rec(2, 20));
    s.insertRootKeyTransition({ ...rec(2, 99), key: 'other/root' });
    assert.throws(() => s.insertRootKeyTransition(rec(2, 21)), (e: unknown) => e instanceof SigilError && e.code === 'KEY_EXISTS' && /sigil\/trust-root@2 already has a transition statement/.test(e.message));
    s.close();
    const again = new SqliteStore(path);
    assert.deepEqual(again.listRootKeyTransitions('sigil/trust-root'), [rec(2, 20), rec(3, 30)], 'by version, the first one kept');
    assert.deepEqual(again.listRootKeyTransitions('other/root').map((r) => r.statement[0]), [99]);
    again.close();
    const raw = new DatabaseSync(path);
    assert.throws(() => raw.exec("UPDATE root_key_transitions SET signature = x'00'"), /never change/);
    assert.throws(() => raw.exec('DELETE FROM root_key_transitions'), /never removed/);
    raw.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('enrollments: migration 10 leaves older rows without ek certificate and public area; new rows keep both across a reopen', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    // An enrollment recorded by a sigild from before migration 10 (schema version 4 holds the table as it was).
    const raw = new DatabaseSync(path);
    raw.exec(`${STORE_V4_TABLES}
      INSERT INTO enrollments VALUES ('${'aa'.repeat(32)}', '000b01', x'0102', 'ci', 3, 1, '99', ${t0.getTime()});
      PRAGMA user_version = 4;`);
    raw.close();
    const s = new SqliteStore(path);
    const old = s.getEnrollment('aa'.repeat(32))!;
    assert.deepEqual(old, { ekHash: 'aa'.repeat(32), akName: '000b01', akPublic: Buffer.from([1, 2]), policy: 'ci', resetCount: 3, restartCount: 1, clock: 99n, updatedAt: t0, ekCertificate: null, ekPublic: null });
    const rec = { ...old, ekHash: 'bb'.repeat(32), ekCertificate: Buffer.from([0x30, 0x03, 1, 2, 3]), ekPublic: Buffer.from([0, 1, 0, 0x0b]) };
    s.putEnrollment(rec);
    s.putEnrollment({ ...old, resetCount: 4 });
    s.close();
    const again = new SqliteStore(path);
    assert.deepEqual(again.getEnrollment('bb'.repeat(32)), rec);
    assert.deepEqual(again.getEnrollment('aa'.repeat(32)), { ...old, resetCount: 4 });
    again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('enrollments: listed by ek hash prefix in ek hash order; deleted one by one, durably; deleting an unknown one changes nothing', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-store-'));
  try {
    const path = join(dir, 'sigil.db');
    const s = new SqliteStore(path);
    const rec = (ekHash: string, resetCount: number) => ({
      ekHash,
      akName: '000b' + 'cd'.repeat(32),
      akPublic: Buffer.from([1, 2]),
      policy: 'ci',
      resetCount,
      restartCount: 1,
      clock: 12_345_678_901n,
      updatedAt: t0,
      ekCertificate: null,
      ekPublic: Buffer.from([0, 1]),
    });
    const a1 = rec('ab' + '01'.repeat(31), 1);
    const a2 = rec('ab' + '00'.repeat(31), 2);
    const b = rec('b' + '0'.repeat(63), 3);
    for (const r of [a1, b, a2]) s.putEnrollment(r);
    assert.deepEqual(s.listEnrollments(''), [a2, a1, b]);
    assert.deepEqual(s.listEnrollments('ab'), [a2, a1]);
    assert.deepEqual(s.listEnrollments('ab01'), [a1]);
    assert.deepEqual(s.listEnrollments(b.ekHash), [b]);
    assert.deepEqual(s.listEnrollments('c'), []);
    // A prefix is matched as text, never as a LIKE pattern.
    assert.deepEqual(s.listEnrollments('a%'), []);
    assert.deepEqual(s.listEnrollments('_b'), []);
    assert.equal(s.deleteEnrollment('ff'.repeat(32)), false);
    assert.equal(s.deleteEnrollment(a1.ekHash), true);
    assert.equal(s.deleteEnrollment(a1.ekHash), false);
    assert.equal(s.getEnrollment(a1.ekHash), null);
    // A renewal's write: only onto the record it was judged against (same EK, same AK, written at the same time).
    const later = new Date(t0.getTime() + 1000);
    assert.equal(s.updateEnrollment({ ...a1, resetCount: 9, updatedAt: later }, t0), false, 'a forgotten record is not brought back');
    assert.equal(s.getEnrollment(a1.ekHash), null);
    assert.equal(s.updateEnrollment({ ...b, akName: '000b' + 'ef'.repeat(32), resetCount: 9, updatedAt: later }, t0), false, 'nor is another ak written over it');
    assert.equal(s.updateEnrollment({ ...b, resetCount: 9, updatedAt: later }, new Date(t0.getTime() - 1)), false, 'nor a record written since (a new enrollment)');
    assert.equal(s.updateEnrollment({ ...b, resetCount: 4, updatedAt: later }, t0), true);
    assert.equal(s.getEnrollment(b.ekHash)!.resetCount, 4);
    s.putEnrollment(b);
    s.close();
    const again = new SqliteStore(path);
    assert.deepEqual(again.listEnrollments(''), [a2, b], 'the deletion survives a reopen, and only that record went');
    again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
