//! One VMM's serial console: a bounded ring buffer of what the guest wrote, live subscribers,
//! and the input users type.
//!
//! Every byte the guest ever wrote has an absolute offset, counted from 0 since the VMM was
//! created. The ring keeps only the newest [`CONSOLE_BUFFER_BYTES`]: anything older is gone,
//! and a read that asks for it gets what remains (the returned offsets say where that starts).
//!
//! A [`ConsoleStream`] starts at a point in the history and then carries live output, with no
//! gap and no duplicate: it is created under the same lock that [`SerialConsole::record_output`]
//! holds while it appends and broadcasts, so every byte is either in its initial history or in
//! a live chunk, never both. A subscriber that falls behind the live channel catches up from the
//! ring (bytes the ring no longer holds are skipped; that is the only way a stream can lose
//! data, and only a reader more than a whole buffer behind can).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc};

/// How much console output a VMM keeps: the newest 1 MiB.
pub(crate) const CONSOLE_BUFFER_BYTES: usize = 1024 * 1024;

/// How much a history read returns when the caller sets no `max_bytes` (as Propolis).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 16 * 1024;

/// Live chunks buffered per subscriber before it counts as lagging (and catches up from the
/// ring).
const LIVE_CHUNKS: usize = 256;

/// Typed input waiting for the backend.
const INPUT_CHUNKS: usize = 64;

/// Where a history read or a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsoleOffset {
    /// This absolute offset (bytes since the VMM was created). Past the end: nothing yet (a
    /// stream waits there). Before the oldest byte still held: from the oldest byte held.
    FromStart(u64),
    /// This many bytes before the newest byte; more than is held: from the oldest byte held.
    MostRecent(u64),
}

/// A live chunk: its absolute offset and its bytes.
type Chunk = (u64, Arc<[u8]>);

struct Ring {
    /// The newest bytes, at most `capacity`.
    bytes: VecDeque<u8>,
    capacity: usize,
    /// Bytes ever written: the absolute offset one past the newest byte.
    end: u64,
    /// `None` once closed.
    live: Option<broadcast::Sender<Chunk>>,
}

impl Ring {
    /// The absolute offset of the oldest byte held.
    fn start(&self) -> u64 {
        self.end - self.bytes.len() as u64
    }

    fn resolve(&self, from: ConsoleOffset) -> u64 {
        let wanted = match from {
            ConsoleOffset::FromStart(offset) => offset.min(self.end),
            ConsoleOffset::MostRecent(back) => self.end.saturating_sub(back),
        };
        wanted.max(self.start())
    }

    /// Up to `max` bytes from absolute offset `from` (which `resolve` put in range).
    fn copy(&self, from: u64, max: u64) -> Vec<u8> {
        let skip = (from - self.start()) as usize;
        let len = (self.bytes.len() - skip).min(usize::try_from(max).unwrap_or(usize::MAX));
        let (a, b) = self.bytes.as_slices();
        let mut out = Vec::with_capacity(len);
        if skip < a.len() {
            let take = (a.len() - skip).min(len);
            out.extend_from_slice(&a[skip..skip + take]);
            out.extend_from_slice(&b[..len - take]);
        } else {
            let skip = skip - a.len();
            out.extend_from_slice(&b[skip..skip + len]);
        }
        out
    }

    fn append(&mut self, data: &[u8]) {
        // Only the newest `capacity` bytes of `data` can stay.
        let keep = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + keep.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(keep);
        self.end += data.len() as u64;
    }
}

/// One VMM's serial console. The backend writes output with [`record_output`] and reads input
/// from [`take_input`]; the API reads history ([`read`]) and streams ([`stream`]) and sends
/// input ([`send_input`]). Shared as an `Arc`: streams keep it alive after the VMM is gone.
///
/// [`record_output`]: SerialConsole::record_output
/// [`take_input`]: SerialConsole::take_input
/// [`read`]: SerialConsole::read
/// [`stream`]: SerialConsole::stream
/// [`send_input`]: SerialConsole::send_input
pub(crate) struct SerialConsole {
    ring: Mutex<Ring>,
    input: mpsc::Sender<Vec<u8>>,
    input_receiver: Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
}

impl SerialConsole {
    /// An empty console keeping the newest [`CONSOLE_BUFFER_BYTES`].
    pub(crate) fn new() -> Arc<SerialConsole> {
        SerialConsole::with_capacity(CONSOLE_BUFFER_BYTES)
    }

    /// An empty console keeping the newest `capacity` bytes (at least 1).
    pub(crate) fn with_capacity(capacity: usize) -> Arc<SerialConsole> {
        let capacity = capacity.max(1);
        let (live, _) = broadcast::channel(LIVE_CHUNKS);
        let (input, input_receiver) = mpsc::channel(INPUT_CHUNKS);
        Arc::new(SerialConsole {
            ring: Mutex::new(Ring {
                bytes: VecDeque::with_capacity(capacity.min(64 * 1024)),
                capacity,
                end: 0,
                live: Some(live),
            }),
            input,
            input_receiver: Mutex::new(Some(input_receiver)),
        })
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Every change under the lock is one append: a poisoned ring is still consistent.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the guest wrote to its console.
    pub(crate) fn record_output(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut ring = self.ring();
        let offset = ring.end;
        ring.append(bytes);
        if let Some(live) = &ring.live {
            // No subscriber is not an error.
            let _ = live.send((offset, Arc::from(bytes)));
        }
    }

    /// The backend takes the input side once; bytes users type arrive here.
    pub(crate) fn take_input(&self) -> Option<mpsc::Receiver<Vec<u8>>> {
        self.input_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// The VMM is gone: live streams end (history stays readable).
    pub(crate) fn close(&self) {
        self.ring().live = None;
        // Input nobody will read: drop it, and refuse more.
        self.input_receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Whether [`close`](SerialConsole::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.ring().live.is_none()
    }

    /// At most `max_bytes` (default [`DEFAULT_MAX_BYTES`]) of history from `from`, and the
    /// absolute offset one past the last byte returned (the `from_start` to read on from).
    /// Output older than the ring holds is gone: a read that starts there gets what remains,
    /// which starts at `last_byte_offset - data.len()`.
    pub(crate) fn read(&self, from: ConsoleOffset, max_bytes: Option<u64>) -> (Vec<u8>, u64) {
        let ring = self.ring();
        let start = ring.resolve(from);
        let data = ring.copy(start, max_bytes.unwrap_or(DEFAULT_MAX_BYTES));
        let end = start + data.len() as u64;
        (data, end)
    }

    /// A stream of everything from `from` on: first the history the ring still holds, then
    /// live output as the guest writes it, until the console is closed.
    pub(crate) fn stream(self: &Arc<Self>, from: ConsoleOffset) -> ConsoleStream {
        let ring = self.ring();
        let start = ring.resolve(from);
        let backlog = ring.copy(start, u64::MAX);
        let next = start + backlog.len() as u64;
        // Subscribed under the lock that appends: every later chunk starts at `next`.
        let live = ring.live.as_ref().map(broadcast::Sender::subscribe);
        drop(ring);
        ConsoleStream {
            console: Arc::clone(self),
            backlog: (!backlog.is_empty()).then_some((start, backlog)),
            next,
            live,
        }
    }

    /// Sends typed bytes to the guest. Fails once the console is closed.
    pub(crate) async fn send_input(&self, bytes: Vec<u8>) -> Result<(), ConsoleClosed> {
        if self.is_closed() {
            return Err(ConsoleClosed);
        }
        self.input.send(bytes).await.map_err(|_| ConsoleClosed)
    }
}

/// The console was closed: its VMM is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the VMM is gone; its console is closed")]
pub(crate) struct ConsoleClosed;

/// A console's output from a point in its history on, then live. See [`SerialConsole::stream`].
pub(crate) struct ConsoleStream {
    console: Arc<SerialConsole>,
    /// History not yet handed out, with its absolute offset.
    backlog: Option<(u64, Vec<u8>)>,
    /// The absolute offset of the next byte this stream hands out.
    next: u64,
    /// `None` once the console was closed (at subscription, or since).
    live: Option<broadcast::Receiver<Chunk>>,
}

impl ConsoleStream {
    /// The next bytes in order with their absolute offset, or `None` once the console is
    /// closed and everything written before was handed out.
    pub(crate) async fn next(&mut self) -> Option<(u64, Vec<u8>)> {
        if let Some(backlog) = self.backlog.take() {
            return Some(backlog);
        }
        loop {
            let live = self.live.as_mut()?;
            match live.recv().await {
                Ok((offset, bytes)) => {
                    let end = offset + bytes.len() as u64;
                    if end <= self.next {
                        continue; // already handed out (after a catch-up)
                    }
                    // A chunk never starts after `next` (chunks are consecutive and we
                    // subscribed at `next`); after a catch-up it may start before it.
                    let skip = self.next.saturating_sub(offset) as usize;
                    let start = offset + skip as u64;
                    self.next = end;
                    return Some((start, bytes[skip..].to_vec()));
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Missed chunks: take what they held from the ring (bytes it no longer
                    // holds are gone). Later chunks that overlap are trimmed above.
                    let ring = self.console.ring();
                    let start = ring.resolve(ConsoleOffset::FromStart(self.next));
                    let data = ring.copy(start, u64::MAX);
                    drop(ring);
                    if data.is_empty() {
                        continue;
                    }
                    self.next = start + data.len() as u64;
                    return Some((start, data));
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.live = None;
                    return None;
                }
            }
        }
    }

    /// The absolute offset of the next byte this stream will hand out.
    #[cfg(test)]
    pub(crate) fn next_offset(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConsoleOffset::*;

    fn text(read: (Vec<u8>, u64)) -> (String, u64) {
        (String::from_utf8(read.0).unwrap(), read.1)
    }

    #[test]
    fn an_empty_console_reads_nothing_at_offset_zero() {
        let console = SerialConsole::with_capacity(16);
        assert_eq!(console.read(FromStart(0), None), (vec![], 0));
        assert_eq!(console.read(FromStart(11), Some(5)), (vec![], 0));
        assert_eq!(console.read(MostRecent(11), Some(5)), (vec![], 0));
    }

    #[test]
    fn reads_by_offset_before_the_ring_wraps() {
        let console = SerialConsole::with_capacity(64);
        console.record_output(b"This is an ");
        console.record_output(b"example of text.");
        assert_eq!(
            text(console.read(FromStart(0), None)),
            ("This is an example of text.".into(), 27)
        );
        assert_eq!(
            text(console.read(FromStart(8), Some(5))),
            ("an ex".into(), 13)
        );
        // Past the end: nothing, and the end offset.
        assert_eq!(
            text(console.read(FromStart(100), Some(10))),
            ("".into(), 27)
        );
        assert_eq!(
            text(console.read(MostRecent(10), Some(4))),
            ("e of".into(), 21)
        );
        assert_eq!(
            text(console.read(MostRecent(10), None)),
            ("e of text.".into(), 27)
        );
        // More than was ever written: from the beginning.
        assert_eq!(
            text(console.read(MostRecent(100), Some(4))),
            ("This".into(), 4)
        );
        assert_eq!(text(console.read(MostRecent(0), None)), ("".into(), 27));
        assert_eq!(text(console.read(FromStart(0), Some(0))), ("".into(), 0));
    }

    #[test]
    fn the_ring_wraps_and_keeps_absolute_offsets() {
        let console = SerialConsole::with_capacity(10);
        for chunk in [&b"0123"[..], b"4567", b"89ab", b"cdef"] {
            console.record_output(chunk);
        }
        // 16 bytes written, the newest 10 held: offsets 6..16.
        assert_eq!(
            text(console.read(FromStart(6), None)),
            ("6789abcdef".into(), 16)
        );
        // From before what remains: what remains, starting at 6 (= 16 - 10).
        let (data, end) = console.read(FromStart(0), None);
        assert_eq!((data.as_slice(), end), (&b"6789abcdef"[..], 16));
        assert_eq!(end - data.len() as u64, 6);
        assert_eq!(text(console.read(FromStart(2), Some(3))), ("678".into(), 9));
        // Most recent more than the buffer holds: what remains.
        assert_eq!(
            text(console.read(MostRecent(1000), None)),
            ("6789abcdef".into(), 16)
        );
        assert_eq!(text(console.read(MostRecent(3), None)), ("def".into(), 16));
        // Reads across the physical wrap point of the deque.
        assert_eq!(
            text(console.read(FromStart(9), Some(5))),
            ("9abcd".into(), 14)
        );
        // A single write larger than the whole ring keeps its tail.
        console.record_output(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ");
        assert_eq!(
            text(console.read(FromStart(0), None)),
            ("QRSTUVWXYZ".into(), 42)
        );
        assert_eq!(text(console.read(FromStart(40), None)), ("YZ".into(), 42));
    }

    #[test]
    fn every_offset_and_length_matches_a_reference() {
        // Random-ish writes against a Vec holding everything: every read agrees.
        let console = SerialConsole::with_capacity(37);
        let mut all = Vec::new();
        let mut seed = 7u32;
        for _ in 0..200 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let len = (seed >> 16) as usize % 23;
            let chunk: Vec<u8> = (0..len).map(|i| (all.len() + i) as u8).collect();
            console.record_output(&chunk);
            all.extend_from_slice(&chunk);
            let end = all.len() as u64;
            let start = end.saturating_sub(37);
            for from in [0, start, start + 1, end / 2, end, end + 3] {
                for max in [0u64, 1, 5, 100] {
                    let (data, last) = console.read(FromStart(from), Some(max));
                    let first = from.clamp(start, end);
                    let expected = &all[first as usize..(first + max).min(end) as usize];
                    assert_eq!(data, expected, "from {from} max {max} end {end}");
                    assert_eq!(last, first + expected.len() as u64);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_stream_carries_history_then_live_output_then_ends_on_close() {
        let console = SerialConsole::with_capacity(64);
        console.record_output(b"boot\r\n");
        let mut stream = console.stream(MostRecent(3));
        console.record_output(b"more");
        assert_eq!(stream.next().await, Some((3, b"t\r\n".to_vec())));
        assert_eq!(stream.next().await, Some((6, b"more".to_vec())));
        console.close();
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.next().await, None);
        // History stays readable; a stream opened now gets it and ends.
        assert_eq!(text(console.read(FromStart(0), None)).0, "boot\r\nmore");
        let mut late = console.stream(FromStart(0));
        assert_eq!(late.next().await, Some((0, b"boot\r\nmore".to_vec())));
        assert_eq!(late.next().await, None);
        assert!(console.send_input(b"x".to_vec()).await.is_err());
    }

    #[tokio::test]
    async fn a_stream_from_the_future_waits_there() {
        let console = SerialConsole::with_capacity(64);
        console.record_output(b"abc");
        let mut stream = console.stream(FromStart(1000));
        assert_eq!(stream.next_offset(), 3);
        console.record_output(b"de");
        assert_eq!(stream.next().await, Some((3, b"de".to_vec())));
    }

    #[tokio::test]
    async fn a_lagging_stream_catches_up_from_the_ring_without_gaps_or_duplicates() {
        let console = SerialConsole::with_capacity(100_000);
        let mut stream = console.stream(FromStart(0));
        let mut expected = Vec::new();
        // Far more chunks than the live channel holds.
        for i in 0..(LIVE_CHUNKS * 3) {
            let chunk = format!("{i},");
            console.record_output(chunk.as_bytes());
            expected.extend_from_slice(chunk.as_bytes());
        }
        console.close();
        let mut got = Vec::new();
        while let Some((offset, bytes)) = stream.next().await {
            assert_eq!(offset, got.len() as u64);
            got.extend(bytes);
        }
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_stream_behind_the_whole_ring_skips_only_what_is_gone() {
        let console = SerialConsole::with_capacity(10);
        let mut stream = console.stream(FromStart(0));
        for i in 0..(LIVE_CHUNKS * 2) {
            console.record_output(&[b'a' + (i % 26) as u8]);
        }
        console.close();
        let (offset, bytes) = stream.next().await.unwrap();
        // The oldest still held.
        let end = (LIVE_CHUNKS * 2) as u64;
        assert!(offset >= end - 10, "{offset}");
        let mut next = offset + bytes.len() as u64;
        while let Some((offset, bytes)) = stream.next().await {
            assert_eq!(offset, next);
            next += bytes.len() as u64;
        }
        assert_eq!(next, end);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn subscribing_while_writing_has_no_gap_or_duplicate() {
        let console = SerialConsole::with_capacity(1 << 20);
        let writer = {
            let console = Arc::clone(&console);
            tokio::task::spawn_blocking(move || {
                for i in 0..20_000u32 {
                    console.record_output(format!("<{i}>").as_bytes());
                }
                console.close();
            })
        };
        let mut readers = Vec::new();
        for r in 0..16u64 {
            let console = Arc::clone(&console);
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_micros(r * 300)).await;
                let mut stream = console.stream(MostRecent(r * 7));
                let mut first = None;
                let mut got = Vec::new();
                while let Some((offset, bytes)) = stream.next().await {
                    let at = *first.get_or_insert(offset);
                    assert_eq!(offset, at + got.len() as u64, "reader {r}: gap or overlap");
                    got.extend(bytes);
                }
                (first.unwrap_or(0), got)
            }));
        }
        writer.await.unwrap();
        let (all, end) = console.read(FromStart(0), Some(u64::MAX));
        assert_eq!(end as usize, all.len());
        for reader in readers {
            let (first, got) = reader.await.unwrap();
            if got.is_empty() {
                continue; // it subscribed after the close, at the end
            }
            let first = first as usize;
            assert_eq!(
                got,
                all[first..],
                "a reader from {first} saw something else"
            );
        }
    }

    #[tokio::test]
    async fn input_goes_to_whoever_took_it_once() {
        let console = SerialConsole::new();
        let mut input = console.take_input().unwrap();
        assert!(console.take_input().is_none());
        console.send_input(b"ls\r".to_vec()).await.unwrap();
        assert_eq!(input.recv().await.unwrap(), b"ls\r");
        console.close();
        assert_eq!(console.send_input(b"x".to_vec()).await, Err(ConsoleClosed));
    }
}
