// Bundle web/src into the Python package: twistchat.js, one ES module with the
// cryptography, codec and session (src/index.js), and app.js, the page
// (src/page/main.js), which imports twistchat.js rather than a copy of it.
// The output depends only on the sources and the versions in
// package-lock.json: no timestamps, no absolute paths. `node build.mjs
// OUTFILE` writes twistchat.js to OUTFILE and app.js beside it (the test that
// checks the committed bundle uses it).
import { build } from 'esbuild';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const outfile = process.argv[2] ?? join(here, '..', 'twistchat', 'web', 'static', 'twistchat.js');

const common = {
  absWorkingDir: here,
  bundle: true,
  format: 'esm',
  platform: 'browser',
  target: 'es2022',
  minify: true,
  legalComments: 'eof',
  charset: 'ascii',
  sourcemap: false,
  logLevel: 'warning',
};

await build({
  ...common,
  entryPoints: ['src/index.js'],
  outfile,
  banner: {
    js: '// twistchat browser cryptography and codec. Generated from web/src by `npm run build`;' +
      ' do not edit. Licences: LICENSES.txt beside this file.',
  },
});

// The page's own code; its imports of ../index.js become the shipped module.
const library = {
  name: 'twistchat.js',
  setup(b) {
    b.onResolve({ filter: /^\.\.\/index\.js$/ }, () => ({ path: './twistchat.js', external: true }));
  },
};

await build({
  ...common,
  entryPoints: ['src/page/main.js'],
  outfile: join(dirname(outfile), 'app.js'),
  plugins: [library],
  banner: {
    js: '// twistchat, the page. Generated from web/src/page by `npm run build`; do not edit.',
  },
});
