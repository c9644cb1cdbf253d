import { silentLogger } from '../../src/log.ts';
import { open } from '../../src/signers/pkcs11/index.ts';
import { missingTools } from '../helpers/hw.ts';
import { tempToken } from '../helpers/softhsm.ts';
import { runConformance } from './suite.ts';

const skip = missingTools('softhsm2-util', 'softhsm');

if (skip === null) {
  runConformance('pkcs11 (SoftHSM)', async () => {
    const token = await tempToken('sigil-conformance');
    try {
      const backend = await open(token.config, { name: 'softhsm', log: silentLogger(), production: false });
      return { backend, cleanup: token.cleanup, unknownUri: `pkcs11:token=${token.label};object=no-such-key` };
    } catch (err) {
      await token.cleanup();
      throw err;
    }
  });
  // The same backend signing ECDSA on its signing thread instead of the event loop.
  runConformance('pkcs11 (SoftHSM), signThread on', async () => {
    const token = await tempToken('sigil-conformance');
    try {
      const backend = await open({ ...token.config, signThread: true }, { name: 'softhsm', log: silentLogger(), production: false });
      return { backend, cleanup: token.cleanup, unknownUri: `pkcs11:token=${token.label};object=no-such-key` };
    } catch (err) {
      await token.cleanup();
      throw err;
    }
  });
} else {
  const { test } = await import('node:test');
  test('pkcs11 (SoftHSM) backend conformance', { skip }, () => {});
}
