// Build of radcloud's reading web app: two pages (sign-in + worklist, viewer) served by the API
// at /app/ (serving/api/routes/web.py). `npm run dev` serves them with the API proxied.
import { resolve } from 'node:path';
import { createLogger, defineConfig } from 'vite';

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

export default defineConfig({
  base: '/app/',
  customLogger: logger,
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
