import { loadPackageDefinition, type ChannelCredentials, type Client, type ClientDuplexStream, type Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

const require = createRequire(import.meta.url);
const reflectionProto = join(dirname(require.resolve('@grpc/reflection/package.json')), 'build/proto/grpc/reflection/v1/reflection.proto');
const healthProto = join(dirname(require.resolve('grpc-health-check/package.json')), 'proto/health/v1/health.proto');

type Ctor<T> = new (addr: string, creds: ChannelCredentials) => T;
const load = (file: string): Record<string, unknown> => loadPackageDefinition(loadSync(file, { keepCase: true, defaults: true, oneofs: true, enums: String })) as Record<string, unknown>;
const dig = (o: Record<string, unknown>, path: string): unknown => path.split('.').reduce<unknown>((x, k) => (x as Record<string, unknown>)[k], o);

/** A client of the standard gRPC health service (grpc.health.v1.Health), built from its proto. */
export const HealthClient = dig(load(healthProto), 'grpc.health.v1.Health') as Ctor<
  Client & { check(req: { service: string }, cb: (err: ServiceError | null, res?: { status: string }) => void): void }
>;

/** A client of the standard gRPC reflection service (grpc.reflection.v1.ServerReflection). */
export const ReflectionClient = dig(load(reflectionProto), 'grpc.reflection.v1.ServerReflection') as Ctor<
  Client & { serverReflectionInfo(md: Metadata): ClientDuplexStream<Record<string, unknown>, Record<string, unknown>> }
>;
