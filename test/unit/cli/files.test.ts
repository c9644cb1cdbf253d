// openOut: the output file of a sign command, made ready before anything is signed and written whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lstat, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openOut } from '../../../src/cli/files.ts';

test('written whole by a rename beside the file: a symlink stays a symlink to the new file, an existing mode is kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sigil-out-'));
  try {
    const real = join(dir, 'real.sig');
    await writeFile(real, 'old');
    await chmod(real, 0o600);
    await symlink(real, join(dir, 'link.sig'));
    const out = openOut(join(dir, 'link.sig'), '--out');
    out.commit('new');
    assert.ok((await lstat(join(dir, 'link.sig'))).isSymbolicLink(), 'the link is kept');
    assert.equal(await readlink(join(dir, 'link.sig')), real);
    assert.equal(await readFile(real, 'utf8'), 'new');
    assert.equal((await stat(real)).mode & 0o777, 0o600);
    assert.deepEqual((await readdir(dir)).sort(), ['link.sig', 'real.sig'], 'no temporary file left');
    // A link to a file not made yet: the file is made where it points.
    await symlink(join(dir, 'later.sig'), join(dir, 'dangling.sig'));
    openOut(join(dir, 'dangling.sig'), '--out').commit('x');
    assert.equal(await readFile(join(dir, 'later.sig'), 'utf8'), 'x');
    assert.ok((await lstat(join(dir, 'dangling.sig'))).isSymbolicLink());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a device is written as it is, never replaced by a file (/dev/stdout, /dev/null)', async () => {
  const out = openOut('/dev/null', '--out');
  out.commit('nothing');
  assert.ok((await stat('/dev/null')).isCharacterDevice());
  assert.deepEqual((await readdir('/dev')).filter((f) => f.startsWith('.null.')), [], 'no temporary file in /dev');
});
