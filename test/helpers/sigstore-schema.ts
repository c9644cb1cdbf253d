import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { createFileRegistry, fromBinary, fromJson, type JsonValue } from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';

const ROOT = join(import.meta.dirname, '..', '..');

let cached: ((json: Buffer) => void) | null = null;

/**
 * A strict proto JSON parser of Sigstore's TrustedRoot, as sigstore-go's `protojson.Unmarshal` is: the
 * schema (test/fixtures/sigstore) compiled by buf, read with @bufbuild/protobuf's `fromJson`, which throws
 * on a field or enum name the schema lacks.
 */
export function strictTrustedRootParser(): (json: Buffer) => void {
  if (cached) return cached;
  const image = execFileSync(join(ROOT, 'node_modules', '.bin', 'buf'), ['build', join(ROOT, 'test', 'fixtures', 'sigstore'), '-o', '-#format=binpb'], { cwd: ROOT });
  const desc = createFileRegistry(fromBinary(FileDescriptorSetSchema, image)).getMessage('dev.sigstore.trustroot.v1.TrustedRoot');
  if (!desc) throw new Error('the sigstore fixture schema has no TrustedRoot');
  cached = (json) => void fromJson(desc, JSON.parse(json.toString()) as JsonValue);
  return cached;
}
