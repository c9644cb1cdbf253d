// Every RPC the daemon serves, called by every role, checked against the table in docs/security.md.
// @peculiar/x509 (through the identity CA) uses tsyringe, which needs the reflect polyfill loaded first.
import 'reflect-metadata';
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client, credentials, Metadata, status as Status, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { GetPublicKeyRequest, SignRequest, SignStreamRequest, Algorithm } from '../../src/gen/sigil/v1/signer.ts';
import { rpc } from '../../src/cli/client.ts';
import { missingTools } from '../helpers/hw.ts';
import { startTestDaemon, type TestDaemon } from '../helpers/daemon.ts';

const skip = missingTools('softhsm', 'softhsm2-util');
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PROTO_DIR = join(ROOT, 'proto');

/** The callers of the table's columns, in its order. */
const CALLERS = ['admin', 'approver', 'signer', 'builder', 'auditor', 'no role', 'no certificate'] as const;
type Caller = (typeof CALLERS)[number];

interface Method {
  path: string;
  requestStream: boolean;
  responseStream: boolean;
}

/** Every RPC of every sigil.v1 proto, plus the standard health and reflection services sigild serves. */
function servedMethods(): Method[] {
  const files = readdirSync(join(PROTO_DIR, 'sigil/v1')).filter((f) => f.endsWith('.proto')).map((f) => `sigil/v1/${f}`);
  const pkg = loadSync(files, { includeDirs: [PROTO_DIR] });
  const out: Method[] = [];
  for (const def of Object.values(pkg)) {
    if (!def || typeof def !== 'object' || 'format' in def) continue; // messages and enums carry `format`
    for (const m of Object.values(def as Record<string, { path: string; requestStream: boolean; responseStream: boolean }>)) {
      out.push({ path: m.path, requestStream: m.requestStream, responseStream: m.responseStream });
    }
  }
  out.push(
    { path: '/grpc.health.v1.Health/Check', requestStream: false, responseStream: false },
    { path: '/grpc.health.v1.Health/Watch', requestStream: false, responseStream: true },
    { path: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', requestStream: true, responseStream: true },
    { path: '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', requestStream: true, responseStream: true },
  );
  return out;
}

/** The table of docs/security.md: `| service/Method | yes | no | ... |` rows, one column per caller. */
function documentedTable(): Map<string, Record<Caller, boolean>> {
  const text = readFileSync(join(ROOT, 'docs/security.md'), 'utf8');
  const rows = new Map<string, Record<Caller, boolean>>();
  for (const line of text.split('\n')) {
    const m = /^\|\s*`([a-zA-Z0-9_.]+\/[A-Za-z0-9]+)`\s*\|(.*)\|\s*$/.exec(line);
    if (!m) continue;
    const cells = m[2]!.split('|').map((c) => c.trim());
    assert.equal(cells.length, CALLERS.length, `docs/security.md row ${m[1]} has ${cells.length} cells, expected ${CALLERS.length}`);
    const row = {} as Record<Caller, boolean>;
    CALLERS.forEach((c, i) => {
      const cell = cells[i]!;
      assert.ok(cell === 'yes' || cell === 'no', `docs/security.md row ${m[1]}: cell ${JSON.stringify(cell)} is neither yes nor no`);
      row[c] = cell === 'yes';
    });
    assert.ok(!rows.has(m[1]!), `docs/security.md lists ${m[1]} twice`);
    rows.set(m[1]!, row);
  }
  return rows;
}

/** Request bytes for a method: a well-formed sign over a key the builder rule grants, empty (all defaults) otherwise. */
function requestFor(path: string): Buffer {
  const sign = { key: 'authz/key', digest: randomBytes(32), message: undefined };
  if (path === '/sigil.v1.Signer/Sign') return Buffer.from(SignRequest.encode(sign).finish());
  if (path === '/sigil.v1.Signer/SignStream') return Buffer.from(SignStreamRequest.encode({ id: 1, request: sign }).finish());
  if (path === '/sigil.v1.Signer/GetPublicKey') return Buffer.from(GetPublicKeyRequest.encode({ key: 'authz/key' }).finish());
  return Buffer.alloc(0);
}

const raw = (b: Buffer): Buffer => b;

/** Calls one method and returns the status it ended with (OK when a streaming call answered at all). */
function call(client: Client, m: Method): Promise<number> {
  const req = requestFor(m.path);
  return new Promise((resolve) => {
    const md = new Metadata();
    const deadline = Date.now() + 10_000;
    if (!m.requestStream && !m.responseStream) {
      client.makeUnaryRequest(m.path, raw, raw, req, md, { deadline }, (err: ServiceError | null) => resolve(err ? err.code : Status.OK));
      return;
    }
    const stream = m.requestStream
      ? client.makeBidiStreamRequest(m.path, raw, raw, md, { deadline })
      : client.makeServerStreamRequest(m.path, raw, raw, req, md, { deadline });
    let settled = false;
    const settle = (code: number): void => {
      if (settled) return;
      settled = true;
      resolve(code);
      // A watch never ends by itself: one answer is enough to know the call was let in.
      stream.cancel();
    };
    stream.on('data', () => settle(Status.OK));
    stream.on('error', (err: ServiceError) => settle(err.code));
    stream.on('end', () => settle(Status.OK));
    stream.on('status', (s: { code: number }) => settle(s.code));
    if (m.requestStream) {
      const w = stream as unknown as { write(b: Buffer): void; end(): void };
      // Reflection needs a question to answer; the sign stream gets one sign.
      w.write(m.path.includes('Reflection') ? Buffer.from([0x3a, 0x00]) /* list_services: "" */ : req);
      w.end();
    }
  });
}

describe('authorization: every RPC with every role, against docs/security.md', { skip: skip ?? false }, () => {
  let d: TestDaemon;
  const clients = new Map<Caller, Client>();

  before(async () => {
    d = await startTestDaemon({
      extraConfig: {
        identity: { trustDomain: 'sigil.test' },
        authorization: { builders: [{ keys: ['authz/*'], identities: [{ san: 'spiffe://sigil.test/builder/tpm/*' }] }] },
        // Enrollment is served only when attestation is configured; an allowlist policy needs no EK CA.
        attestation: { policies: { ci: { ekHashes: ['ab'.repeat(32)], pcrs: { bank: 'sha256', select: [0] }, golden: [{ 0: '00'.repeat(32) }] } } },
      },
    });
    await rpc.createKey(d.client('admin'), { name: 'authz/key', algorithm: Algorithm.ECDSA_P256_SHA256, backend: '' });
    // A builder certificate from the daemon's own identity CA.
    const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const issued = await d.daemon.identity!.issue({
      spki: publicKey.export({ format: 'der', type: 'spki' }),
      ekHash: randomBytes(32).toString('hex'),
      akName: '000b' + randomBytes(32).toString('hex'),
      pcrSelection: 'sha256:0',
      pcrDigest: randomBytes(32).toString('hex'),
      policy: 'ci',
      claims: {},
    });
    const builderCert = join(d.dir, 'authz-builder.pem');
    const builderKey = join(d.dir, 'authz-builder-key.pem');
    writeFileSync(builderCert, issued.certificatePem);
    writeFileSync(builderKey, privateKey.export({ format: 'pem', type: 'pkcs8' }), { mode: 0o600 });
    const ca = readFileSync(d.ca);
    const files: Record<Exclude<Caller, 'no certificate'>, { cert: string; key: string }> = {
      admin: d.ids.admin,
      approver: d.ids.approver,
      signer: d.ids.signer,
      builder: { cert: builderCert, key: builderKey },
      auditor: d.ids.auditor,
      'no role': d.ids.nobody,
    };
    for (const c of CALLERS) {
      const creds = c === 'no certificate' ? credentials.createSsl(ca) : credentials.createSsl(ca, readFileSync(files[c].key), readFileSync(files[c].cert));
      clients.set(c, new Client(d.address, creds));
    }
  });
  after(async () => {
    for (const c of clients.values()) c.close();
    await d?.stop();
  });

  test('docs/security.md lists exactly the RPCs the daemon serves', () => {
    const served = servedMethods().map((m) => m.path.slice(1)).sort();
    const documented = [...documentedTable().keys()].sort();
    assert.deepEqual(documented, served, 'every served RPC needs a row in docs/security.md, and every row a served RPC');
  });

  test('each caller is let in exactly where the table says yes', async () => {
    const table = documentedTable();
    const wrong: string[] = [];
    for (const m of servedMethods()) {
      const row = table.get(m.path.slice(1));
      if (!row) continue; // reported by the test above
      for (const caller of CALLERS) {
        const code = await call(clients.get(caller)!, m);
        const refused = code === Status.PERMISSION_DENIED || code === Status.UNAUTHENTICATED;
        // Refusals are specific: a caller without a certificate is UNAUTHENTICATED, one without the role PERMISSION_DENIED.
        const want = caller === 'no certificate' ? Status.UNAUTHENTICATED : Status.PERMISSION_DENIED;
        if (row[caller] && refused) wrong.push(`${m.path} ${caller}: refused with ${Status[code]}, the table says yes`);
        if (!row[caller] && code !== want) wrong.push(`${m.path} ${caller}: got ${Status[code]}, the table says no (${Status[want]})`);
      }
    }
    assert.deepEqual(wrong, []);
  });
});
