import { after } from 'node:test';
import { silentLogger } from '../../src/log.ts';
import { open } from '../../src/signers/gcpkms/index.ts';
import { startGcpKmsFake, type GcpKmsFake } from '../fakes/gcp-kms.ts';
import { runConformance } from './suite.ts';

process.env.METADATA_SERVER_DETECTION = 'none';

let fake: GcpKmsFake | null = null;
after(() => fake?.stop());

runConformance('gcpkms (fake)', async () => {
  fake = await startGcpKmsFake();
  const backend = await open(
    { type: 'gcpkms', project: 'sigil-test', location: 'global', keyRing: 'conformance', apiEndpoint: '127.0.0.1', port: fake.port, insecure: true, protectionLevel: 'SOFTWARE', timeoutMs: 5000 },
    { name: 'gcp', log: silentLogger(), production: false },
  );
  return {
    backend,
    cleanup: async () => {},
    unknownUri: 'gcpkms:projects/sigil-test/locations/global/keyRings/conformance/cryptoKeys/no-such-key/cryptoKeyVersions/1',
  };
});
