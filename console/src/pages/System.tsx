import { listAll, listAny, type BackgroundTask, type Saga, type Sled } from '../api';
import { Link } from '../router';
import { ErrorAlert, fmtBytes, fmtTime, PageHeader, ShortId, StateBadge, TableWrap, usePoll } from '../ui';

type Tab = 'sleds' | 'sagas' | 'tasks';

export function SystemPage({ tab }: { tab: Tab }) {
  const t = (id: Tab, label: string) => (
    <Link to={`/system/${id}`} className="tab" aria-current={tab === id ? 'page' : undefined}>
      {label}
    </Link>
  );
  return (
    <div>
      <PageHeader title="System">
        <a className="btn" href="/v1/system/metrics" target="_blank" rel="noopener">
          Metrics (Prometheus)
        </a>
      </PageHeader>
      <nav className="tabs" aria-label="System">
        {t('sleds', 'Sleds')}
        {t('sagas', 'Sagas')}
        {t('tasks', 'Background tasks')}
      </nav>
      {tab === 'sleds' && <Sleds />}
      {tab === 'sagas' && <Sagas />}
      {tab === 'tasks' && <Tasks />}
    </div>
  );
}

function str(v: unknown): string {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'string' || typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'object') {
    const o = v as Record<string, unknown>;
    if (typeof o.kind === 'string') return o.kind;
    if (typeof o.state === 'string') return o.state;
    return JSON.stringify(v);
  }
  return String(v);
}

function Usage({ used, total, fmt }: { used?: number; total?: number; fmt: (n: number) => string }) {
  if (total === undefined || total === null) return <span>—</span>;
  const u = used ?? 0;
  const pct = total > 0 ? Math.min(100, Math.round((u / total) * 100)) : 0;
  return (
    <div className="usage">
      <span>
        {fmt(u)} / {fmt(total)}
      </span>
      <meter min={0} max={total || 1} value={u} aria-label={`${pct}% used`} title={`${pct}% used`} />
    </div>
  );
}

function Sleds() {
  const { data, error } = usePoll(() => listAll<Sled>('/v1/system/hardware/sleds'), []);
  return (
    <section aria-labelledby="sleds-h">
      <h2 id="sleds-h">Sleds</h2>
      <ErrorAlert error={error} />
      {data && data.length === 0 && <p className="empty">No sleds.</p>}
      {data && data.length > 0 && (
        <TableWrap label="Sleds">
          <table>
            <thead>
              <tr>
                <th scope="col">Sled</th>
                <th scope="col">State</th>
                <th scope="col">Policy</th>
                <th scope="col">CPU threads used</th>
                <th scope="col">Memory used</th>
                <th scope="col">Live VMMs</th>
              </tr>
            </thead>
            <tbody>
              {data.map((s) => (
                <tr key={s.id}>
                  <td>
                    {s.baseboard?.serial && s.baseboard.serial !== s.id && (
                      <div>
                        <strong>{s.baseboard.serial}</strong>
                      </div>
                    )}
                    <ShortId id={s.id} />
                  </td>
                  <td>
                    <StateBadge state={str(s.state)} />
                  </td>
                  <td>{str(s.policy)}</td>
                  <td>
                    <Usage used={s.reserved_hardware_threads} total={s.usable_hardware_threads} fmt={String} />
                  </td>
                  <td>
                    <Usage used={s.reserved_physical_ram} total={s.usable_physical_ram} fmt={fmtBytes} />
                  </td>
                  <td>{s.live_vmms ?? '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </section>
  );
}

function Sagas() {
  const { data, error } = usePoll(() => listAny<Saga>('/v1/system/sagas'), []);
  return (
    <section aria-labelledby="sagas-h">
      <h2 id="sagas-h">Sagas in progress</h2>
      <ErrorAlert error={error} />
      {data && data.length === 0 && <p className="empty">No saga is in progress.</p>}
      {data && data.length > 0 && (
        <TableWrap label="Sagas">
          <table>
            <thead>
              <tr>
                <th scope="col">Saga</th>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">Creator</th>
                <th scope="col">Current SEC</th>
                <th scope="col">Created</th>
                <th scope="col">Resume failure</th>
              </tr>
            </thead>
            <tbody>
              {data.map((s) => (
                <tr key={s.id}>
                  <td>
                    <ShortId id={s.id} />
                  </td>
                  <td>{s.name}</td>
                  <td>
                    <StateBadge state={str(s.state)} />
                  </td>
                  <td>{s.creator ? <ShortId id={s.creator} /> : '—'}</td>
                  <td>{s.current_sec ? <ShortId id={s.current_sec} /> : '—'}</td>
                  <td>{fmtTime(s.time_created)}</td>
                  <td className="wrap">{s.resume_failure ? <span className="error-text">{s.resume_failure}</span> : '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </section>
  );
}

function summary(v: unknown): string {
  if (v === null || v === undefined) return '';
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

function LastRun({ run }: { run: BackgroundTask['last_run'] }) {
  if (!run) return <span className="muted">not yet</span>;
  const started = run.started ?? run.start;
  const ms = run.duration_ms ?? run.elapsed_ms;
  const outcome = run.outcome ?? summary(run.summary);
  return (
    <>
      {typeof run.succeeded === 'boolean' && (
        <>
          <StateBadge state={run.succeeded ? 'ok' : 'failed'} />{' '}
        </>
      )}
      {fmtTime(started)}
      {typeof ms === 'number' && <span className="muted"> ({ms} ms)</span>}
      {outcome && <div className="small summary">{outcome}</div>}
    </>
  );
}

function LastError({ err }: { err: BackgroundTask['last_error'] }) {
  if (!err) return <span className="muted">—</span>;
  if (typeof err === 'string') return <span className="error-text">{err}</span>;
  return (
    <>
      <span className="error-text">{err.message ?? JSON.stringify(err)}</span>
      {err.time && <div className="muted small">{fmtTime(err.time)}</div>}
    </>
  );
}

function Tasks() {
  const { data, error } = usePoll(() => listAny<BackgroundTask>('/v1/system/background-tasks'), []);
  return (
    <section aria-labelledby="tasks-h">
      <h2 id="tasks-h">Background tasks</h2>
      <ErrorAlert error={error} />
      {data && data.length === 0 && <p className="empty">No background tasks.</p>}
      {data && data.length > 0 && (
        <TableWrap label="Background tasks">
          <table>
            <thead>
              <tr>
                <th scope="col">Task</th>
                <th scope="col">Period</th>
                <th scope="col">Runs</th>
                <th scope="col">Last run</th>
                <th scope="col">Last error</th>
              </tr>
            </thead>
            <tbody>
              {data.map((t) => (
                <tr key={t.name}>
                  <td>
                    <strong>{t.name}</strong>
                    {t.description && <div className="muted small">{t.description}</div>}
                  </td>
                  <td>{typeof t.period_ms === 'number' ? `${(t.period_ms / 1000).toLocaleString()} s` : '—'}</td>
                  <td>{t.runs ?? '—'}</td>
                  <td className="wrap">
                    <LastRun run={t.last_run} />
                  </td>
                  <td className="wrap">
                    <LastError err={t.last_error} />
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
    </section>
  );
}
