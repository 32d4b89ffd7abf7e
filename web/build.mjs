// Bundle web/src into one ES module inside the Python package. The output
// depends only on the sources and the versions in package-lock.json: no
// timestamps, no absolute paths. `node build.mjs OUTFILE` writes elsewhere
// (the test that checks the committed bundle uses it).
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outfile = process.argv[2] ?? join(here, '..', 'twistchat', 'web', 'static', 'twistchat.js');

await build({
  absWorkingDir: here,
  entryPoints: ['src/index.js'],
  outfile,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'eof',
  charset: 'ascii',
  sourcemap: false,
  banner: {
    js: '// twistchat browser cryptography and codec. Generated from web/src by `npm run build`;' +
      ' do not edit. Licences: LICENSES.txt beside this file.',
  },
  logLevel: 'warning',
});
