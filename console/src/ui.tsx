import { useCallback, useEffect, useLayoutEffect, useRef, useState, type ReactNode } from 'react';
import { ApiError } from './api';

/** Loads now and every `intervalMs` (no overlapping requests); `reload` forces a refresh. */
export function usePoll<T>(fn: () => Promise<T>, deps: unknown[], intervalMs = 2000) {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const fnRef = useRef(fn);
  fnRef.current = fn;
  const gen = useRef(0);
  const busy = useRef(false);

  const run = useCallback(async (g: number) => {
    if (busy.current) return;
    busy.current = true;
    try {
      const d = await fnRef.current();
      if (g === gen.current) {
        setData(d);
        setError(null);
      }
    } catch (e) {
      if (g === gen.current) setError(e);
    } finally {
      busy.current = false;
      if (g === gen.current) setLoading(false);
    }
  }, []);

  useEffect(() => {
    const g = ++gen.current;
    busy.current = false;
    setData(undefined);
    setError(null);
    setLoading(true);
    run(g);
    if (intervalMs <= 0) return;
    const t = window.setInterval(() => run(g), intervalMs);
    return () => window.clearInterval(t);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);

  const reload = useCallback(() => {
    busy.current = false;
    return run(gen.current);
  }, [run]);
  return { data, error, loading, reload };
}

export function ErrorAlert({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  if (!error) return null;
  const e = error as Partial<ApiError> & { message?: string };
  const message = e.message ?? String(error);
  return (
    <div className="alert alert-error" role="alert">
      <div className="alert-body">
        <strong className="alert-message">{message}</strong>
        {(e.errorCode || e.status) && (
          <div className="alert-meta">
            {e.errorCode && <span>Error code: <code>{e.errorCode}</code></span>}
            {e.status ? <span>HTTP {e.status}</span> : null}
            {e.requestId && <span>Request <code>{e.requestId}</code></span>}
          </div>
        )}
      </div>
      {onDismiss && (
        <button type="button" className="btn btn-ghost btn-small" onClick={onDismiss} aria-label="Dismiss error">
          Dismiss
        </button>
      )}
    </div>
  );
}

export function Notice({ children }: { children: ReactNode }) {
  return (
    <div className="alert alert-ok" role="status">
      {children}
    </div>
  );
}

/** A modal built on <dialog>: showModal() makes the rest of the page inert (focus stays inside),
 * Escape closes it. */
export function Modal({
  title,
  open,
  onClose,
  children,
}: {
  title: string;
  open: boolean;
  onClose: () => void;
  children: ReactNode;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const opener = useRef<Element | null>(null);
  const titleId = useRef(`dlg-${Math.random().toString(36).slice(2)}`).current;
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) {
      opener.current = document.activeElement;
      d.showModal();
    } else if (!open && d.open) {
      d.close();
      (opener.current as HTMLElement | null)?.focus?.();
    }
  }, [open]);
  // Keep Tab inside the dialog (also covers browsers where inert is not complete).
  const onKeyDown = (e: React.KeyboardEvent<HTMLDialogElement>) => {
    if (e.key !== 'Tab' || !ref.current) return;
    const f = Array.from(
      ref.current.querySelectorAll<HTMLElement>(
        'button:not([disabled]), [href], input:not([disabled]), select:not([disabled]), textarea:not([disabled]), [tabindex]:not([tabindex="-1"])',
      ),
    );
    if (f.length === 0) return;
    const first = f[0];
    const last = f[f.length - 1];
    if (e.shiftKey && document.activeElement === first) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && document.activeElement === last) {
      e.preventDefault();
      first.focus();
    }
  };
  return (
    <dialog
      ref={ref}
      className="modal"
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
      onKeyDown={onKeyDown}
    >
      {open && (
        <>
          <h2 id={titleId} className="modal-title">
            {title}
          </h2>
          {children}
        </>
      )}
    </dialog>
  );
}

export function ConfirmDialog({
  open,
  title,
  body,
  confirmLabel,
  danger,
  onConfirm,
  onClose,
}: {
  open: boolean;
  title: string;
  body: ReactNode;
  confirmLabel: string;
  danger?: boolean;
  onConfirm: () => Promise<void> | void;
  onClose: () => void;
}) {
  const [busy, setBusy] = useState(false);
  return (
    <Modal title={title} open={open} onClose={onClose}>
      <div className="modal-body">{body}</div>
      <div className="modal-actions">
        <button type="button" className="btn" onClick={onClose} autoFocus>
          Cancel
        </button>
        <button
          type="button"
          className={danger ? 'btn btn-danger' : 'btn btn-primary'}
          disabled={busy}
          onClick={async () => {
            setBusy(true);
            try {
              await onConfirm();
            } finally {
              setBusy(false);
            }
          }}
        >
          {confirmLabel}
        </button>
      </div>
    </Modal>
  );
}

const STATE_CLASS: Record<string, string> = {
  ok: 'ok',
  in_service: 'ok',
  running: 'ok',
  ready: 'ok',
  attached: 'ok',
  detached: 'neutral',
  active: 'ok',
  stopped: 'neutral',
  past: 'neutral',
  destroyed: 'neutral',
  failed: 'bad',
  saga_unwound: 'bad',
  expunged: 'bad',
  decommissioned: 'neutral',
  faulted: 'bad',
  unwinding: 'bad',
};

export function StateBadge({ state, label }: { state: string; label?: string }) {
  const cls = STATE_CLASS[state] ?? 'busy';
  return (
    <span className={`badge badge-${cls}`} data-state={state} title={label ? `${label}: ${state}` : undefined}>
      {state}
    </span>
  );
}

export function fmtBytes(n: number | undefined | null): string {
  if (n === undefined || n === null || Number.isNaN(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${Number.isInteger(v) ? v : v.toFixed(1)} ${units[i]}`;
}

export function fmtTime(s: string | undefined | null): string {
  if (!s) return '—';
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return s;
  return d.toLocaleString();
}

export function ShortId({ id }: { id: string | null | undefined }) {
  if (!id) return <span>—</span>;
  return (
    <code className="id" title={id}>
      {id}
    </code>
  );
}

export function TableWrap({ label, children }: { label: string; children: ReactNode }) {
  const ref = useRef<HTMLDivElement>(null);
  // Each cell carries its column's name, shown before it when a narrow screen stacks the rows.
  useLayoutEffect(() => {
    const t = ref.current?.querySelector('table');
    if (!t) return;
    const heads = Array.from(t.querySelectorAll('thead th')).map((th) => th.textContent ?? '');
    t.querySelectorAll('tbody tr').forEach((tr) => {
      Array.from(tr.children).forEach((td, i) => {
        const l = heads[i] ?? '';
        if (td.getAttribute('data-label') !== l) td.setAttribute('data-label', l);
      });
    });
  });
  return (
    <div className="table-wrap" role="region" aria-label={`${label} table`} tabIndex={0} ref={ref}>
      {children}
    </div>
  );
}

export function PageHeader({ title, children }: { title: ReactNode; children?: ReactNode }) {
  return (
    <div className="page-header">
      <h1>{title}</h1>
      {children && <div className="page-actions">{children}</div>}
    </div>
  );
}

export function Field({
  label,
  children,
  hint,
}: {
  label: string;
  children: (id: string) => ReactNode;
  hint?: string;
}) {
  const id = useRef(`f-${Math.random().toString(36).slice(2)}`).current;
  return (
    <div className="field">
      <label htmlFor={id}>{label}</label>
      {children(id)}
      {hint && <div className="hint">{hint}</div>}
    </div>
  );
}
