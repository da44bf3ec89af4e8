import { useState, type FormEvent } from 'react';
import { api } from '../api';
import { useLocation } from '../router';
import { ErrorAlert, Notice, PageHeader } from '../ui';

export function DeviceVerifyPage() {
  const { search } = useLocation();
  const [code, setCode] = useState(search.get('user_code') ?? '');
  const [error, setError] = useState<unknown>(null);
  const [done, setDone] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setDone(null);
    try {
      const c = code.trim().toUpperCase();
      await api('/device/confirm', { method: 'POST', body: { user_code: c } });
      setDone(c);
      setCode('');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="narrow">
      <PageHeader title="Authorize a CLI" />
      <p>
        Enter the code your command-line client showed. Authorizing it gives that client an API token acting as
        you.
      </p>
      <form onSubmit={submit} className="card">
        <div className="field">
          <label htmlFor="user-code">User code</label>
          <input
            id="user-code"
            autoComplete="off"
            spellCheck={false}
            placeholder="ABCD-EFGH"
            required
            value={code}
            onChange={(e) => setCode(e.target.value)}
          />
        </div>
        <ErrorAlert error={error} />
        {done && <Notice>The CLI with code {done} is authorized. You can return to it now.</Notice>}
        <button type="submit" className="btn btn-primary" disabled={busy || !code.trim()}>
          Authorize
        </button>
      </form>
    </div>
  );
}
