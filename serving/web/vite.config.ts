// Build of radcloud's reading web app: two pages (sign-in + worklist, viewer) served by the API
// at /app/ (serving/api/routes/web.py). `npm run dev` serves them with the API proxied.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';
import { type Plugin, createLogger, defineConfig } from 'vite';

const api = process.env.RADCLOUD_API_URL ?? 'http://127.0.0.1:8000';

// The codecs' Emscripten glue mentions node's fs/path (never reached in a browser): vite warns
// about each; those warnings say nothing about this app, so they are left out of the build log.
const logger = createLogger();
const warn = logger.warn.bind(logger);
logger.warn = (message, options) => {
  if (!message.includes('externalized for browser compatibility')) {
    warn(message, options);
  }
};

// Radiologists read remotely: the viewer's script is about 4 MB, 1.2 MB gzipped. Each script,
// style sheet and WebAssembly file of the build gets a .gz beside it, which the API sends to
// browsers that accept gzip (serving/api/routes/web.py): compressed once here, not per request.
const COMPRESSED = new Set(['.js', '.css', '.wasm', '.html']);
function precompress(): Plugin {
  let outDir = 'dist';
  return {
    name: 'radcloud-precompress',
    apply: 'build',
    configResolved(config) {
      outDir = resolve(config.root, config.build.outDir);
    },
    closeBundle() {
      for (const entry of readdirSync(outDir, { recursive: true, withFileTypes: true })) {
        const file = join(entry.parentPath, entry.name);
        if (entry.isFile() && COMPRESSED.has(extname(entry.name))) {
          const data = readFileSync(file);
          if (data.length >= 1024) {
            writeFileSync(`${file}.gz`, gzipSync(data, { level: 9 }));
          }
        }
      }
    },
  };
}

export default defineConfig({
  base: '/app/',
  customLogger: logger,
  plugins: [precompress()],
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: true,
    chunkSizeWarningLimit: 8000, // Cornerstone (vtk.js, codecs) is large; it is cached by hash
    rollupOptions: {
      input: {
        index: resolve(import.meta.dirname, 'index.html'),
        viewer: resolve(import.meta.dirname, 'viewer.html'),
      },
    },
  },
  // Cornerstone's image decoding runs in module workers; its loader must not be pre-bundled
  // (the worker and codec WebAssembly are found relative to the module).
  worker: { format: 'es' },
  optimizeDeps: { exclude: ['@cornerstonejs/dicom-image-loader'] },
  server: {
    proxy: Object.fromEntries(
      ['/api', '/dicom-web'].map((path) => [path, { target: api }]),
    ),
  },
});
