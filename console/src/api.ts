// The console's only way to the server: the public API, same origin, session cookie.

export class ApiError extends Error {
  status: number;
  errorCode: string | null;
  requestId: string | null;
  constructor(status: number, message: string, errorCode: string | null, requestId: string | null) {
    super(message);
    this.status = status;
    this.errorCode = errorCode;
    this.requestId = requestId;
  }
}

type UnauthorizedHandler = () => void;
let onUnauthorized: UnauthorizedHandler = () => {};
export function setUnauthorizedHandler(h: UnauthorizedHandler) {
  onUnauthorized = h;
}

export interface RequestOpts {
  method?: string;
  body?: unknown;
  query?: Record<string, string | number | undefined | null>;
  /** Do not redirect to /login on 401 (the sign-in call itself). */
  no401Redirect?: boolean;
}

export function url(path: string, query?: RequestOpts['query']): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null) q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `${path}?${s}` : path;
}

export async function api<T = unknown>(path: string, opts: RequestOpts = {}): Promise<T> {
  const init: RequestInit = {
    method: opts.method ?? 'GET',
    credentials: 'same-origin',
    headers: { Accept: 'application/json' },
  };
  if (opts.body !== undefined) {
    init.body = JSON.stringify(opts.body);
    init.headers = { ...init.headers, 'Content-Type': 'application/json' };
  }
  let resp: Response;
  try {
    resp = await fetch(url(path, opts.query), init);
  } catch (e) {
    throw new ApiError(0, `Cannot reach the server: ${(e as Error).message}`, null, null);
  }
  const text = await resp.text();
  if (!resp.ok) {
    let message = text || resp.statusText || `HTTP ${resp.status}`;
    let code: string | null = null;
    let rid: string | null = null;
    try {
      const b = JSON.parse(text);
      if (b && typeof b === 'object') {
        if (typeof b.message === 'string') message = b.message;
        if (typeof b.error_code === 'string') code = b.error_code;
        if (typeof b.request_id === 'string') rid = b.request_id;
      }
    } catch {
      /* not JSON: keep the text */
    }
    const err = new ApiError(resp.status, message, code, rid);
    if (resp.status === 401 && !opts.no401Redirect) onUnauthorized();
    throw err;
  }
  if (!text) return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    return text as unknown as T;
  }
}

interface Page<T> {
  items: T[];
  next_page?: string | null;
}

/** Every item of a paginated list (follows next_page; capped for safety). */
export async function listAll<T>(path: string, query: RequestOpts['query'] = {}): Promise<T[]> {
  const out: T[] = [];
  let token: string | null | undefined = undefined;
  for (let i = 0; i < 50; i++) {
    const page: Page<T> | T[] = await api<Page<T> | T[]>(path, {
      query: { ...query, limit: 100, page_token: token ?? undefined },
    });
    if (Array.isArray(page)) return page;
    out.push(...(page.items ?? []));
    token = page.next_page;
    if (!token) break;
  }
  return out;
}

/** A list endpoint that may answer a bare array or a page. */
export async function listAny<T>(path: string, query: RequestOpts['query'] = {}): Promise<T[]> {
  const r = await api<unknown>(path, { query });
  if (Array.isArray(r)) return r as T[];
  if (r && typeof r === 'object' && Array.isArray((r as Page<T>).items)) return (r as Page<T>).items;
  return [];
}

export interface Me {
  id: string;
  display_name: string;
  silo_id: string;
  silo_name: string;
  fleet_viewer: boolean;
  silo_admin: boolean;
}
export interface Project {
  id: string;
  name: string;
  description: string;
  time_created: string;
}
export interface Instance {
  id: string;
  name: string;
  description: string;
  hostname: string;
  ncpus: number;
  memory: number;
  run_state: string;
  time_created: string;
  time_run_state_updated: string;
  migration_id?: string | null;
  boot_disk_id?: string | null;
}
export interface Vmm {
  id: string;
  sled_id: string;
  state: string;
  role: string;
  time_created: string;
  time_state_updated: string;
}
export interface Migration {
  id: string;
  source_propolis_id: string;
  target_propolis_id: string;
  source_state: string;
  target_state: string;
  time_created: string;
  time_deleted?: string | null;
}
export interface Disk {
  id: string;
  name: string;
  description: string;
  size: number;
  block_size: number;
  state: { state: string; instance?: string };
  degraded?: boolean;
  device_path?: string;
  time_created: string;
}
export interface Snapshot {
  id: string;
  name: string;
  description: string;
  disk_id: string;
  size: number;
  state: string;
  time_created: string;
}
export interface Sled {
  id: string;
  baseboard?: { serial?: string; part?: string; revision?: number };
  policy?: unknown;
  state?: unknown;
  slot?: number | null;
  usable_hardware_threads: number;
  usable_physical_ram: number;
  reserved_hardware_threads?: number;
  reserved_physical_ram?: number;
  live_vmms?: number;
}
export interface Saga {
  id: string;
  name: string;
  state: string;
  creator?: string | null;
  current_sec?: string | null;
  time_created?: string;
  resume_failure?: string | null;
}
export interface BackgroundTask {
  name: string;
  description?: string;
  period_ms?: number;
  runs?: number;
  last_run?: {
    started?: string;
    start?: string;
    duration_ms?: number;
    elapsed_ms?: number;
    outcome?: string;
    summary?: unknown;
    succeeded?: boolean;
  } | null;
  last_error?: string | { time?: string; message?: string } | null;
  [k: string]: unknown;
}

export const enc = encodeURIComponent;
