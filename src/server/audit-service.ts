import { createPublicKey } from 'node:crypto';
import type { AuditServer } from '../gen/sigil/v1/audit.ts';
import type { AuditLog, StoredCheckpoint } from '../audit/audit-log.ts';
import { verifierKeyText } from '../audit/note.ts';
import { SigilError } from '../errors.ts';
import { unary, type RpcContext } from './rpc.ts';
import type { Role } from './auth.ts';

/** Who may read the audit log and its proofs. */
export const AUDIT_READERS: readonly Role[] = ['auditor', 'admin'];

/** The `sigil.v1.Audit` service: entries, signed checkpoints, inclusion and consistency proofs, the audit key's versions. */
export function auditService(ctx: RpcContext, log: AuditLog): AuditServer {
  const checkpointPb = (c: StoredCheckpoint) => ({ note: c.note, treeSize: c.size, rootHash: c.root, keyVersion: c.keyVersion, createTime: c.createdAt });
  return {
    getCheckpoint: unary(ctx, 'GetCheckpoint', AUDIT_READERS, async (req) => {
      if (req.treeSize === 0) return checkpointPb(await log.latestCheckpoint());
      const c = log.checkpointAt(req.treeSize);
      if (!c) throw new SigilError('FAILED_PRECONDITION', `no checkpoint was signed at tree size ${req.treeSize}`);
      return checkpointPb(c);
    }),
    listEntries: unary(ctx, 'ListEntries', AUDIT_READERS, (req) => ({
      entries: log.entries(req.from, req.count).map((e) => ({ index: e.index, data: e.data, leafHash: e.leaf })),
      treeSize: log.size,
      archivedEnd: log.archivedEnd,
      archivedFrontier: [...log.archivedFrontier()],
      archivedSegments:
        req.count === 0 ? log.archives().map((a) => ({ start: a.start, end: a.end, file: a.file, sha256: a.sha256, checkpointSize: a.checkpoint, entryIndex: a.entry })) : [],
    })),
    getInclusionProof: unary(ctx, 'GetInclusionProof', AUDIT_READERS, (req) => {
      const size = req.treeSize || log.size;
      const hashes = log.inclusionProof(req.index, size);
      // An archived entry's bytes are in its segment; its leaf hash, and so its proof, stay in the log.
      const archived = log.archiveOf(req.index);
      if (archived) return { index: req.index, treeSize: size, hashes, leafHash: log.leaf(req.index), data: Buffer.alloc(0), archivedSegment: archived.file };
      const e = log.entries(req.index, 1)[0]!;
      return { index: req.index, treeSize: size, hashes, leafHash: e.leaf, data: e.data, archivedSegment: '' };
    }),
    getConsistencyProof: unary(ctx, 'GetConsistencyProof', AUDIT_READERS, (req) => {
      const size = req.newSize || log.size;
      return { oldSize: req.oldSize, newSize: size, hashes: log.consistencyProof(req.oldSize, size) };
    }),
    getAuditKey: unary(ctx, 'GetAuditKey', AUDIT_READERS, () => {
      const k = log.publicKey();
      const versions = log.keyVersions().map((v) => ({
        keyVersion: v.keyVersion,
        spkiDer: v.spki,
        pem: pemOf(v.spki),
        noteKeyId: v.keyId,
        verifierKey: verifierKeyText(v.keyName, v.spki),
        createTime: v.createdAt ?? undefined,
        supersedeTime: v.supersededAt ?? undefined,
        current: v.current,
      }));
      return { keyVersion: k.keyVersion, spkiDer: k.spki, pem: pemOf(k.spki), noteKeyName: k.keyName, noteKeyId: k.keyId, verifierKey: verifierKeyText(k.keyName, k.spki), versions };
    }),
  };
}

function pemOf(spki: Buffer): string {
  return createPublicKey({ key: spki, format: 'der', type: 'spki' }).export({ format: 'pem', type: 'spki' }).toString();
}
