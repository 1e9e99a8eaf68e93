#!/usr/bin/env node
// A `solc`-compatible command over solcjs (the official compiler built to
// WebAssembly), for machines where no native solc can be downloaded.
// Speaks the two modes py-solc-x / ape-solidity use: `--version` and
// `--standard-json [--base-path P] [--allow-paths ...]` (JSON on stdin/stdout).
'use strict';
const fs = require('fs');
const path = require('path');
const solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));

const args = process.argv.slice(2);
if (args.includes('--version')) {
  process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
  process.exit(0);
}
if (!args.includes('--standard-json')) {
  process.stderr.write('this solc bridge supports only --version and --standard-json\n');
  process.exit(2);
}
const at = args.indexOf('--base-path');
const basePath = at >= 0 ? args[at + 1] : process.cwd();
const includes = [];
args.forEach((a, i) => { if (a === '--include-path') includes.push(args[i + 1]); });

function findImports(p) {
  for (const root of [basePath, ...includes, process.cwd()]) {
    const full = path.isAbsolute(p) ? p : path.join(root, p);
    if (fs.existsSync(full)) return { contents: fs.readFileSync(full, 'utf8') };
  }
  return { error: `File not found: ${p}` };
}

const input = fs.readFileSync(0, 'utf8');
process.stdout.write(solc.compile(input, { import: findImports }));
