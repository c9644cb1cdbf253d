import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  CompactRange,
  EMPTY_ROOT,
  consistencyProof,
  inclusionProof,
  leafHash,
  memoryReader,
  rangeRoot,
  verifyConsistency,
  verifyInclusion,
  type CompletedSubtree,
} from '../../../src/audit/merkle.ts';

const h = (s: string): Buffer => Buffer.from(s, 'hex');

// RFC 6962 reference vectors as published by transparency-dev/merkle (testonly/constants.go, proof/verify_test.go).
const LEAVES = ['', '00', '10', '2021', '3031', '40414243', '5051525354555657', '606162636465666768696a6b6c6d6e6f'].map(h);
const ROOTS = [
  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  '6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d',
  'fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125',
  'aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77',
  'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7',
  '4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4',
  '76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef',
  'ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c',
  '5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328',
].map(h);
// [leaf index (0-based), tree size, proof]
const INCLUSION: Array<[number, number, string[]]> = [
  [0, 8, ['96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7', '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4']],
  [5, 8, ['bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b', 'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0', 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7']],
  [2, 3, ['fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125']],
  [1, 5, ['6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d', '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', 'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b']],
];
const CONSISTENCY: Array<[number, number, string[]]> = [
  [1, 1, []],
  [1, 8, ['96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7', '5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', '6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4']],
  [6, 8, ['0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a', 'ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0', 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7']],
  [2, 5, ['5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e', 'bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b']],
  [6, 7, ['0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a', 'b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f', 'd37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7']],
];

const leafHashes = LEAVES.map(leafHash);
const read = memoryReader(leafHashes);

test('roots of every prefix match the RFC 6962 reference vectors, by range and by compact range', () => {
  assert.deepEqual(EMPTY_ROOT, ROOTS[0]);
  const cr = new CompactRange();
  assert.deepEqual(cr.root(), ROOTS[0]);
  for (let n = 1; n <= 8; n++) {
    assert.deepEqual(rangeRoot(read, 0, n), ROOTS[n], `range root of size ${n}`);
    cr.append(leafHashes[n - 1]!);
    assert.deepEqual(cr.root(), ROOTS[n], `compact root of size ${n}`);
  }
});

test('inclusion proofs match the reference vectors and verify', () => {
  for (const [i, n, p] of INCLUSION) {
    const proof = inclusionProof(read, i, n);
    assert.deepEqual(proof.map((x) => x.toString('hex')), p, `proof of ${i} in ${n}`);
    assert.ok(verifyInclusion(i, n, leafHashes[i]!, proof, ROOTS[n]!));
    assert.ok(!verifyInclusion(i + 1, n, leafHashes[i]!, proof, ROOTS[n]!), 'a wrong index fails');
    assert.ok(!verifyInclusion(i, n * 2, leafHashes[i]!, proof, ROOTS[n]!), 'a wrong size fails');
    assert.ok(!verifyInclusion(i, n, leafHashes[i]!, [...proof, ROOTS[n]!], ROOTS[n]!), 'trailing garbage fails');
  }
  assert.deepEqual(inclusionProof(read, 0, 1), []);
  assert.ok(verifyInclusion(0, 1, leafHashes[0]!, [], ROOTS[1]!));
});

test('consistency proofs match the reference vectors and verify', () => {
  for (const [m, n, p] of CONSISTENCY) {
    const proof = consistencyProof(read, m, n);
    assert.deepEqual(proof.map((x) => x.toString('hex')), p, `proof ${m} -> ${n}`);
    assert.ok(verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, proof));
    if (p.length > 0) {
      assert.ok(!verifyConsistency(m, n, ROOTS[n]!, ROOTS[m]!, proof), 'swapped roots fail');
      assert.ok(!verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, proof.slice(0, -1)), 'a truncated proof fails');
      assert.ok(!verifyConsistency(m, n, ROOTS[m]!, ROOTS[n]!, []), 'an empty proof fails');
    }
  }
  assert.ok(verifyConsistency(0, 5, EMPTY_ROOT, ROOTS[5]!, []));
  assert.ok(!verifyConsistency(5, 4, ROOTS[5]!, ROOTS[4]!, []), 'time travel fails');
});

test('the compact range reports each completed subtree once, with the hash of that range', () => {
  const seen: CompletedSubtree[] = [];
  const cr = new CompactRange();
  for (const l of leafHashes) cr.append(l, (s) => seen.push(s));
  assert.equal(seen.length, 7, 'a tree of 8 leaves has 7 interior perfect subtrees');
  for (const s of seen) assert.deepEqual(s.hash, read(s.level, s.index));
});

const sizes = fc.integer({ min: 1, max: 64 }).chain((n) => fc.tuple(fc.constant(n), fc.integer({ min: 0, max: n - 1 }), fc.integer({ min: 0, max: n })));
const tree = (n: number): Buffer[] => Array.from({ length: n }, (_, i) => leafHash(Buffer.from(`entry ${i}`)));

test('every inclusion and consistency proof up to 64 leaves verifies', () => {
  const leaves = tree(64);
  const r = memoryReader(leaves);
  const roots = [EMPTY_ROOT];
  const cr = new CompactRange();
  for (const l of leaves) {
    cr.append(l);
    roots.push(cr.root());
  }
  for (let n = 1; n <= 64; n++) {
    for (let i = 0; i < n; i++) assert.ok(verifyInclusion(i, n, leaves[i]!, inclusionProof(r, i, n), roots[n]!), `inclusion ${i} in ${n}`);
    for (let m = 0; m <= n; m++) assert.ok(verifyConsistency(m, n, roots[m]!, roots[n]!, consistencyProof(r, m, n)), `consistency ${m} -> ${n}`);
  }
});

test('a flipped bit anywhere in a proof, leaf or root fails verification', () => {
  const leaves = tree(64);
  const r = memoryReader(leaves);
  fc.assert(
    fc.property(sizes, fc.nat(), fc.integer({ min: 0, max: 255 }), ([n, i, m], pick, bit) => {
      const root = rangeRoot(r, 0, n);
      const proof = inclusionProof(r, i, n);
      const items = [leaves[i]!, root, ...proof].map((b) => Buffer.from(b));
      const which = pick % items.length;
      items[which]![bit >> 3]! ^= 1 << (bit & 7);
      assert.ok(!verifyInclusion(i, n, items[0]!, items.slice(2), items[1]!));

      const old = rangeRoot(r, 0, m);
      const cp = consistencyProof(r, m, n);
      const citems = [old, root, ...cp].map((b) => Buffer.from(b));
      const cw = pick % citems.length;
      citems[cw]![bit >> 3]! ^= 1 << (bit & 7);
      // The empty tree is consistent with every tree: nothing about its root is checked.
      if (m > 0) assert.ok(!verifyConsistency(m, n, citems[0]!, citems[1]!, citems.slice(2)), `consistency ${m} -> ${n} item ${cw}`);
    }),
    { numRuns: 2000 },
  );
});

test('the frontier read at a size (CompactRange.at) equals the one built by appending every leaf, and appends on from there', () => {
  const leaves = tree(70);
  const reader = memoryReader(leaves);
  for (let n = 0; n <= 69; n++) {
    const built = new CompactRange();
    for (const l of leaves.slice(0, n)) built.append(l);
    const read = CompactRange.at(reader, n);
    assert.deepEqual(read.hashes, built.hashes, `size ${n}`);
    read.append(leaves[n]!);
    assert.deepEqual(read.root(), rangeRoot(reader, 0, n + 1), `size ${n + 1}`);
  }
});
