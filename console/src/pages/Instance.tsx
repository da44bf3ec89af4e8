import { useEffect, useState } from 'react';
import { api, enc, listAll, listAny, type Instance, type Migration, type Sled, type Vmm } from '../api';
import { useSession } from '../App';
import { Link, navigate } from '../router';
import {
  ConfirmDialog,
  ErrorAlert,
  Field,
  fmtBytes,
  fmtTime,
  Modal,
  Notice,
  PageHeader,
  ShortId,
  StateBadge,
  TableWrap,
  usePoll,
} from '../ui';
import { Breadcrumbs } from './Project';
import { SerialConsole } from './SerialConsole';

type Action = 'start' | 'stop' | 'reboot' | 'delete' | 'migrate';

export function InstancePage({
  project,
  instance,
  tab,
}: {
  project: string;
  instance: string;
  tab: 'overview' | 'console';
}) {
  const q = { project };
  const path = `/v1/instances/${enc(instance)}`;
  const { data, error, reload } = usePoll(async () => {
    const inst = await api<Instance>(path, { query: q });
    const [vmms, migrations] = await Promise.all([
      listAny<Vmm>(`${path}/vmms`, q).catch((e) => e as Error),
      listAny<Migration>(`${path}/migrations`, q).catch((e) => e as Error),
    ]);
    return { inst, vmms, migrations };
  }, [project, instance]);
  const [confirm, setConfirm] = useState<Action | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const [notice, setNotice] = useState<string | null>(null);

  const doAction = async (a: Action, body?: unknown) => {
    setConfirm(null);
    setActionError(null);
    setNotice(null);
    try {
      if (a === 'delete') {
        await api(path, { method: 'DELETE', query: q });
        navigate(`/projects/${enc(project)}/instances`);
        return;
      }
      await api(`${path}/${a}`, { method: 'POST', query: q, body: a === 'migrate' ? body : undefined });
      setNotice(
        a === 'migrate' ? 'Migration requested.' : `${a[0].toUpperCase()}${a.slice(1)} requested.`,
      );
    } catch (e) {
      setActionError(e);
    }
    reload();
  };

  const inst = data?.inst;
  const vmms = data && Array.isArray(data.vmms) ? data.vmms : [];
  const active = vmms.find((v) => v.role === 'active');
  const target = vmms.find((v) => v.role === 'target');
  const base = `/projects/${enc(project)}/instances/${enc(instance)}`;

  return (
    <div>
      <Breadcrumbs
        items={[
          { label: 'Projects', to: '/projects' },
          { label: project, to: `/projects/${enc(project)}/instances` },
          { label: instance },
        ]}
      />
      <PageHeader
        title={
          <>
            {instance}{' '}
            {inst && (
              <span className="title-state" data-testid="instance-state" aria-live="polite">
                <StateBadge state={inst.run_state} label="Instance state" />
              </span>
            )}
          </>
        }
      >
        <button type="button" className="btn" onClick={() => doAction('start')}>
          Start
        </button>
        <button type="button" className="btn" onClick={() => setConfirm('stop')}>
          Stop
        </button>
        <button type="button" className="btn" onClick={() => setConfirm('reboot')}>
          Reboot
        </button>
        <button type="button" className="btn" onClick={() => setConfirm('migrate')}>
          Migrate
        </button>
        <button type="button" className="btn btn-danger" onClick={() => setConfirm('delete')}>
          Delete
        </button>
      </PageHeader>
      <ErrorAlert error={actionError} onDismiss={() => setActionError(null)} />
      {notice && !actionError && <Notice>{notice}</Notice>}
      <ErrorAlert error={error} />

      <nav className="tabs" aria-label="Instance">
        <Link to={base} className="tab" aria-current={tab === 'overview' ? 'page' : undefined}>
          Overview
        </Link>
        <Link to={`${base}/console`} className="tab" aria-current={tab === 'console' ? 'page' : undefined}>
          Serial console
        </Link>
      </nav>

      {tab === 'overview' && inst && (
        <>
          <section aria-labelledby="props-h" className="card">
            <h2 id="props-h">Properties</h2>
            <dl className="props">
              <dt>State</dt>
              <dd>
                <StateBadge state={inst.run_state} /> <span className="muted">since {fmtTime(inst.time_run_state_updated)}</span>
              </dd>
              <dt>Active VMM</dt>
              <dd>
                {active ? (
                  <>
                    <ShortId id={active.id} /> <StateBadge state={active.state} />
                  </>
                ) : (
                  <span className="muted">none</span>
                )}
              </dd>
              <dt>Sled</dt>
              <dd>{active ? <ShortId id={active.sled_id} /> : <span className="muted">none</span>}</dd>
              {target && (
                <>
                  <dt>Migrating to</dt>
                  <dd>
                    sled <ShortId id={target.sled_id} /> (VMM <ShortId id={target.id} />, <StateBadge state={target.state} />)
                  </dd>
                </>
              )}
              <dt>vCPUs</dt>
              <dd>{inst.ncpus}</dd>
              <dt>Memory</dt>
              <dd>{fmtBytes(inst.memory)}</dd>
              <dt>Hostname</dt>
              <dd>{inst.hostname}</dd>
              <dt>Description</dt>
              <dd>{inst.description || <span className="muted">—</span>}</dd>
              <dt>ID</dt>
              <dd>
                <ShortId id={inst.id} />
              </dd>
              <dt>Created</dt>
              <dd>{fmtTime(inst.time_created)}</dd>
            </dl>
          </section>

          <section aria-labelledby="history-h">
            <h2 id="history-h">History</h2>
            {data && !Array.isArray(data.vmms) && <ErrorAlert error={data.vmms} />}
            {vmms.length === 0 && Array.isArray(data?.vmms) && <p className="empty">This instance has had no VMM yet.</p>}
            {vmms.length > 0 && (
              <TableWrap label="VMM history">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">VMM</th>
                      <th scope="col">Role</th>
                      <th scope="col">State</th>
                      <th scope="col">Sled</th>
                      <th scope="col">Created</th>
                      <th scope="col">State updated</th>
                    </tr>
                  </thead>
                  <tbody>
                    {vmms.map((v) => (
                      <tr key={v.id}>
                        <td>
                          <ShortId id={v.id} />
                        </td>
                        <td>
                          <StateBadge state={v.role} />
                        </td>
                        <td>
                          <StateBadge state={v.state} />
                        </td>
                        <td>
                          <ShortId id={v.sled_id} />
                        </td>
                        <td>{fmtTime(v.time_created)}</td>
                        <td>{fmtTime(v.time_state_updated)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </TableWrap>
            )}
          </section>

          <section aria-labelledby="migrations-h">
            <h2 id="migrations-h">Migrations</h2>
            {data && !Array.isArray(data.migrations) && <ErrorAlert error={data.migrations} />}
            {Array.isArray(data?.migrations) && data.migrations.length === 0 && (
              <p className="empty">No migrations.</p>
            )}
            {Array.isArray(data?.migrations) && data.migrations.length > 0 && (
              <TableWrap label="Migrations">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Migration</th>
                      <th scope="col">Source VMM</th>
                      <th scope="col">Source state</th>
                      <th scope="col">Target VMM</th>
                      <th scope="col">Target state</th>
                      <th scope="col">Created</th>
                    </tr>
                  </thead>
                  <tbody>
                    {data.migrations.map((m) => (
                      <tr key={m.id}>
                        <td>
                          <ShortId id={m.id} />
                        </td>
                        <td>
                          <ShortId id={m.source_propolis_id} />
                        </td>
                        <td>
                          <StateBadge state={m.source_state} />
                        </td>
                        <td>
                          <ShortId id={m.target_propolis_id} />
                        </td>
                        <td>
                          <StateBadge state={m.target_state} />
                        </td>
                        <td>{fmtTime(m.time_created)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </TableWrap>
            )}
          </section>
        </>
      )}

      {tab === 'console' && <SerialConsole project={project} instance={instance} runState={inst?.run_state} />}

      <ConfirmDialog
        open={confirm === 'stop'}
        title="Stop instance"
        body={<p>Stop instance <strong>{instance}</strong>? The guest is powered off.</p>}
        confirmLabel="Stop instance"
        danger
        onClose={() => setConfirm(null)}
        onConfirm={() => doAction('stop')}
      />
      <ConfirmDialog
        open={confirm === 'reboot'}
        title="Reboot instance"
        body={<p>Reboot instance <strong>{instance}</strong>? The guest is reset.</p>}
        confirmLabel="Reboot instance"
        danger
        onClose={() => setConfirm(null)}
        onConfirm={() => doAction('reboot')}
      />
      <ConfirmDialog
        open={confirm === 'delete'}
        title="Delete instance"
        body={
          <p>
            Delete instance <strong>{instance}</strong>? This cannot be undone. The instance must be stopped.
          </p>
        }
        confirmLabel="Delete instance"
        danger
        onClose={() => setConfirm(null)}
        onConfirm={() => doAction('delete')}
      />
      <MigrateDialog
        open={confirm === 'migrate'}
        instance={instance}
        currentSled={active?.sled_id}
        onClose={() => setConfirm(null)}
        onConfirm={(dst) => doAction('migrate', { dst_sled_id: dst })}
      />
    </div>
  );
}

function MigrateDialog({
  open,
  instance,
  currentSled,
  onClose,
  onConfirm,
}: {
  open: boolean;
  instance: string;
  currentSled?: string;
  onClose: () => void;
  onConfirm: (dst: string | null) => void;
}) {
  const { me } = useSession();
  const [sleds, setSleds] = useState<Sled[] | null>(null);
  const [dst, setDst] = useState('');
  useEffect(() => {
    if (!open) return;
    setDst('');
    if (!me?.fleet_viewer) return;
    listAll<Sled>('/v1/system/hardware/sleds')
      .then(setSleds)
      .catch(() => setSleds(null));
  }, [open, me?.fleet_viewer]);
  return (
    <Modal title="Migrate instance" open={open} onClose={onClose}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          onConfirm(dst || null);
        }}
      >
        <p>
          Live-migrate <strong>{instance}</strong> to another sled. The guest keeps running.
        </p>
        <Field label="Destination sled">
          {(id) => (
            <select id={id} value={dst} onChange={(e) => setDst(e.target.value)}>
              <option value="">Any sled with room</option>
              {(sleds ?? [])
                .filter((s) => s.id !== currentSled)
                .map((s) => (
                  <option key={s.id} value={s.id}>
                    {s.baseboard?.serial ? `${s.baseboard.serial} (${s.id})` : s.id}
                  </option>
                ))}
            </select>
          )}
        </Field>
        <div className="modal-actions">
          <button type="button" className="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary">
            Migrate instance
          </button>
        </div>
      </form>
    </Modal>
  );
}
