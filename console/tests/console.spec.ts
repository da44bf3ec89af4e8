import { expect, test, type Browser, type Page } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

// End-to-end against a live Halyard system (PostgreSQL, Nexus, a QEMU sled agent) that the Rust
// harness starts; nothing is mocked.
const URL = process.env.HALYARD_URL;
const TOKEN = process.env.HALYARD_TOKEN;
const VIEWER_TOKEN = process.env.HALYARD_VIEWER_TOKEN;
if (!URL || !TOKEN || !VIEWER_TOKEN) {
  throw new Error(
    'The console browser tests need a running Halyard: set HALYARD_URL (the external API, e.g. http://127.0.0.1:PORT), ' +
      'HALYARD_TOKEN (a fleet admin API token) and HALYARD_VIEWER_TOKEN (a fleet viewer API token). ' +
      `Missing: ${[!URL && 'HALYARD_URL', !TOKEN && 'HALYARD_TOKEN', !VIEWER_TOKEN && 'HALYARD_VIEWER_TOKEN']
        .filter(Boolean)
        .join(', ')}`,
  );
}
const SHOTS = process.env.HALYARD_SCREENSHOTS || join(process.cwd(), 'screenshots');
mkdirSync(SHOTS, { recursive: true });

const BOOT_MINUTES = 4;
const suffix = `${Date.now().toString(36)}`;
const project = `pw-${suffix}`;
const instance = `web-${suffix}`;
const instancePath = `/projects/${project}/instances/${instance}`;

async function shot(page: Page, name: string) {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

async function signIn(page: Page, token: string) {
  await expect(page).toHaveURL(/\/login/);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page).not.toHaveURL(/\/login/);
  await expect(page.getByRole('button', { name: 'Sign out' })).toBeVisible();
}

function stateBadge(page: Page) {
  return page.getByTestId('instance-state');
}

async function consoleText(page: Page): Promise<string> {
  return page.evaluate(() => window.halyardConsoleText?.() ?? '');
}

function hasLine42(text: string): boolean {
  return text.split('\n').some((l) => {
    const t = l.trim();
    return t === '42' || /(^|[^=\d])42$/.test(t);
  });
}

async function noHorizontalOverflow(page: Page) {
  const { sw, iw } = await page.evaluate(() => ({
    sw: document.documentElement.scrollWidth,
    iw: window.innerWidth,
  }));
  expect(sw, `page scrolls horizontally at ${page.url()}`).toBeLessThanOrEqual(iw);
}

test.describe.configure({ mode: 'serial' });

test('a bad token shows the 401 message on the sign-in page', async ({ page }) => {
  await page.goto('/login');
  await shot(page, '01-login');
  await page.getByLabel('API token').fill('not-a-real-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const alert = page.getByRole('alert');
  await expect(alert).toBeVisible();
  await expect(alert).toContainText('HTTP 401');
  await expect(page).toHaveURL(/\/login/);
  await shot(page, '02-login-bad-token');
});

test('an unauthenticated visit goes to sign-in', async ({ page }) => {
  await page.goto('/projects');
  await expect(page).toHaveURL(/\/login\?next=%2Fprojects/);
  await expect(page.getByLabel('API token')).toBeVisible();
});

test('admin: project, instance, live state, serial console, stop, sign out', async ({ page }) => {
  test.setTimeout(20 * 60 * 1000);
  const cspViolations: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });

  await test.step('sign in with the form', async () => {
    await page.goto('/');
    await signIn(page, TOKEN!);
    await expect(page).toHaveURL(/\/projects$/);
    await expect(page.getByRole('heading', { name: 'Projects', level: 1 })).toBeVisible();
    await shot(page, '03-projects');
  });

  await test.step('create a project', async () => {
    await page.getByRole('button', { name: 'New project' }).click();
    const dlg = page.getByRole('dialog', { name: 'Create project' });
    await expect(dlg).toBeVisible();
    await dlg.getByLabel('Name', { exact: true }).fill(project);
    await dlg.getByLabel('Description').fill('Created by the console browser test');
    await dlg.getByRole('button', { name: 'Create project' }).click();
    await expect(page).toHaveURL(new RegExp(`/projects/${project}/instances$`));
    await expect(page.getByRole('heading', { name: `Project ${project}` })).toBeVisible();
  });

  await test.step('create an instance (1 vCPU, 256 MiB, started)', async () => {
    await page.getByRole('button', { name: 'New instance' }).click();
    const dlg = page.getByRole('dialog', { name: 'Create instance' });
    await expect(dlg).toBeVisible();
    await dlg.getByLabel('Name', { exact: true }).fill(instance);
    await dlg.getByLabel('vCPUs').fill('1');
    await dlg.getByLabel('Memory (MiB)').fill('256');
    await expect(dlg.getByLabel('Start on create')).toBeChecked();
    await dlg.getByRole('button', { name: 'Create instance' }).click();
    await expect(page).toHaveURL(new RegExp(`${instancePath}$`));
  });

  await test.step('the instance reaches running without a reload', async () => {
    await expect(stateBadge(page)).toHaveText(/creating|starting|running/);
    await expect(stateBadge(page)).toHaveText('running', { timeout: BOOT_MINUTES * 60 * 1000 });
    // The active VMM and its sled are shown, and the history lists it.
    const history = page.getByRole('region', { name: 'VMM history table' });
    await expect(history).toContainText('active');
    await expect(history).toContainText('running');
    await shot(page, '04-instance');
    // The operators' view of the sled meanwhile: a live VMM and its reservation.
    const ops = await page.context().newPage();
    await ops.goto('/system/sleds');
    const sledRow = ops.getByRole('region', { name: 'Sleds table' }).getByRole('row').nth(1);
    await expect(sledRow.getByRole('cell').last()).toHaveText(/^[1-9]\d*$/);
    await expect(sledRow).toContainText(/[1-9]\d* \/ \d+/);
    await shot(ops, '10-system-sleds-running');
    await ops.close();
    await page.getByRole('link', { name: `${project}` }).first().click();
    await expect(page.getByRole('link', { name: instance })).toBeVisible();
    await shot(page, '05-project-instances');
    await page.getByRole('link', { name: instance }).click();
  });

  await test.step('serial console: banner, heartbeats, typing', async () => {
    await page.getByRole('link', { name: 'Serial console' }).click();
    await expect(page).toHaveURL(new RegExp(`${instancePath}/console$`));
    await expect(page.locator('.console-status [role=status]')).toHaveText('connected');
    await expect
      .poll(() => consoleText(page), { timeout: BOOT_MINUTES * 60 * 1000, message: 'the guest banner' })
      .toContain(`HALYARD-GUEST BOOTED hostname=${instance}`);
    // Live output in the rendered rows.
    await expect(page.locator('.xterm-rows')).toContainText('HALYARD-HEARTBEAT n=', { timeout: 60 * 1000 });
    await shot(page, '06-instance-console');

    let seen = false;
    for (let attempt = 0; attempt < 3 && !seen; attempt++) {
      await page.locator('.terminal-host').click();
      await page.keyboard.type('echo $((6*7))');
      await page.keyboard.press('Enter');
      try {
        await expect.poll(async () => hasLine42(await consoleText(page)), { timeout: 60 * 1000 }).toBe(true);

    // The terminal is no keyboard trap: Shift+Tab leaves it.
    await page.locator('.terminal-host').click();
    await expect(page.locator('.terminal-host textarea')).toBeFocused();
    await page.keyboard.press('Shift+Tab');
    await expect(page.locator('.terminal-host textarea')).not.toBeFocused();
        seen = true;
      } catch {
        /* the shell may not have been reading yet: type again */
      }
    }
    expect(seen, 'a line "42" in the console after typing echo $((6*7))').toBe(true);
    await shot(page, '07-instance-console-typed');

    // A new connection replays the history first: the banner and the answer again.
    await page.getByRole('button', { name: 'Restart connection' }).click();
    await expect(page.locator('.console-status [role=status]')).toHaveText('connected');
    await expect
      .poll(() => consoleText(page), { timeout: 60 * 1000, message: 'the history replayed' })
      .toContain(`HALYARD-GUEST BOOTED hostname=${instance}`);
    await expect.poll(async () => hasLine42(await consoleText(page)), { timeout: 60 * 1000 }).toBe(true);

    // The terminal is no keyboard trap: Shift+Tab leaves it.
    await page.locator('.terminal-host').click();
    await expect(page.locator('.terminal-host textarea')).toBeFocused();
    await page.keyboard.press('Shift+Tab');
    await expect(page.locator('.terminal-host textarea')).not.toBeFocused();
  });

  await test.step('stop with confirmation; the state changes live', async () => {
    await page.getByRole('button', { name: 'Stop', exact: true }).click();
    const dlg = page.getByRole('dialog', { name: 'Stop instance' });
    await expect(dlg).toBeVisible();
    await dlg.getByRole('button', { name: 'Stop instance' }).click();
    await expect(dlg).toBeHidden();
    await expect(stateBadge(page)).toHaveText(/stopping|stopped/, { timeout: 60 * 1000 });
    await expect(stateBadge(page)).toHaveText('stopped', { timeout: 5 * 60 * 1000 });
    await expect(page.locator('.console-status [role=status]')).toHaveText('disconnected', { timeout: 60 * 1000 });
    await expect(page.getByRole('button', { name: 'Reconnect' })).toBeVisible();
  });

  await test.step('disks, snapshots and the operator views', async () => {
    await page.getByRole('navigation', { name: 'Breadcrumb' }).getByRole('link', { name: project }).click();
    await page.getByRole('navigation', { name: 'Project' }).getByRole('link', { name: 'Disks' }).click();
    await expect(page.getByRole('heading', { name: 'Disks' })).toBeVisible();
    // A blank disk: created and deleted, or (too few sleds with storage) the API's reason shown.
    const disk = `d-${suffix}`;
    await page.getByRole('button', { name: 'New disk' }).click();
    const dd = page.getByRole('dialog', { name: 'Create blank disk' });
    await dd.getByLabel('Name', { exact: true }).fill(disk);
    await dd.getByLabel('Size (GiB)').fill('1');
    await dd.getByRole('button', { name: 'Create disk' }).click();
    const refused = dd.getByRole('alert');
    const row = page.getByRole('row').filter({ hasText: disk });
    await expect(refused.or(row)).toBeVisible();
    if (await refused.isVisible()) {
      await expect(refused).toContainText(/HTTP [45]\d\d/);
      await shot(page, '08-disks-create-refused');
      await page.keyboard.press('Escape');
      await expect(dd).toBeHidden();
    } else {
      await shot(page, '08-disks-created');
      await page.getByRole('button', { name: `Delete disk ${disk}` }).click();
      await page.getByRole('dialog', { name: 'Delete disk' }).getByRole('button', { name: 'Delete disk' }).click();
      await expect(row).toHaveCount(0, { timeout: 120 * 1000 });
    }
    await shot(page, '08-disks');
    await page.getByRole('navigation', { name: 'Project' }).getByRole('link', { name: 'Snapshots' }).click();
    await expect(page.getByRole('heading', { name: 'Snapshots' })).toBeVisible();
    await shot(page, '09-snapshots');

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'System' }).click();
    await expect(page).toHaveURL(/\/system\/sleds$/);
    const sleds = page.getByRole('region', { name: 'Sleds table' });
    await expect(sleds.getByRole('row')).not.toHaveCount(0);
    await expect(sleds).toContainText('/');
    await expect(page.getByRole('link', { name: 'Metrics (Prometheus)' })).toHaveAttribute('href', '/v1/system/metrics');
    await shot(page, '10-system-sleds');
    await page.getByRole('navigation', { name: 'System' }).getByRole('link', { name: 'Sagas' }).click();
    await expect(page.getByRole('heading', { name: 'Sagas in progress' })).toBeVisible();
    await expect(page.getByRole('alert')).toHaveCount(0);
    await shot(page, '11-system-sagas');
    await page.getByRole('navigation', { name: 'System' }).getByRole('link', { name: 'Background tasks' }).click();
    await expect(page.getByRole('region', { name: 'Background tasks table' })).toBeVisible();
    await shot(page, '12-system-tasks');
    await page.getByRole('link', { name: 'Authorize a CLI' }).click();
    await expect(page.getByLabel('User code')).toBeVisible();
    // A wrong code is refused with the API's message.
    await page.getByLabel('User code').fill('NOPE-NOPE');
    await page.getByRole('button', { name: 'Authorize' }).click();
    await expect(page.getByRole('alert')).toContainText(/HTTP 4\d\d/);
    // A real device login, as a CLI does it: the code it shows, confirmed here, gets it a token.
    const clientId = crypto.randomUUID();
    const auth = await page.request.post('/device/auth', { form: { client_id: clientId } });
    expect(auth.ok()).toBe(true);
    const { user_code, device_code } = await auth.json();
    await page.goto(`/device/verify?user_code=${encodeURIComponent(user_code)}`);
    await expect(page.getByLabel('User code')).toHaveValue(user_code);
    await page.getByRole('button', { name: 'Authorize' }).click();
    await expect(page.getByRole('status')).toContainText('is authorized');
    await shot(page, '13-authorize-cli');
    const tok = await page.request.post('/device/token', {
      form: { grant_type: 'urn:ietf:params:oauth:grant-type:device_code', device_code, client_id: clientId },
    });
    expect(tok.status()).toBe(200);
    expect(typeof (await tok.json()).access_token).toBe('string');
  });

  await test.step('sign out', async () => {
    await page.getByRole('button', { name: 'Sign out' }).click();
    await expect(page).toHaveURL(/\/login/);
    const me = await page.request.get('/v1/me');
    expect(me.status()).toBe(401);
    expect(cspViolations, 'the page runs under the CSP Nexus sends').toEqual([]);
  });
});

async function viewerPage(browser: Browser) {
  const ctx = await browser.newContext({ baseURL: URL, viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(instancePath);
  // Sent to sign-in, then back to the instance.
  await signIn(page, VIEWER_TOKEN!);
  await expect(page).toHaveURL(new RegExp(`${instancePath}$`));
  return { ctx, page };
}

test('viewer: a refused action shows the API 403 message', async ({ browser }) => {
  const { ctx, page } = await viewerPage(browser);
  await expect(stateBadge(page)).toHaveText('stopped');

  const api = await page.request.post(`/v1/instances/${instance}/start?project=${project}`);
  expect(api.status()).toBe(403);
  const body = await api.json();
  expect(typeof body.message).toBe('string');

  await page.getByRole('button', { name: 'Start', exact: true }).click();
  const alert = page.getByRole('alert');
  await expect(alert).toBeVisible();
  await expect(alert).toContainText(body.message);
  await expect(alert).toContainText('HTTP 403');
  if (body.error_code) await expect(alert).toContainText(body.error_code);
  await page.getByRole('button', { name: 'Dismiss error' }).click();
  await expect(alert).toHaveCount(0);

  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const dlg = page.getByRole('dialog', { name: 'Delete instance' });
  await dlg.getByRole('button', { name: 'Delete instance' }).click();
  await expect(page.getByRole('alert')).toContainText('HTTP 403');
  await expect(page).toHaveURL(new RegExp(`${instancePath}$`));
  await shot(page, '14-viewer-forbidden');
  await ctx.close();
});

test('keyboard: Tab reaches the actions; dialogs trap focus and close on Escape', async ({ browser }) => {
  const { ctx, page } = await viewerPage(browser);
  await expect(stateBadge(page)).toBeVisible();
  await page.locator('body').click({ position: { x: 1, y: 1 } });
  const wanted = new Set(['Start', 'Stop', 'Reboot', 'Migrate', 'Delete']);
  const reached = new Set<string>();
  for (let i = 0; i < 40 && reached.size < wanted.size; i++) {
    await page.keyboard.press('Tab');
    const el = await page.evaluate(() => {
      const a = document.activeElement as HTMLElement | null;
      return a ? { tag: a.tagName, text: (a.textContent ?? '').trim(), outline: getComputedStyle(a).outlineStyle } : null;
    });
    if (el && el.tag === 'BUTTON' && wanted.has(el.text)) {
      reached.add(el.text);
      expect(el.outline, `visible focus outline on ${el.text}`).not.toBe('none');
    }
  }
  expect([...reached].sort()).toEqual([...wanted].sort());

  // Focus is on Delete now (the last action): open its dialog by keyboard.
  await page.getByRole('button', { name: 'Delete', exact: true }).focus();
  await page.keyboard.press('Enter');
  const dlg = page.getByRole('dialog', { name: 'Delete instance' });
  await expect(dlg).toBeVisible();
  for (let i = 0; i < 6; i++) {
    await page.keyboard.press('Tab');
    const inside = await page.evaluate(() => !!document.activeElement?.closest('dialog[open]'));
    expect(inside, 'focus stays inside the open dialog').toBe(true);
  }
  await page.keyboard.press('Escape');
  await expect(dlg).toBeHidden();
  await expect(page.getByRole('button', { name: 'Delete', exact: true })).toBeFocused();
  await ctx.close();
});

test('phone width: no horizontal scrolling, navigation usable', async ({ browser }) => {
  const { ctx, page } = await viewerPage(browser);
  await page.setViewportSize({ width: 390, height: 844 });
  const pages: [string, string, RegExp | string][] = [
    ['/projects', '15-phone-projects', 'Projects'],
    [`/projects/${project}/instances`, '16-phone-project-instances', `Project ${project}`],
    [instancePath, '17-phone-instance', instance],
    [`${instancePath}/console`, '18-phone-instance-console', instance],
    [`/projects/${project}/disks`, '19-phone-disks', `Project ${project}`],
    ['/system/sleds', '20-phone-system-sleds', 'System'],
    ['/system/tasks', '21-phone-system-tasks', 'System'],
  ];
  for (const [path, name, heading] of pages) {
    await page.goto(path);
    await expect(page.getByRole('heading', { level: 1 })).toContainText(heading);
    // Let tables load before measuring.
    await page.waitForLoadState('networkidle').catch(() => {});
    await noHorizontalOverflow(page);
    await shot(page, name);
  }
  const nav = page.getByRole('navigation', { name: 'Main' });
  await expect(nav.getByRole('link', { name: 'Projects' })).toBeVisible();
  await expect(page.getByRole('button', { name: 'Sign out' })).toBeVisible();
  await nav.getByRole('link', { name: 'Projects' }).click();
  await expect(page).toHaveURL(/\/projects$/);
  await expect(page.getByRole('link', { name: project })).toBeVisible();
  await noHorizontalOverflow(page);
  await ctx.close();
});

test('login page at phone width', async ({ page }) => {
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto('/login');
  await expect(page.getByLabel('API token')).toBeVisible();
  await noHorizontalOverflow(page);
  await shot(page, '22-phone-login');
});

test('admin: an API error is shown; an instance and a project deleted through the UI', async ({ page }) => {
  // The first instance stays (stopped) for the harness's checks; this one is created stopped.
  const doomed = `tmp-${suffix}`;
  const doomedPath = `/projects/${project}/instances/${doomed}`;
  await page.goto(`/projects/${project}/instances`);
  await signIn(page, TOKEN!);
  await expect(page).toHaveURL(new RegExp(`/projects/${project}/instances$`));
  await page.getByRole('button', { name: 'New instance' }).click();
  const dlg = page.getByRole('dialog', { name: 'Create instance' });
  await dlg.getByLabel('Name', { exact: true }).fill(doomed);
  await dlg.getByLabel('Start on create').uncheck();
  await dlg.getByRole('button', { name: 'Create instance' }).click();
  await expect(page).toHaveURL(new RegExp(`${doomedPath}$`));
  await expect(stateBadge(page)).toHaveText('stopped', { timeout: 2 * 60 * 1000 });

  // Migrating a stopped instance is refused: the API's message is shown.
  await page.getByRole('button', { name: 'Migrate', exact: true }).click();
  const mig = page.getByRole('dialog', { name: 'Migrate instance' });
  await expect(mig.getByLabel('Destination sled')).toBeVisible();
  await mig.getByRole('button', { name: 'Migrate instance' }).click();
  await expect(mig).toBeHidden();
  await expect(page.getByRole('alert')).toBeVisible();
  await expect(page.getByRole('alert')).toContainText(/HTTP [45]\d\d/);
  await shot(page, '23-instance-error');

  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const del = page.getByRole('dialog', { name: 'Delete instance' });
  await del.getByRole('button', { name: 'Delete instance' }).click();
  await expect(page).toHaveURL(new RegExp(`/projects/${project}/instances$`));
  await expect(page.getByRole('link', { name: doomed })).toHaveCount(0);
  await expect(page.getByRole('link', { name: instance })).toBeVisible();

  // An empty project, created and deleted.
  const empty = `pw-empty-${suffix}`;
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Projects' }).click();
  await page.getByRole('button', { name: 'New project' }).click();
  const np = page.getByRole('dialog', { name: 'Create project' });
  await np.getByLabel('Name', { exact: true }).fill(empty);
  await np.getByRole('button', { name: 'Create project' }).click();
  await expect(page).toHaveURL(new RegExp(`/projects/${empty}/instances$`));
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Projects' }).click();
  await page.getByRole('button', { name: `Delete project ${empty}` }).click();
  const dp = page.getByRole('dialog', { name: 'Delete project' });
  await dp.getByRole('button', { name: 'Delete project' }).click();
  await expect(page.getByRole('link', { name: empty, exact: true })).toHaveCount(0);
  await expect(page.getByRole('link', { name: project, exact: true })).toBeVisible();
  await expect(page.getByRole('alert')).toHaveCount(0);
});
