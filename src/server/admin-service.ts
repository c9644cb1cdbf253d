import type { AdminServer } from '../gen/sigil/v1/admin.ts';
import type { KeyService } from '../keys/key-service.ts';
import type { Logger } from '../log.ts';
import { audited } from '../audit/audited.ts';
import { algorithmFromPb, keyToPb } from './convert.ts';
import { unary, type RpcContext } from './rpc.ts';
import type { Role } from './auth.ts';

const ADMINS: readonly Role[] = ['admin'];

/**
 * The `sigil.v1.Admin` service: key creation, import and inspection. Every change is an audit log entry
 * (durable before the answer) and a line in the audit log channel.
 */
export function adminService(ctx: RpcContext, keys: KeyService, audit: Logger): AdminServer {
  return {
    createKey: unary(ctx, 'CreateKey', ADMINS, async (req, who) => {
      const key = await audited(
        ctx.audit,
        { who: who.subject, act: 'key.create', key: req.name.slice(0, 200) },
        () => keys.createKey(req.name, algorithmFromPb(req.algorithm), req.backend || undefined),
        (k) => ({ key: `${k.name}@1`, detail: { algorithm: k.algorithm, backend: k.backend } }),
      );
      audit.info({ who: who.subject, key: `${key.name}@1`, algorithm: key.algorithm, backend: key.backend, uri: key.versions[0]!.uri }, 'key created');
      return { key: keyToPb(key) };
    }),
    importKey: unary(ctx, 'ImportKey', ADMINS, async (req, who) => {
      const uri = req.uri.slice(0, 512);
      const key = await audited(
        ctx.audit,
        { who: who.subject, act: 'key.import', key: req.name.slice(0, 200), detail: { uri } },
        () => keys.importKey(req.name, req.uri, algorithmFromPb(req.algorithm), req.backend || undefined),
        (k) => ({ key: `${k.name}@1`, detail: { uri: k.versions[0]!.uri, algorithm: k.algorithm, backend: k.backend } }),
      );
      audit.info({ who: who.subject, key: `${key.name}@1`, algorithm: key.algorithm, backend: key.backend, uri: key.versions[0]!.uri }, 'key imported');
      return { key: keyToPb(key) };
    }),
    getKey: unary(ctx, 'GetKey', ADMINS, (req) => ({ key: keyToPb(keys.getKey(req.name)) })),
    listKeys: unary(ctx, 'ListKeys', ADMINS, (req) => ({ keys: keys.listKeys(req.prefix).map(keyToPb) })),
  };
}
