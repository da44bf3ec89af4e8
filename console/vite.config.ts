import { defineConfig } from 'vite';

// Fixed output names: Nexus embeds dist/ at compile time and serves exactly
// /index.html, /assets/console.js and /assets/console.css. No code splitting,
// no hashes, no source maps, no public/ files.
export default defineConfig({
  base: '/',
  publicDir: false,
  // JSX with React's automatic runtime, by Vite's built-in transformer (no React plugin).
  oxc: { jsx: { runtime: 'automatic' } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    assetsInlineLimit: 0,
    cssCodeSplit: false,
    modulePreload: false,
    chunkSizeWarningLimit: 2000,
    rolldownOptions: {
      output: {
        entryFileNames: 'assets/console.js',
        chunkFileNames: 'assets/console.js',
        assetFileNames: 'assets/console[extname]',
        codeSplitting: false,
      },
    },
  },
});
