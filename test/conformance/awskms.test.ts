import { randomUUID } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../../src/log.ts';
import { awsKmsConfigSchema } from '../../src/signers/awskms/config.ts';
import { open } from '../../src/signers/awskms/index.ts';
import { formatAwsKmsUri } from '../../src/signers/awskms/key-uri.ts';
import { startAwsKmsFake } from '../fakes/aws-kms.ts';
import { runConformance } from './suite.ts';

process.env.AWS_EC2_METADATA_DISABLED = 'true';

runConformance('awskms (fake)', async () => {
  const creds = { accessKeyId: 'AKIASIGILCONFORMANCE', secretAccessKey: `conformance-${randomUUID()}` };
  const fake = await startAwsKmsFake({ ...creds, region: 'eu-west-1' });
  const dir = await mkdtemp(join(tmpdir(), 'sigil-awskms-'));
  const credentialsFile = join(dir, 'credentials.json');
  await writeFile(credentialsFile, JSON.stringify(creds), { mode: 0o600 });
  const config = awsKmsConfigSchema.parse({ type: 'awskms', region: 'eu-west-1', endpoint: fake.endpoint, credentialsFile, timeoutMs: 5000 });
  const backend = await open(config, { name: 'awskms', log: silentLogger(), production: true });
  return {
    backend,
    unknownUri: formatAwsKmsUri({ keyId: randomUUID(), region: 'eu-west-1', endpoint: fake.endpoint }),
    cleanup: async () => {
      await fake.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
});
