import { z } from 'zod';
import { canonicalEndpoint, REGION } from './key-uri.ts';

// The alias prefix is joined with a key label to make an alias name, so it follows AWS's alias grammar.
const ALIAS_PREFIX = /^alias\/[A-Za-z0-9/_-]*$/;

/**
 * Config of one AWS KMS backend. Credentials come from `credentialsFile` when given (a JSON object
 * `{"accessKeyId": "...", "secretAccessKey": "...", "sessionToken": "..."}`, sessionToken optional, read
 * once when the backend opens and never logged), else from the AWS SDK's standard chain (environment,
 * shared config files, SSO, container and instance roles).
 */
export const awsKmsConfigSchema = z.strictObject({
  type: z.literal('awskms'),
  /** The region every key of this backend lives in, e.g. `eu-west-1`. */
  region: z.string().regex(REGION, 'must be an aws region name such as eu-west-1'),
  /** An endpoint origin instead of the region's default (VPC endpoint, FIPS endpoint, a test fake). */
  endpoint: z
    .string()
    .transform((s, ctx) => {
      const e = canonicalEndpoint(s);
      if (e === null) {
        ctx.addIssue({ code: 'custom', message: 'must be an http or https origin without path, query or credentials' });
        return z.NEVER;
      }
      return e;
    })
    .optional(),
  /** A JSON file with static credentials (see above); mode 0600 expected. */
  credentialsFile: z.string().min(1).optional(),
  /** Deadline of every AWS call in milliseconds (connection, request and response together). */
  timeoutMs: z.number().int().min(100).max(120000).default(5000),
  /** Prefix of the alias each sigil key version gets: `<aliasPrefix><label>`. */
  aliasPrefix: z
    .string()
    .max(200)
    .regex(ALIAS_PREFIX, 'must start with alias/ and hold only letters, digits, /, _ and -')
    .refine((s) => !s.startsWith('alias/aws/'), 'alias/aws/ is reserved for aws managed keys')
    .default('alias/sigil/'),
  /** Waiting period of ScheduleKeyDeletion when sigil destroys a key version (AWS allows 7 to 30 days). */
  pendingWindowDays: z.number().int().min(7).max(30).default(30),
  /**
   * When a label has no alias, `findKeyByLabel` looks for a key an interrupted create left tagged but
   * unaliased: at most this many keys of the account and region are listed (a warning says when it cut the search).
   */
  orphanSearchLimit: z.number().int().min(1).max(100_000).default(1000),
});

/** A parsed AWS KMS backend config. */
export type AwsKmsConfig = z.infer<typeof awsKmsConfigSchema>;
