import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomUUID, verify } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { inspect } from 'node:util';
import { CreateAliasCommand, CreateKeyCommand, KMSClient, TagResourceCommand } from '@aws-sdk/client-kms';
import { pino } from 'pino';
import { isSigilError } from '../../src/errors.ts';
import { silentLogger } from '../../src/log.ts';
import { awsKmsConfigSchema, type AwsKmsConfig } from '../../src/signers/awskms/config.ts';
import { ALIAS_TAG, LABEL_TAG, open, type AwsKmsBackend } from '../../src/signers/awskms/index.ts';
import { parseAwsKmsUri } from '../../src/signers/awskms/key-uri.ts';
import { BackendRegistry } from '../../src/signers/registry.ts';
import { SqliteStore } from '../../src/store/sqlite.ts';
import { KeyService } from '../../src/keys/key-service.ts';
import { KeyLifecycle } from '../../src/keys/lifecycle.ts';
import { backendLabel } from '../../src/keys/names.ts';
import type { AuditEvent, AuditSink } from '../../src/audit/audit-sink.ts';
import { startAwsKmsFake, type AwsKmsFake, type FakeKey } from '../fakes/aws-kms.ts';
import { assertCode } from '../helpers/assert.ts';

// Crash recovery of createKey: a KMS key made and tagged but never aliased is found by its tag and adopted.

process.env.AWS_EC2_METADATA_DISABLED = 'true';
const REGION = 'eu-north-1';
const CREDS = { accessKeyId: 'AKIASIGILORPHANTEST0', secretAccessKey: `orphan-secret-${randomUUID()}` };
const WINDOW_DAYS = 11;

interface LogLine {
  level: number;
  msg: string;
  [k: string]: unknown;
}

/** A pino logger that keeps its JSON lines, so tests can check the warnings a search writes. */
function capturingLogger(): { log: pino.Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as LogLine) });
  return { log, lines };
}


const uniq = (what: string): string => `${what}-${randomUUID().slice(0, 8)}-v1`;

describe('awskms: keys an interrupted createKey left without an alias', () => {
  let fake: AwsKmsFake;
  let dir: string;
  let credentialsFile: string;
  let raw: KMSClient;
  let backend: AwsKmsBackend;
  let logged: LogLine[];
  const opened: AwsKmsBackend[] = [];

  const configWith = (extra: Record<string, unknown> = {}): AwsKmsConfig =>
    awsKmsConfigSchema.parse({ type: 'awskms', region: REGION, endpoint: fake.endpoint, credentialsFile, timeoutMs: 2000, pendingWindowDays: WINDOW_DAYS, ...extra });
  const openBackend = async (extra: Record<string, unknown> = {}): Promise<{ backend: AwsKmsBackend; lines: LogLine[] }> => {
    const { log, lines } = capturingLogger();
    const b = await open(configWith(extra), { name: 'awskms', log, production: true });
    opened.push(b);
    return { backend: b, lines };
  };
  const count = (op: string, from = 0): number => fake.requests.slice(from).filter((r) => r.op === op).length;
  const aliasOf = (label: string): string => `alias/sigil/${label}`;

  /** What a sigild killed between CreateKey and CreateAlias leaves: a tagged key, no alias. */
  const crashedCreate = async (label: string, extraTags: Array<{ TagKey: string; TagValue: string }> = []): Promise<FakeKey> => {
    const made = await raw.send(new CreateKeyCommand({ KeyUsage: 'SIGN_VERIFY', KeySpec: 'ECC_NIST_P256', Description: `sigil key version ${label}` }));
    const keyId = made.KeyMetadata!.KeyId!;
    await raw.send(new TagResourceCommand({ KeyId: keyId, Tags: [{ TagKey: LABEL_TAG, TagValue: label }, ...extraTags] }));
    return fake.keys.get(keyId)!;
  };
  /** Keys that are no one's orphans: untagged, or tagged with other labels. */
  const filler = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const made = await raw.send(new CreateKeyCommand({ KeyUsage: 'SIGN_VERIFY', KeySpec: 'ECC_NIST_P256' }));
      if (i % 2 === 0) await raw.send(new TagResourceCommand({ KeyId: made.KeyMetadata!.KeyId!, Tags: [{ TagKey: LABEL_TAG, TagValue: uniq('other') }] }));
    }
  };

  before(async () => {
    fake = await startAwsKmsFake({ ...CREDS, region: REGION });
    dir = await mkdtemp(join(tmpdir(), 'sigil-awskms-orphans-'));
    credentialsFile = join(dir, 'credentials.json');
    await writeFile(credentialsFile, JSON.stringify(CREDS), { mode: 0o600 });
    raw = new KMSClient({ region: REGION, endpoint: fake.endpoint, credentials: CREDS, maxAttempts: 1 });
    ({ backend, lines: logged } = await openBackend());
    await filler(6);
  });

  after(async () => {
    raw?.destroy();
    for (const b of opened) await b.close();
    await fake?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('adopts a tagged key without alias: creates its alias, returns its uri, and the key signs', async () => {
    const label = uniq('adopt');
    const orphan = await crashedCreate(label);
    assert.equal(fake.aliases.has(aliasOf(label)), false);
    const mark = fake.requests.length;
    const uri = await backend.findKeyByLabel(label);
    assert.ok(uri !== null);
    assert.equal(parseAwsKmsUri(uri).keyId, orphan.arn);
    assert.equal(fake.aliases.get(aliasOf(label))?.targetKeyId, orphan.keyId, 'the interrupted create is completed');
    assert.equal(orphan.state, 'Enabled');
    assert.ok(count('ListKeys', mark) >= 1 && count('ListResourceTags', mark) >= 1, 'found by listing keys and reading their tags');
    assert.ok(logged.some((l) => l.msg.includes('adopted') && l.arn === orphan.arn && l.level === 40));

    const key = await backend.getKey(uri);
    const digest = createHash('sha256').update('adopted').digest();
    const sig = await (await backend.signer(uri, 'ECDSA_P256_SHA256')).sign(digest);
    assert.ok(verify('sha256', Buffer.from('adopted'), { key: createPublicKey({ key: key.spki, format: 'der', type: 'spki' }), dsaEncoding: 'der' }, sig));

    // From now on the alias answers: no second search.
    const again = fake.requests.length;
    assert.equal(await backend.findKeyByLabel(label), uri);
    assert.equal(count('ListKeys', again), 0);
  });

  it('several tagged keys (repeated crashes): the newest by CreationDate is adopted, the others scheduled for deletion', async () => {
    const label = uniq('twice');
    const newer = await crashedCreate(label);
    const older = await crashedCreate(label);
    const oldest = await crashedCreate(label);
    // Listed first but created last: the choice is by CreationDate, not by listing order.
    older.creationDate = newer.creationDate - 3600;
    oldest.creationDate = newer.creationDate - 7200;
    const uri = await backend.findKeyByLabel(label);
    assert.equal(uri === null ? null : parseAwsKmsUri(uri).keyId, newer.arn);
    assert.equal(newer.state, 'Enabled');
    assert.equal(fake.aliases.get(aliasOf(label))?.targetKeyId, newer.keyId);
    for (const k of [older, oldest]) {
      assert.equal(k.state, 'PendingDeletion');
      assert.equal(k.pendingWindowInDays, WINDOW_DAYS, 'the configured pending window');
      assert.ok(logged.some((l) => l.msg.includes('duplicate') && l.arn === k.arn && l.kept === newer.arn));
    }
  });

  it('returns null and touches nothing when no unaliased key carries the label', async () => {
    const label = uniq('absent');
    const other = uniq('neighbour');
    // Same label but pending deletion, made for another alias prefix, or aliased elsewhere: none is an orphan of this label.
    const pending = await crashedCreate(label);
    pending.state = 'PendingDeletion';
    const foreign = await crashedCreate(label, [{ TagKey: ALIAS_TAG, TagValue: `alias/other-sigil/${label}` }]);
    const aliased = await crashedCreate(label);
    await raw.send(new CreateAliasCommand({ AliasName: 'alias/ops/renamed-by-hand', TargetKeyId: aliased.keyId }));
    const neighbour = await crashedCreate(other);
    const aliasesBefore = fake.aliases.size;
    const mark = fake.requests.length;
    assert.equal(await backend.findKeyByLabel(label), null);
    assert.equal(fake.aliases.size, aliasesBefore, 'no alias created');
    assert.deepEqual([pending.state, foreign.state, aliased.state, neighbour.state], ['PendingDeletion', 'Enabled', 'Enabled', 'Enabled']);
    assert.equal(count('ScheduleKeyDeletion', mark), 0);
    assert.equal(count('CreateAlias', mark), 0);
    // A label the account has never seen.
    assert.equal(await backend.findKeyByLabel(uniq('never')), null);
  });

  it('pages through ListKeys (short pages) and reads each key\'s tags once per search period', async () => {
    const { backend: b } = await openBackend();
    await filler(8);
    const label = uniq('paged');
    const orphan = await crashedCreate(label);
    fake.setMaxPageSize(3);
    try {
      const mark = fake.requests.length;
      const uri = await b.findKeyByLabel(label);
      assert.equal(uri === null ? null : parseAwsKmsUri(uri).keyId, orphan.arn, 'found on the last page');
      const lists = fake.requests.slice(mark).filter((r) => r.op === 'ListKeys');
      assert.equal(lists.length, Math.ceil(fake.keys.size / 3));
      assert.equal(lists[0]!.input?.Marker, undefined);
      assert.deepEqual(lists.slice(1).map((r) => r.input?.Marker), lists.slice(1).map((_, i) => String(3 * (i + 1))), 'each page asks from the marker of the one before');
      const tagPages = [...fake.keys.values()].reduce((n, k) => n + Math.max(1, Math.ceil(k.tags.size / 3)), 0);
      assert.equal(count('ListResourceTags', mark), tagPages, 'every listed key read once (its tags paged too)');

      // Another search soon after (the recovery pass asks for several labels) lists again but reads no tag twice.
      const mark2 = fake.requests.length;
      assert.equal(await b.findKeyByLabel(uniq('paged-missing')), null);
      assert.equal(count('ListKeys', mark2), lists.length);
      assert.equal(count('ListResourceTags', mark2), 0);
    } finally {
      fake.setMaxPageSize(null);
    }
  });

  it('stops after orphanSearchLimit keys with a warning, so a key beyond the limit is not found', async () => {
    const limit = 5;
    const { backend: b, lines } = await openBackend({ orphanSearchLimit: limit });
    const label = uniq('beyond');
    const orphan = await crashedCreate(label);
    assert.ok(fake.keys.size > limit + 2);
    fake.setMaxPageSize(2);
    try {
      const mark = fake.requests.length;
      assert.equal(await b.findKeyByLabel(label), null);
      assert.equal(count('ListKeys', mark), Math.ceil(limit / 2));
      assert.equal(count('ListResourceTags', mark), limit, 'no key past the limit is read');
      assert.ok(lines.some((l) => l.level === 40 && l.msg.includes('orphanSearchLimit') && l.orphanSearchLimit === limit && l.label === label));
    } finally {
      fake.setMaxPageSize(null);
    }
    assert.equal(fake.aliases.has(aliasOf(label)), false);
    assert.equal(orphan.state, 'Enabled');
    assert.throws(() => configWith({ orphanSearchLimit: 0 }));
    assert.throws(() => configWith({ orphanSearchLimit: 1.5 }));
    assert.equal(configWith().orphanSearchLimit, 1000);
  });

  it('a transient fault during the search is BACKEND_UNAVAILABLE (never null), and a later call adopts', async () => {
    const { backend: b } = await openBackend();
    const label = uniq('flaky');
    const orphan = await crashedCreate(label);
    const faults: Array<[string, string]> = [
      ['ListKeys', 'ThrottlingException'],
      ['ListResourceTags', 'KMSInternalException'],
      ['ListAliases', 'DependencyTimeoutException'],
      ['CreateAlias', 'ServiceUnavailableException'],
    ];
    for (const [op, name] of faults) {
      fake.failNext(op, name);
      // DescribeKey of the alias first, then the search: the first DescribeKey must answer normally.
      await assertCode(b.findKeyByLabel(label), 'BACKEND_UNAVAILABLE', (m) => assert.ok(!m.includes(CREDS.secretAccessKey)));
      assert.ok(fake.requests.some((r) => r.op === op && r.error === name), `${op} failed`);
      assert.equal(fake.aliases.has(aliasOf(label)), false, `${op}: nothing half-done`);
      assert.equal(orphan.state, 'Enabled');
    }
    // The service gone altogether.
    await fake.stop();
    try {
      await assertCode(b.findKeyByLabel(label), 'BACKEND_UNAVAILABLE');
    } finally {
      await fake.restart();
    }
    assert.equal(fake.aliases.has(aliasOf(label)), false);
    // The SDK's keep-alive pool can still hold sockets the stopped fake closed (up to one per tag read in
    // flight): a call that picks one fails transiently, as the retry layer expects, and drops it.
    let uri: string | null | undefined;
    for (let attempt = 0; attempt < 6 && uri === undefined; attempt++) {
      uri = await b.findKeyByLabel(label).catch((e: unknown) => {
        assert.ok(isSigilError(e, 'BACKEND_UNAVAILABLE'), inspect(e));
        return undefined;
      });
    }
    assert.equal(uri == null ? uri : parseAwsKmsUri(uri).keyId, orphan.arn);
  });

  it('keys whose tags access is denied are skipped with a warning', async () => {
    const { backend: b, lines } = await openBackend();
    const label = uniq('denied');
    const orphan = await crashedCreate(label);
    // One denial per key: a fresh backend reads each listed key's tags once.
    fake.failNext('ListResourceTags', 'AccessDeniedException', fake.keys.size);
    assert.equal(await b.findKeyByLabel(label), null);
    assert.equal(fake.requests.filter((r) => r.op === 'ListResourceTags').at(-1)?.error, 'AccessDeniedException');
    assert.ok(lines.some((l) => l.level === 40 && l.msg.includes('access denied') && l.keys === fake.keys.size));
    assert.equal(orphan.state, 'Enabled');
    // Once the tags are readable, the same backend finds it (denials are not remembered).
    const uri = await b.findKeyByLabel(label);
    assert.equal(uri === null ? null : parseAwsKmsUri(uri).keyId, orphan.arn);
  });

  it('concurrent calls for one label share one search and create the alias once', async () => {
    const label = uniq('racing');
    const orphan = await crashedCreate(label);
    const mark = fake.requests.length;
    const uris = await Promise.all([backend.findKeyByLabel(label), backend.findKeyByLabel(label), backend.findKeyByLabel(label)]);
    assert.deepEqual(new Set(uris.map((u) => (u === null ? null : parseAwsKmsUri(u).keyId))), new Set([orphan.arn]));
    assert.equal(count('CreateAlias', mark), 1);
  });

  it('a createKey whose CreateAlias and cleanup both failed leaves a key that findKeyByLabel adopts; new keys carry sigil:alias', async () => {
    const { backend: b } = await openBackend();
    const label = uniq('half-made');
    const before = new Set(fake.keys.keys());
    fake.failNext('CreateAlias', 'KMSInternalException');
    fake.failNext('DescribeKey', 'KMSInternalException');
    await assertCode(b.createKey({ label, algorithm: 'ECDSA_P384_SHA384' }), 'BACKEND_UNAVAILABLE');
    const made = [...fake.keys.values()].filter((k) => !before.has(k.keyId));
    assert.equal(made.length, 1);
    const left = made[0]!;
    assert.equal(left.state, 'Enabled', 'its state was unknown, so it was not rolled back');
    assert.deepEqual(Object.fromEntries(left.tags), { [LABEL_TAG]: label, [ALIAS_TAG]: aliasOf(label) });
    const uri = await b.findKeyByLabel(label);
    assert.equal(uri === null ? null : parseAwsKmsUri(uri).keyId, left.arn);
    assert.equal((await b.getKey(uri!)).keyType, 'EC_P384');
  });

  it('lifecycle recover(): a PENDING version whose KMS key lost its alias has the key scheduled for deletion, not orphaned', async () => {
    const events: AuditEvent[] = [];
    const audit: AuditSink = {
      ready: () => {},
      record: async (e: AuditEvent) => {
        events.push(e);
      },
    };
    const log = silentLogger();
    const clock = { now: () => new Date() };
    const store = new SqliteStore(join(dir, 'sigil.db'));
    const backends = new BackendRegistry(
      { aws: configWith() },
      { log, production: true },
    );
    try {
      const keys = new KeyService({ store, backends, defaultBackend: 'aws', maxMessageBytes: 1 << 20, log, clock });
      const life = new KeyLifecycle({ store, backends, keys, audit, clock, log, minDestroyWindowMs: 86_400_000, defaultDestroyWindowMs: 7 * 86_400_000, approvalTtlMs: 86_400_000 });
      await keys.createKey('rel/orphan', 'ECDSA_P256_SHA256');
      // A rotation cut by a crash after CreateKey (tagged) and before CreateAlias.
      const pending = store.insertPendingVersion('rel/orphan', (v) => backendLabel('rel/orphan', v), clock.now());
      const orphan = await crashedCreate(pending.label!);
      const report = await life.recover();
      assert.deepEqual(report.dropped, [{ keyVersion: `rel/orphan@${pending.version}`, objectRemoved: true }]);
      assert.deepEqual(report.failed, []);
      assert.equal(orphan.state, 'PendingDeletion', 'the half-made key is found and destroyed');
      assert.equal(orphan.pendingWindowInDays, WINDOW_DAYS);
      assert.equal(fake.aliases.has(aliasOf(pending.label!)), false, 'destroyKey removed the alias adoption made');
      assert.deepEqual(await life.recover(), { dropped: [], destroyed: [], failed: [] });
    } finally {
      await backends.closeAll();
      store.close();
    }
  });
  it('lifecycle recover(): a disable that missed the backend is sent once at the next start, not at every start', async () => {
    const audit: AuditSink = { ready: () => {}, record: async () => {} };
    const log = silentLogger();
    const clock = { now: () => new Date() };
    const admin = { subject: 'CN=admin', fingerprint: 'ab'.repeat(32) };
    const store = new SqliteStore(join(dir, 'mirror.db'));
    // No retries and a long breaker: each failure is one request, so the counts below are exact.
    const backends = new BackendRegistry({ aws: { ...configWith(), resilience: { retries: 0, breakerFailures: 100 } } as AwsKmsConfig }, { log, production: true });
    try {
      const keys = new KeyService({ store, backends, defaultBackend: 'aws', maxMessageBytes: 1 << 20, log, clock });
      const life = new KeyLifecycle({ store, backends, keys, audit, clock, log, minDestroyWindowMs: 86_400_000, defaultDestroyWindowMs: 7 * 86_400_000, approvalTtlMs: 86_400_000 });
      await keys.createKey('rel/mirror', 'ECDSA_P256_SHA256');
      await life.rotate(admin, 'rel/mirror');
      await life.rotate(admin, 'rel/mirror');
      const kmsKey = (v: number): FakeKey => fake.resolve(parseAwsKmsUri(store.getKey('rel/mirror')!.versions.find((x) => x.version === v)!.uri).keyId)!;

      // v1 is disabled while AWS fails the DisableKey: sigil's state holds, the KMS key is still Enabled.
      fake.failNext('DisableKey', 'KMSInternalException', 1);
      await life.disable(admin, 'rel/mirror@1');
      assert.equal(kmsKey(1).state, 'Enabled');
      // v2 is disabled with AWS up: mirrored at once.
      await life.disable(admin, 'rel/mirror@2');
      assert.equal(kmsKey(2).state, 'Disabled');

      let from = fake.requests.length;
      assert.deepEqual(await life.recover(), { dropped: [], destroyed: [], failed: [] });
      assert.equal(count('DisableKey', from), 1, 'only the version whose disable was missed is sent again');
      assert.equal(kmsKey(1).state, 'Disabled');

      from = fake.requests.length;
      await life.recover();
      assert.equal(count('DisableKey', from), 0, 'a second start sends nothing');

      // Enabled and disabled again while AWS fails: the mark is gone, so the next start sends it once more.
      await life.enable(admin, 'rel/mirror@1');
      assert.equal(kmsKey(1).state, 'Enabled');
      fake.failNext('DisableKey', 'KMSInternalException', 1);
      await life.disable(admin, 'rel/mirror@1');
      from = fake.requests.length;
      await life.recover();
      assert.equal(count('DisableKey', from), 1);
      assert.equal(kmsKey(1).state, 'Disabled');
    } finally {
      await backends.closeAll();
      store.close();
    }
  });
});
