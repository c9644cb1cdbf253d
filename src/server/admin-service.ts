import type { AdminServer } from '../gen/sigil/v1/admin.ts';
import type { Logger } from '../log.ts';
import type { KeyService } from '../keys/key-service.ts';
import { algorithmFromPb, keyToPb } from './convert.ts';
import { unary, type RpcContext } from './rpc.ts';
import type { Role } from './auth.ts';

const ADMINS: readonly Role[] = ['admin'];

/** The `sigil.v1.Admin` service: key creation, import and inspection. Every change lands in the audit channel. */
export function adminService(ctx: RpcContext, keys: KeyService, audit: Logger): AdminServer {
  return {
    createKey: unary(ctx, 'CreateKey', ADMINS, async (req, who) => {
      const key = await keys.createKey(req.name, algorithmFromPb(req.algorithm), req.backend || undefined);
      audit.info({ who: who.subject, key: `${key.name}@1`, algorithm: key.algorithm, backend: key.backend, uri: key.versions[0]!.uri }, 'key created');
      return { key: keyToPb(key) };
    }),
    importKey: unary(ctx, 'ImportKey', ADMINS, async (req, who) => {
      const key = await keys.importKey(req.name, req.uri, algorithmFromPb(req.algorithm), req.backend || undefined);
      audit.info({ who: who.subject, key: `${key.name}@1`, algorithm: key.algorithm, backend: key.backend, uri: key.versions[0]!.uri }, 'key imported');
      return { key: keyToPb(key) };
    }),
    getKey: unary(ctx, 'GetKey', ADMINS, (req) => ({ key: keyToPb(keys.getKey(req.name)) })),
    listKeys: unary(ctx, 'ListKeys', ADMINS, (req) => ({ keys: keys.listKeys(req.prefix).map(keyToPb) })),
  };
}
