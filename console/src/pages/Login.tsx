import { useState, type FormEvent } from 'react';
import { api } from '../api';
import { navigate, useLocation } from '../router';
import { ErrorAlert } from '../ui';

export function LoginPage({ onSignedIn }: { onSignedIn: () => Promise<void> }) {
  const { search } = useLocation();
  const [token, setToken] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await api('/v1/login/token', { method: 'POST', body: { token: token.trim() }, no401Redirect: true });
      await onSignedIn();
      let next = search.get('next') || '/projects';
      if (!next.startsWith('/') || next.startsWith('//') || next.startsWith('/login')) next = '/projects';
      navigate(next, { replace: true });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="main login" id="main">
      <div className="card login-card">
        <h1>Sign in to Halyard</h1>
        <form onSubmit={submit}>
          <div className="field">
            <label htmlFor="api-token">API token</label>
            <input
              id="api-token"
              type="password"
              autoComplete="off"
              spellCheck={false}
              required
              value={token}
              onChange={(e) => setToken(e.target.value)}
            />
          </div>
          <ErrorAlert error={error} />
          <button type="submit" className="btn btn-primary" disabled={busy || !token.trim()}>
            {busy ? 'Signing in…' : 'Sign in'}
          </button>
        </form>
        <section className="help" aria-label="How to get a token">
          <h2>How to get a token</h2>
          <ul>
            <li>
              Log in with the CLI's device login (<code>oxide auth login --host {location.origin}</code>)
              and approve its code in a signed-in console under “Authorize a CLI”; the CLI then holds an
              API token.
            </li>
            <li>
              On a development system, <code>run-all</code> prints a fleet administrator's API token when it
              starts.
            </li>
          </ul>
          <p className="muted">The token is exchanged for a session cookie; the console never stores it.</p>
        </section>
      </div>
    </main>
  );
}
