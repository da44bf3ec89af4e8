import { defineConfig } from '@playwright/test';

// Runs against a live Halyard system: HALYARD_URL (the external API = console origin),
// HALYARD_TOKEN, HALYARD_VIEWER_TOKEN, HALYARD_SCREENSHOTS. See README.md.
export default defineConfig({
  testDir: 'tests',
  outputDir: 'test-results',
  workers: 1,
  fullyParallel: false,
  retries: 0,
  // The guest boots under TCG emulation: minutes, not seconds.
  timeout: 15 * 60 * 1000,
  expect: { timeout: 30 * 1000 },
  reporter: [['list']],
  use: {
    baseURL: process.env.HALYARD_URL,
    screenshot: 'only-on-failure',
    trace: 'off',
    viewport: { width: 1280, height: 800 },
    actionTimeout: 30 * 1000,
    navigationTimeout: 60 * 1000,
    launchOptions: {
      executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
      args: [
        '--headless=new',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    },
  },
});
