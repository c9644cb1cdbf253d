/**
 * A child process for crash tests of the TPM authValue change: opens the TPM backend with the config in
 * argv[2] (JSON), changes the authValue of the key labelled argv[3], and SIGKILLs itself right after the
 * step argv[4] (a RekeyStep), so nothing in this process tidies up. Exits 3 if it got past that step alive.
 */
import { silentLogger } from '../../src/log.ts';
import { tpmConfigSchema } from '../../src/signers/tpm/config.ts';
import { open, type RekeyStep } from '../../src/signers/tpm/index.ts';

const [, , configJson, label, killAfter] = process.argv;
const backend = await open(tpmConfigSchema.parse(JSON.parse(configJson!)), { name: 'swtpm', log: silentLogger(), production: false });
await backend.setAuthValue(label!, (step: RekeyStep) => {
  if (step === killAfter) process.kill(process.pid, 'SIGKILL');
});
process.exit(3);
