import { useEffect, useRef, useState } from 'react';
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import { enc, url } from '../api';

type Status = 'connecting' | 'connected' | 'disconnected';

declare global {
  interface Window {
    /** The whole terminal buffer as text (scrollback included), for debugging and browser tests. */
    halyardConsoleText?: () => string;
  }
}

function bufferText(term: Terminal): string {
  const b = term.buffer.active;
  const lines: string[] = [];
  for (let i = 0; i < b.length; i++) {
    const line = b.getLine(i);
    if (!line) continue;
    const s = line.translateToString(true);
    if (line.isWrapped && lines.length > 0) lines[lines.length - 1] += s;
    else lines.push(s);
  }
  return lines.join('\n');
}

export function SerialConsole({
  project,
  instance,
  runState,
}: {
  project: string;
  instance: string;
  runState?: string;
}) {
  const host = useRef<HTMLDivElement>(null);
  const termRef = useRef<Terminal | null>(null);
  const wsRef = useRef<WebSocket | null>(null);
  const [status, setStatus] = useState<Status>('connecting');
  const [detail, setDetail] = useState<string>('');
  const [attempt, setAttempt] = useState(0);

  // One terminal per instance page.
  useEffect(() => {
    const term = new Terminal({
      convertEol: false,
      cursorBlink: true,
      scrollback: 20000,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace',
      fontSize: 14,
      theme: { background: '#0f172a', foreground: '#e2e8f0' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(host.current!);
    termRef.current = term;
    window.halyardConsoleText = () => bufferText(term);
    const doFit = () => {
      try {
        fit.fit();
      } catch {
        /* not laid out yet */
      }
    };
    doFit();
    const ro = new ResizeObserver(doFit);
    ro.observe(host.current!);
    // Not a keyboard trap: Shift+Tab, or Esc then Tab, moves focus out of the terminal
    // (a plain Tab goes to the guest, for the shell's completion).
    let escAt = 0;
    term.attachCustomKeyEventHandler((e) => {
      if (e.type !== 'keydown') return true;
      if (e.key === 'Escape') {
        escAt = Date.now();
        return true;
      }
      if (e.key === 'Tab' && (e.shiftKey || Date.now() - escAt < 1500)) return false;
      return true;
    });
    const enc8 = new TextEncoder();
    const sub = term.onData((d) => {
      const ws = wsRef.current;
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(enc8.encode(d));
    });
    return () => {
      sub.dispose();
      ro.disconnect();
      term.dispose();
      termRef.current = null;
      if (window.halyardConsoleText) delete window.halyardConsoleText;
    };
  }, [project, instance]);

  // One WebSocket per (re)connect.
  useEffect(() => {
    const term = termRef.current;
    if (!term) return;
    term.reset();
    setStatus('connecting');
    setDetail('');
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const path = url(`/v1/instances/${enc(instance)}/serial-console/stream`, { project, most_recent: 262144 });
    const ws = new WebSocket(`${proto}//${location.host}${path}`);
    ws.binaryType = 'arraybuffer';
    wsRef.current = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      setStatus('connected');
      term.focus();
    };
    ws.onmessage = (ev) => {
      if (typeof ev.data === 'string') term.write(ev.data);
      else term.write(new Uint8Array(ev.data as ArrayBuffer));
    };
    ws.onclose = (ev) => {
      setStatus('disconnected');
      setDetail(
        opened
          ? ev.reason
            ? `The server closed the console: ${ev.reason}`
            : 'The console closed (the VMM may have stopped).'
          : 'Could not connect to the serial console (is the instance running?).',
      );
    };
    return () => {
      ws.onclose = null;
      ws.close();
      if (wsRef.current === ws) wsRef.current = null;
    };
  }, [project, instance, attempt]);

  return (
    <section aria-labelledby="console-h" className="console">
      <div className="section-header">
        <h2 id="console-h">Serial console</h2>
        <div className="console-status">
          <span className={`badge badge-${status === 'connected' ? 'ok' : status === 'connecting' ? 'busy' : 'bad'}`} role="status">
            {status}
          </span>
          <button type="button" className="btn btn-small" onClick={() => setAttempt((a) => a + 1)}>
            {status === 'disconnected' ? 'Reconnect' : 'Restart connection'}
          </button>
        </div>
      </div>
      {status === 'disconnected' && (
        <p className="muted console-detail">
          {detail}
          {runState && runState !== 'running' ? ` Instance state: ${runState}.` : ''}
        </p>
      )}
      <div className="terminal-host" ref={host} role="region" aria-label="Serial console terminal" />
      <p className="muted hint">
        Click the terminal (or tab into it) and type; keystrokes go to the guest. Shift+Tab, or Esc then Tab, leaves
        the terminal.
      </p>
    </section>
  );
}
