import { readSecretFile } from '../../config/secret-file.ts';
import { KMSClient } from '@aws-sdk/client-kms';
import { z } from 'zod';
import { SigilError } from '../../errors.ts';
import type { Logger } from '../../log.ts';
import type { AwsKmsConfig } from './config.ts';

/** Static AWS credentials as read from a backend's `credentialsFile`. */
export interface StaticCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

const credentialsSchema = z.strictObject({
  accessKeyId: z.string().regex(/^[A-Z0-9]{16,128}$/),
  secretAccessKey: z.string().min(1).max(512),
  sessionToken: z.string().min(1).max(8192).optional(),
});

/**
 * Reads a credentials file: a JSON object with `accessKeyId`, `secretAccessKey` and an optional
 * `sessionToken`. Errors name the file and never its content (JSON.parse messages quote the input, so
 * they are not kept as the cause either).
 */
export async function readCredentialsFile(path: string, log: Logger): Promise<StaticCredentials> {
  const text = await readSecretFile(path, 'aws credentials file', log);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new SigilError('CONFIG_INVALID', `aws credentials file ${path} is not valid json`);
  }
  const parsed = credentialsSchema.safeParse(json);
  if (!parsed.success) {
    const fields = [...new Set(parsed.error.issues.map((i) => String(i.path[0] ?? (i.code === 'unrecognized_keys' ? 'unknown key' : 'object'))))];
    throw new SigilError(
      'CONFIG_INVALID',
      `aws credentials file ${path} must be {"accessKeyId", "secretAccessKey"[, "sessionToken"]}: bad ${fields.join(', ')}`,
    );
  }
  return parsed.data;
}

/**
 * Builds the KMS client of a backend: the SDK's own retries off (`maxAttempts: 1`: sigil's retry layer
 * decides), connection and request timeouts from `timeoutMs`, keep-alive sockets that the handler drops
 * and replaces when the peer closes them.
 */
export function createKmsClient(config: AwsKmsConfig, credentials: StaticCredentials | null, log: Logger): KMSClient {
  const sdkLog = {
    debug: () => {},
    info: () => {},
    warn: (...args: unknown[]) => log.warn({ sdk: args.map(String).join(' ').slice(0, 500) }, 'aws sdk warning'),
    error: (...args: unknown[]) => log.error({ sdk: args.map(String).join(' ').slice(0, 500) }, 'aws sdk error'),
  };
  return new KMSClient({
    region: config.region,
    ...(config.endpoint !== undefined ? { endpoint: config.endpoint } : {}),
    ...(credentials !== null ? { credentials } : {}),
    maxAttempts: 1,
    requestHandler: {
      connectionTimeout: config.timeoutMs,
      requestTimeout: config.timeoutMs,
      throwOnRequestTimeout: true,
      logger: sdkLog,
    },
  });
}
