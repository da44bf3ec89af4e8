import { useEffect, useState, type FormEvent } from 'react';
import { api, enc, listAll, type Disk, type Instance, type Snapshot } from '../api';
import { Link, navigate } from '../router';
import {
  ConfirmDialog,
  ErrorAlert,
  Field,
  fmtBytes,
  fmtTime,
  Modal,
  PageHeader,
  StateBadge,
  TableWrap,
  usePoll,
} from '../ui';

type Tab = 'instances' | 'disks' | 'snapshots';

export function ProjectTabs({ project, tab }: { project: string; tab: Tab }) {
  const base = `/projects/${enc(project)}`;
  const t = (id: Tab, label: string) => (
    <Link to={`${base}/${id}`} className="tab" aria-current={tab === id ? 'page' : undefined}>
      {label}
    </Link>
  );
  return (
    <nav className="tabs" aria-label="Project">
      {t('instances', 'Instances')}
      {t('disks', 'Disks')}
      {t('snapshots', 'Snapshots')}
    </nav>
  );
}

export function Breadcrumbs({ items }: { items: { label: string; to?: string }[] }) {
  return (
    <nav className="crumbs" aria-label="Breadcrumb">
      <ol>
        {items.map((it, i) => (
          <li key={i}>{it.to ? <Link to={it.to}>{it.label}</Link> : <span aria-current="page">{it.label}</span>}</li>
        ))}
      </ol>
    </nav>
  );
}

export function ProjectPage({ project, tab }: { project: string; tab: Tab }) {
  return (
    <div>
      <Breadcrumbs items={[{ label: 'Projects', to: '/projects' }, { label: project }]} />
      <PageHeader title={<>Project {project}</>} />
      <ProjectTabs project={project} tab={tab} />
      {tab === 'instances' && <Instances project={project} />}
      {tab === 'disks' && <Disks project={project} />}
      {tab === 'snapshots' && <Snapshots project={project} />}
    </div>
  );
}

function Instances({ project }: { project: string }) {
  const { data, error, reload } = usePoll(() => listAll<Instance>('/v1/instances', { project }), [project]);
  const [creating, setCreating] = useState(false);
  return (
    <section aria-labelledby="instances-h">
      <div className="section-header">
        <h2 id="instances-h">Instances</h2>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          New instance
        </button>
      </div>
      <ErrorAlert error={error} />
      {data && data.length === 0 && <p className="empty">No instances in this project.</p>}
      {data && data.length > 0 && (
        <TableWrap label="Instances">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">State</th>
                <th scope="col">vCPUs</th>
                <th scope="col">Memory</th>
                <th scope="col">Hostname</th>
                <th scope="col">Created</th>
              </tr>
            </thead>
            <tbody>
              {data.map((i) => (
                <tr key={i.id}>
                  <td>
                    <Link to={`/projects/${enc(project)}/instances/${enc(i.name)}`}>{i.name}</Link>
                  </td>
                  <td>
                    <StateBadge state={i.run_state} />
                  </td>
                  <td>{i.ncpus}</td>
                  <td>{fmtBytes(i.memory)}</td>
                  <td>{i.hostname}</td>
                  <td>{fmtTime(i.time_created)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
      <CreateInstance
        project={project}
        open={creating}
        onClose={() => setCreating(false)}
        onCreated={(name) => {
          setCreating(false);
          reload();
          navigate(`/projects/${enc(project)}/instances/${enc(name)}`);
        }}
      />
    </section>
  );
}

function CreateInstance({
  project,
  open,
  onClose,
  onCreated,
}: {
  project: string;
  open: boolean;
  onClose: () => void;
  onCreated: (name: string) => void;
}) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [hostname, setHostname] = useState('');
  const [ncpus, setNcpus] = useState('1');
  const [memMiB, setMemMiB] = useState('256');
  const [start, setStart] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (open) setError(null);
  }, [open]);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const n = name.trim();
      const inst = await api<Instance>('/v1/instances', {
        method: 'POST',
        query: { project },
        body: {
          name: n,
          description,
          hostname: hostname.trim() || n,
          ncpus: Number(ncpus),
          memory: Math.round(Number(memMiB) * 1024 * 1024),
          start,
        },
      });
      setName('');
      setDescription('');
      setHostname('');
      onCreated(inst?.name ?? n);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title="Create instance" open={open} onClose={onClose}>
      <form onSubmit={submit}>
        <Field label="Name" hint="Lower-case letters, digits and dashes; starts with a letter.">
          {(id) => <input id={id} required value={name} onChange={(e) => setName(e.target.value)} autoFocus />}
        </Field>
        <Field label="Description">
          {(id) => <input id={id} value={description} onChange={(e) => setDescription(e.target.value)} />}
        </Field>
        <Field label="Hostname" hint="Defaults to the name.">
          {(id) => <input id={id} value={hostname} onChange={(e) => setHostname(e.target.value)} />}
        </Field>
        <div className="field-row">
          <Field label="vCPUs">
            {(id) => (
              <input id={id} type="number" min={1} max={64} required value={ncpus} onChange={(e) => setNcpus(e.target.value)} />
            )}
          </Field>
          <Field label="Memory (MiB)">
            {(id) => (
              <input
                id={id}
                type="number"
                min={1}
                step={1}
                required
                value={memMiB}
                onChange={(e) => setMemMiB(e.target.value)}
              />
            )}
          </Field>
        </div>
        <div className="field checkbox">
          <input id="inst-start" type="checkbox" checked={start} onChange={(e) => setStart(e.target.checked)} />
          <label htmlFor="inst-start">Start on create</label>
        </div>
        <ErrorAlert error={error} />
        <div className="modal-actions">
          <button type="button" className="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary" disabled={busy}>
            Create instance
          </button>
        </div>
      </form>
    </Modal>
  );
}

function diskState(d: Disk, instances: Map<string, string>) {
  const s = d.state?.state ?? 'unknown';
  const inst = d.state?.instance;
  return (
    <>
      <StateBadge state={s} />
      {inst && <span className="muted"> {instances.get(inst) ?? inst}</span>}
      {d.degraded && (
        <>
          {' '}
          <span className="badge badge-bad">degraded</span>
        </>
      )}
    </>
  );
}

function Disks({ project }: { project: string }) {
  const { data, error, reload } = usePoll(
    async () => {
      const [disks, instances] = await Promise.all([
        listAll<Disk>('/v1/disks', { project }),
        listAll<Instance>('/v1/instances', { project }).catch(() => [] as Instance[]),
      ]);
      return { disks, names: new Map(instances.map((i) => [i.id, i.name])) };
    },
    [project],
  );
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<Disk | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  return (
    <section aria-labelledby="disks-h">
      <div className="section-header">
        <h2 id="disks-h">Disks</h2>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          New disk
        </button>
      </div>
      <ErrorAlert error={actionError} onDismiss={() => setActionError(null)} />
      <ErrorAlert error={error} />
      {data && data.disks.length === 0 && <p className="empty">No disks in this project.</p>}
      {data && data.disks.length > 0 && (
        <TableWrap label="Disks">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Size</th>
                <th scope="col">State</th>
                <th scope="col">Block size</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {data.disks.map((d) => (
                <tr key={d.id}>
                  <td>{d.name}</td>
                  <td>{fmtBytes(d.size)}</td>
                  <td>{diskState(d, data.names)}</td>
                  <td>{d.block_size}</td>
                  <td>{fmtTime(d.time_created)}</td>
                  <td className="row-actions">
                    <button
                      type="button"
                      className="btn btn-small btn-danger-ghost"
                      aria-label={`Delete disk ${d.name}`}
                      onClick={() => setDeleting(d)}
                    >
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
      <CreateDisk
        project={project}
        open={creating}
        onClose={() => setCreating(false)}
        onCreated={() => {
          setCreating(false);
          reload();
        }}
      />
      <ConfirmDialog
        open={!!deleting}
        title="Delete disk"
        body={
          <p>
            Delete disk <strong>{deleting?.name}</strong> and all its data? This cannot be undone.
          </p>
        }
        confirmLabel="Delete disk"
        danger
        onClose={() => setDeleting(null)}
        onConfirm={async () => {
          const d = deleting!;
          setDeleting(null);
          try {
            await api(`/v1/disks/${enc(d.name)}`, { method: 'DELETE', query: { project } });
            setActionError(null);
          } catch (e) {
            setActionError(e);
          }
          reload();
        }}
      />
    </section>
  );
}

function CreateDisk({
  project,
  open,
  onClose,
  onCreated,
}: {
  project: string;
  open: boolean;
  onClose: () => void;
  onCreated: () => void;
}) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [sizeGiB, setSizeGiB] = useState('1');
  const [blockSize, setBlockSize] = useState('512');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (open) setError(null);
  }, [open]);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api('/v1/disks', {
        method: 'POST',
        query: { project },
        body: {
          name: name.trim(),
          description,
          size: Math.round(Number(sizeGiB) * 1024 * 1024 * 1024),
          disk_backend: { type: 'distributed', disk_source: { type: 'blank', block_size: Number(blockSize) } },
        },
      });
      setName('');
      setDescription('');
      onCreated();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title="Create blank disk" open={open} onClose={onClose}>
      <form onSubmit={submit}>
        <Field label="Name">
          {(id) => <input id={id} required value={name} onChange={(e) => setName(e.target.value)} autoFocus />}
        </Field>
        <Field label="Description">
          {(id) => <input id={id} value={description} onChange={(e) => setDescription(e.target.value)} />}
        </Field>
        <div className="field-row">
          <Field label="Size (GiB)">
            {(id) => (
              <input
                id={id}
                type="number"
                min={0.001}
                step="any"
                required
                value={sizeGiB}
                onChange={(e) => setSizeGiB(e.target.value)}
              />
            )}
          </Field>
          <Field label="Block size">
            {(id) => (
              <select id={id} value={blockSize} onChange={(e) => setBlockSize(e.target.value)}>
                <option value="512">512 bytes</option>
                <option value="2048">2048 bytes</option>
                <option value="4096">4096 bytes</option>
              </select>
            )}
          </Field>
        </div>
        <ErrorAlert error={error} />
        <div className="modal-actions">
          <button type="button" className="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary" disabled={busy}>
            Create disk
          </button>
        </div>
      </form>
    </Modal>
  );
}

function Snapshots({ project }: { project: string }) {
  const { data, error, reload } = usePoll(
    async () => {
      const [snapshots, disks] = await Promise.all([
        listAll<Snapshot>('/v1/snapshots', { project }),
        listAll<Disk>('/v1/disks', { project }),
      ]);
      return { snapshots, disks };
    },
    [project],
  );
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<Snapshot | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);
  const diskName = (id: string) => data?.disks.find((d) => d.id === id)?.name ?? id;
  return (
    <section aria-labelledby="snapshots-h">
      <div className="section-header">
        <h2 id="snapshots-h">Snapshots</h2>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          New snapshot
        </button>
      </div>
      <ErrorAlert error={actionError} onDismiss={() => setActionError(null)} />
      <ErrorAlert error={error} />
      {data && data.snapshots.length === 0 && <p className="empty">No snapshots in this project.</p>}
      {data && data.snapshots.length > 0 && (
        <TableWrap label="Snapshots">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Disk</th>
                <th scope="col">Size</th>
                <th scope="col">State</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {data.snapshots.map((s) => (
                <tr key={s.id}>
                  <td>{s.name}</td>
                  <td>{diskName(s.disk_id)}</td>
                  <td>{fmtBytes(s.size)}</td>
                  <td>
                    <StateBadge state={s.state} />
                  </td>
                  <td>{fmtTime(s.time_created)}</td>
                  <td className="row-actions">
                    <button
                      type="button"
                      className="btn btn-small btn-danger-ghost"
                      aria-label={`Delete snapshot ${s.name}`}
                      onClick={() => setDeleting(s)}
                    >
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
      <CreateSnapshot
        project={project}
        disks={data?.disks ?? []}
        open={creating}
        onClose={() => setCreating(false)}
        onCreated={() => {
          setCreating(false);
          reload();
        }}
      />
      <ConfirmDialog
        open={!!deleting}
        title="Delete snapshot"
        body={
          <p>
            Delete snapshot <strong>{deleting?.name}</strong>? This cannot be undone.
          </p>
        }
        confirmLabel="Delete snapshot"
        danger
        onClose={() => setDeleting(null)}
        onConfirm={async () => {
          const s = deleting!;
          setDeleting(null);
          try {
            await api(`/v1/snapshots/${enc(s.name)}`, { method: 'DELETE', query: { project } });
            setActionError(null);
          } catch (e) {
            setActionError(e);
          }
          reload();
        }}
      />
    </section>
  );
}

function CreateSnapshot({
  project,
  disks,
  open,
  onClose,
  onCreated,
}: {
  project: string;
  disks: Disk[];
  open: boolean;
  onClose: () => void;
  onCreated: () => void;
}) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [disk, setDisk] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    if (open) setError(null);
  }, [open]);
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api('/v1/snapshots', {
        method: 'POST',
        query: { project },
        body: { name: name.trim(), description, disk: disk || disks[0]?.name },
      });
      setName('');
      setDescription('');
      onCreated();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title="Create snapshot" open={open} onClose={onClose}>
      <form onSubmit={submit}>
        <Field label="Disk">
          {(id) => (
            <select id={id} required value={disk || disks[0]?.name || ''} onChange={(e) => setDisk(e.target.value)}>
              {disks.length === 0 && <option value="">No disks in this project</option>}
              {disks.map((d) => (
                <option key={d.id} value={d.name}>
                  {d.name}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Name">
          {(id) => <input id={id} required value={name} onChange={(e) => setName(e.target.value)} autoFocus />}
        </Field>
        <Field label="Description">
          {(id) => <input id={id} value={description} onChange={(e) => setDescription(e.target.value)} />}
        </Field>
        <ErrorAlert error={error} />
        <div className="modal-actions">
          <button type="button" className="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" className="btn btn-primary" disabled={busy || disks.length === 0}>
            Create snapshot
          </button>
        </div>
      </form>
    </Modal>
  );
}
