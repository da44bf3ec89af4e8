import { createContext, useCallback, useContext, useEffect, useState } from 'react';
import { api, setUnauthorizedHandler, type Me } from './api';
import { Link, navigate, useLocation } from './router';
import { ErrorAlert } from './ui';
import { LoginPage } from './pages/Login';
import { ProjectsPage } from './pages/Projects';
import { ProjectPage } from './pages/Project';
import { InstancePage } from './pages/Instance';
import { SystemPage } from './pages/System';
import { DeviceVerifyPage } from './pages/DeviceVerify';

interface Session {
  me: Me | null;
  refreshMe: () => Promise<void>;
}
const SessionCtx = createContext<Session>({ me: null, refreshMe: async () => {} });
export const useSession = () => useContext(SessionCtx);

function goToLogin() {
  if (location.pathname === '/login') return;
  const next = location.pathname + location.search;
  navigate(`/login?next=${encodeURIComponent(next)}`, { replace: true });
}

export function App() {
  const { path } = useLocation();
  const [me, setMe] = useState<Me | null>(null);
  const [meError, setMeError] = useState<unknown>(null);

  useEffect(() => {
    setUnauthorizedHandler(() => {
      setMe(null);
      goToLogin();
    });
  }, []);

  const refreshMe = useCallback(async () => {
    try {
      const m = await api<Me>('/v1/me');
      setMe(m);
      setMeError(null);
    } catch (e) {
      setMeError(e);
    }
  }, []);

  const onLogin = path === '/login';
  useEffect(() => {
    if (!onLogin && !me) refreshMe();
  }, [onLogin, me, refreshMe]);

  useEffect(() => {
    document.title = titleFor(path);
  }, [path]);

  let content;
  if (onLogin) {
    content = <LoginPage onSignedIn={refreshMe} />;
  } else if (!me) {
    content = meError ? (
      <main className="main" id="main">
        <ErrorAlert error={meError} />
        <button type="button" className="btn" onClick={refreshMe}>
          Retry
        </button>
      </main>
    ) : (
      <main className="main" id="main">
        <p className="muted">Loading…</p>
      </main>
    );
  } else {
    content = (
      <main className="main" id="main">
        <Routes path={path} me={me} />
      </main>
    );
  }

  return (
    <SessionCtx.Provider value={{ me, refreshMe }}>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <Header me={onLogin ? null : me} path={path} />
      {content}
    </SessionCtx.Provider>
  );
}

function titleFor(path: string): string {
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0) return 'Halyard Console';
  return `${parts.map(decodeURIComponent).slice(-2).join(' / ')} · Halyard`;
}

function Header({ me, path }: { me: Me | null; path: string }) {
  const [busy, setBusy] = useState(false);
  const signOut = async () => {
    setBusy(true);
    try {
      await api('/v1/logout', { method: 'POST', no401Redirect: true });
    } catch {
      /* the cookie is gone either way once we leave */
    } finally {
      setBusy(false);
      window.location.assign('/login');
    }
  };
  const cur = (p: string) => (path === p || path.startsWith(p + '/') ? 'page' : undefined);
  return (
    <header className="topbar">
      <Link to="/projects" className="brand">
        Halyard
      </Link>
      {me && (
        <nav className="topnav" aria-label="Main">
          <Link to="/projects" aria-current={cur('/projects')}>
            Projects
          </Link>
          {me.fleet_viewer && (
            <Link to="/system/sleds" aria-current={cur('/system')}>
              System
            </Link>
          )}
          <Link to="/device/verify" aria-current={cur('/device/verify')}>
            Authorize a CLI
          </Link>
        </nav>
      )}
      {me && (
        <div className="user">
          <span className="user-name" title={`${me.display_name} (silo ${me.silo_name})`}>
            {me.display_name}
          </span>
          <button type="button" className="btn btn-small" onClick={signOut} disabled={busy}>
            Sign out
          </button>
        </div>
      )}
    </header>
  );
}

function Routes({ path, me }: { path: string; me: Me }) {
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  useEffect(() => {
    if (parts.length === 0) navigate('/projects', { replace: true });
    if (parts[0] === 'system' && parts.length === 1) navigate('/system/sleds', { replace: true });
    if (parts[0] === 'projects' && parts.length === 2) navigate(`/projects/${encodeURIComponent(parts[1])}/instances`, { replace: true });
  });
  if (parts.length === 0) return null;
  if (parts[0] === 'projects') {
    if (parts.length === 1) return <ProjectsPage />;
    const project = parts[1];
    if (parts[2] === 'instances' && parts[3]) {
      return <InstancePage project={project} instance={parts[3]} tab={parts[4] === 'console' ? 'console' : 'overview'} />;
    }
    const tab = parts[2] === 'disks' ? 'disks' : parts[2] === 'snapshots' ? 'snapshots' : 'instances';
    return <ProjectPage project={project} tab={tab} />;
  }
  if (parts[0] === 'system') {
    if (!me.fleet_viewer) {
      return <ErrorAlert error={{ message: 'The system view is for operators: your user holds no role on the fleet.' }} />;
    }
    const tab = parts[1] === 'sagas' ? 'sagas' : parts[1] === 'tasks' ? 'tasks' : 'sleds';
    return <SystemPage tab={tab} />;
  }
  if (parts[0] === 'device' && parts[1] === 'verify') return <DeviceVerifyPage />;
  return (
    <div>
      <h1>Not found</h1>
      <p>
        There is no page at <code>{path}</code>. <Link to="/projects">Go to projects</Link>.
      </p>
    </div>
  );
}
