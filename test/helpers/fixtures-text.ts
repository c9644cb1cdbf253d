/**
 * Text fixtures several unit tests share: the smallest valid config (paths that exist on any Linux machine),
 * and the store's schema as version 4 left it, to test the migrations after it.
 */

/** A development config with one pkcs11 backend, parsed (not opened) by the config tests. */
export const MINIMAL_CONFIG = `
mode: development
listen: 127.0.0.1:0
tls: { certFile: /etc/hostname, keyFile: /etc/hostname, clientCaFile: /etc/hostname }
auth: { roles: { admin: ["cn:admin"], signer: ["uri:spiffe://x/*"] } }
store: { sqlite: { path: db/sigil.db } }
backends:
  hsm: { type: pkcs11, module: /etc/hostname, token: sigil, pinFile: /etc/hostname }
defaultBackend: hsm
`;

/** The tables of a store at schema version 4 (as issue 2 left it), before `PRAGMA user_version = 4`. */
export const STORE_V4_TABLES = `CREATE TABLE keys (name TEXT PRIMARY KEY, algorithm TEXT NOT NULL, backend TEXT NOT NULL, primary_version INTEGER NOT NULL, created_at INTEGER NOT NULL) STRICT;
      CREATE TABLE key_versions (name TEXT NOT NULL REFERENCES keys(name), version INTEGER NOT NULL, uri TEXT NOT NULL, state TEXT NOT NULL, generated INTEGER NOT NULL, spki BLOB NOT NULL, created_at INTEGER NOT NULL, PRIMARY KEY (name, version)) STRICT;
      CREATE TABLE ca_certificates (id INTEGER PRIMARY KEY AUTOINCREMENT, key_version TEXT NOT NULL, der BLOB NOT NULL, not_after INTEGER NOT NULL, created_at INTEGER NOT NULL) STRICT;
      CREATE TABLE enrollments (ek_hash TEXT PRIMARY KEY, ak_name TEXT NOT NULL, ak_public BLOB NOT NULL, policy TEXT NOT NULL, reset_count INTEGER NOT NULL, restart_count INTEGER NOT NULL, clock TEXT NOT NULL, updated_at INTEGER NOT NULL) STRICT;
      CREATE TABLE join_tokens_used (token_hash TEXT PRIMARY KEY, policy TEXT NOT NULL, used_at INTEGER NOT NULL) STRICT;`;
