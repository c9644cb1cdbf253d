import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { findSoftHsmModule } from '../../src/dev/softhsm.ts';

function onPath(cmd: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, cmd)));
}

/**
 * A skip reason when a needed tool is missing (a command on PATH, or `softhsm` for the SoftHSM2
 * module), else null. With SIGIL_REQUIRE_HW=1 (CI) a missing tool throws instead: CI fails, never skips.
 */
export function missingTools(...names: string[]): string | null {
  const missing = names.filter((n) => (n === 'softhsm' ? findSoftHsmModule() === null : !onPath(n)));
  if (missing.length === 0) return null;
  const reason = `missing ${missing.join(', ')}`;
  if (process.env.SIGIL_REQUIRE_HW === '1') throw new Error(`SIGIL_REQUIRE_HW=1 but ${reason}`);
  return reason;
}
