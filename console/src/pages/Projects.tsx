import { useEffect, useState, type FormEvent } from 'react';
import { api, enc, listAll, type Project } from '../api';
import { Link, navigate } from '../router';
import { ConfirmDialog, ErrorAlert, Field, fmtTime, Modal, PageHeader, TableWrap, usePoll } from '../ui';

export function ProjectsPage() {
  const { data, error, reload } = usePoll(() => listAll<Project>('/v1/projects'), [], 5000);
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<Project | null>(null);
  const [actionError, setActionError] = useState<unknown>(null);

  return (
    <div>
      <PageHeader title="Projects">
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          New project
        </button>
      </PageHeader>
      <ErrorAlert error={actionError} onDismiss={() => setActionError(null)} />
      <ErrorAlert error={error} />
      {data && data.length === 0 && <p className="empty">No projects yet. Create one to start instances.</p>}
      {data && data.length > 0 && (
        <TableWrap label="Projects">
          <table>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Description</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {data.map((p) => (
                <tr key={p.id}>
                  <td>
                    <Link to={`/projects/${enc(p.name)}/instances`}>{p.name}</Link>
                  </td>
                  <td>{p.description}</td>
                  <td>{fmtTime(p.time_created)}</td>
                  <td className="row-actions">
                    <button
                      type="button"
                      className="btn btn-small btn-danger-ghost"
                      aria-label={`Delete project ${p.name}`}
                      onClick={() => setDeleting(p)}
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
      <CreateProject
        open={creating}
        onClose={() => setCreating(false)}
        onCreated={(name) => {
          setCreating(false);
          navigate(`/projects/${enc(name)}/instances`);
        }}
      />
      <ConfirmDialog
        open={!!deleting}
        title="Delete project"
        body={
          <p>
            Delete project <strong>{deleting?.name}</strong>? It must hold no instances, disks or snapshots.
          </p>
        }
        confirmLabel="Delete project"
        danger
        onClose={() => setDeleting(null)}
        onConfirm={async () => {
          const p = deleting!;
          setDeleting(null);
          try {
            await api(`/v1/projects/${enc(p.name)}`, { method: 'DELETE' });
            setActionError(null);
          } catch (e) {
            setActionError(e);
          }
          reload();
        }}
      />
    </div>
  );
}

function CreateProject({
  open,
  onClose,
  onCreated,
}: {
  open: boolean;
  onClose: () => void;
  onCreated: (name: string) => void;
}) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
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
      const p = await api<Project>('/v1/projects', { method: 'POST', body: { name: name.trim(), description } });
      setName('');
      setDescription('');
      onCreated(p?.name ?? name.trim());
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal title="Create project" open={open} onClose={onClose}>
      <form onSubmit={submit}>
        <Field label="Name" hint="Lower-case letters, digits and dashes; starts with a letter.">
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
          <button type="submit" className="btn btn-primary" disabled={busy}>
            Create project
          </button>
        </div>
      </form>
    </Modal>
  );
}
