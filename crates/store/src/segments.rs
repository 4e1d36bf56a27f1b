//! Event bodies in append-only segment files: the durable copy of every
//! event stored by the embedded backend.
//!
//! SQLite wrote each body twice, into the WAL and then into the database by
//! the checkpoint, as part of B-tree pages: with the body in the row,
//! `/v1/batch` spent half of its CPU there. Here a group's events are written
//! once, as records appended to the newest segment file in one write, and
//! that file is what the group's `fdatasync` makes durable. The `events`
//! table keeps a small row per event (ids, source, time and where its record
//! is), inserted in the background (see `pending_index`) and synced only
//! with the checkpoints: after a crash it lacks its newest rows, which
//! [`Segments::open`] finds again in the segments (see [`Recovered`]).
//!
//! Invariants the recovery relies on:
//! - A segment receives no byte before the one before it is synced, so only
//!   the newest one can end in records that were never acknowledged.
//! - Records are written at the offset where the valid ones end, so the
//!   acknowledged ones are a prefix of every segment.
//! - A record is erased (a user's deletion) in place, keeping its length and
//!   seq, and stays a valid record: a scan goes past it.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Size past which the next record starts a new segment.
pub(crate) const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// `payload length, CRC-32 of the payload`.
const HEADER: usize = 8;
/// `seq, flags, source_id, received_ms, message_id length, user_id length`.
const FIXED: usize = 8 + 1 + 8 + 8 + 4 + 4;
const NO_USER: u32 = u32::MAX;
const ERASED: u8 = 1;
const EXTENSION: &str = "seg";

/// An event as its record holds it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Record {
    pub seq: u64,
    pub source_id: i64,
    pub received_ms: i64,
    pub message_id: String,
    pub user_id: Option<String>,
    pub body: Vec<u8>,
}

/// Where a record is: its segment (named by the first seq it holds), its
/// offset and its length, header included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u64,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.{EXTENSION}"))
}

fn error(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// An event on its way into a segment.
pub(crate) struct NewRecord<'a> {
    pub seq: u64,
    pub source_id: i64,
    pub received_ms: i64,
    pub message_id: &'a str,
    pub user_id: Option<&'a str>,
    pub body: &'a [u8],
}

impl NewRecord<'_> {
    /// Bytes of the record, header included.
    fn len(&self) -> usize {
        HEADER + FIXED + self.message_id.len() + self.user_id.map_or(0, str::len) + self.body.len()
    }

    /// Appends the record to `out`.
    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(self.len());
        out.extend_from_slice(&((self.len() - HEADER) as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.push(0);
        out.extend_from_slice(&self.source_id.to_le_bytes());
        out.extend_from_slice(&self.received_ms.to_le_bytes());
        out.extend_from_slice(&(self.message_id.len() as u32).to_le_bytes());
        let user_len = self.user_id.map_or(NO_USER, |u| u.len() as u32);
        out.extend_from_slice(&user_len.to_le_bytes());
        out.extend_from_slice(self.message_id.as_bytes());
        out.extend_from_slice(self.user_id.unwrap_or("").as_bytes());
        out.extend_from_slice(self.body);
        let crc = crc32fast::hash(&out[start + HEADER..]);
        out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// The parts of a record found valid at the start of a buffer.
struct Parsed {
    /// Bytes of the record, header included.
    len: usize,
    seq: u64,
    erased: bool,
    message_id: std::ops::Range<usize>,
    /// `None` for an event with no `userId`.
    user_id: Option<std::ops::Range<usize>>,
    body: std::ops::Range<usize>,
}

/// Checks the record at the start of `bytes`: `None` at the end of the
/// valid records (end of data, a torn or corrupt record).
fn parse(bytes: &[u8]) -> Option<Parsed> {
    if bytes.len() < HEADER + FIXED {
        return None;
    }
    let payload = u32_at(bytes, 0) as usize;
    if payload < FIXED || bytes.len() < HEADER + payload {
        return None;
    }
    let len = HEADER + payload;
    if crc32fast::hash(&bytes[HEADER..len]) != u32_at(bytes, 4) {
        return None;
    }
    let p = HEADER;
    let id_len = u32_at(bytes, p + 25) as usize;
    let user_len = u32_at(bytes, p + 29);
    let user_bytes = if user_len == NO_USER {
        0
    } else {
        user_len as usize
    };
    let ids_end = p + FIXED + id_len + user_bytes;
    if ids_end > len {
        return None;
    }
    let message_id = p + FIXED..p + FIXED + id_len;
    Some(Parsed {
        len,
        seq: u64_at(bytes, p),
        erased: bytes[p + 8] == ERASED,
        user_id: (user_len != NO_USER).then_some(message_id.end..ids_end),
        message_id,
        body: ids_end..len,
    })
}

/// The event of a live record that [`parse`] found at the start of `bytes`.
/// Ids were written from Rust strings and are covered by the checksum.
fn decode(bytes: &[u8], parsed: Parsed) -> Record {
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&bytes[range]).into_owned();
    Record {
        seq: parsed.seq,
        source_id: u64_at(bytes, HEADER + 9) as i64,
        received_ms: u64_at(bytes, HEADER + 17) as i64,
        message_id: text(parsed.message_id),
        user_id: parsed.user_id.map(text),
        body: bytes[parsed.body].to_vec(),
    }
}

/// Bytes of a segment read at a time when it is scanned at open: reading a
/// whole segment (64 MiB when full) at once was most of a start's peak memory.
const SCAN_CHUNK: usize = 1 << 20;

/// Where the valid records of a segment file end, as [`scan`] found it.
struct Scanned {
    valid_end: u64,
    /// Whether anything but zeros follows them (a torn write).
    torn: bool,
    /// The file's length.
    len: u64,
}

/// Reads `file` (segment `segment`) from its start, `SCAN_CHUNK` bytes at a
/// time (more for a record that is longer), adds its live records past
/// `indexed_head` to `records`, and says where the valid ones end.
fn scan(
    file: &File,
    segment: u64,
    indexed_head: u64,
    records: &mut Vec<(Record, Location)>,
) -> io::Result<Scanned> {
    let len = file.metadata()?.len();
    let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK);
    // File offset of `buf[0]`, and of the end of what is read.
    let mut base = 0u64;
    let mut read_to = 0u64;
    let mut at = 0usize;
    loop {
        if let Some(parsed) = parse(&buf[at..]) {
            let record_len = parsed.len;
            if !parsed.erased && parsed.seq > indexed_head {
                let location = Location {
                    segment,
                    offset: base + at as u64,
                    len: parsed.len as u64,
                };
                records.push((decode(&buf[at..], parsed), location));
            }
            at += record_len;
            continue;
        }
        // No whole record here: either more must be read, or the valid
        // records end here (the end of the file, a torn or corrupt record).
        let rest = &buf[at..];
        let needed = if rest.len() < HEADER + FIXED {
            HEADER + FIXED
        } else {
            HEADER + u32_at(rest, 0) as usize
        };
        if rest.len() >= needed || base + (at + needed) as u64 > len {
            break;
        }
        buf.drain(..at);
        base += at as u64;
        at = 0;
        let want = (needed - buf.len()).max(SCAN_CHUNK);
        let read = read_more(file, &mut buf, read_to, want)?;
        if read == 0 {
            // Shorter than its length said (cut meanwhile): the end is here.
            break;
        }
        read_to += read;
    }
    let valid_end = base + at as u64;
    // Zeros past the records were written ahead of them; anything else is
    // a torn write.
    let mut torn = buf[at..].iter().any(|b| *b != 0);
    while !torn && read_to < len {
        buf.clear();
        let read = read_more(file, &mut buf, read_to, SCAN_CHUNK)?;
        if read == 0 {
            break;
        }
        read_to += read;
        torn = buf.iter().any(|b| *b != 0);
    }
    Ok(Scanned {
        valid_end,
        torn,
        len,
    })
}

/// Appends up to `want` bytes of `file` from `offset` to `buf`; returns how
/// many (0 at the end of the file).
fn read_more(file: &File, buf: &mut Vec<u8>, offset: u64, want: usize) -> io::Result<u64> {
    let start = buf.len();
    buf.resize(start + want, 0);
    let mut filled = 0;
    while filled < want {
        match file.read_at(&mut buf[start + filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(start + filled);
    Ok(filled as u64)
}

/// The newest segment as [`Segments::open`] found it.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Live records past the index's head, in order, with their locations
    /// (in the newest segment, or in the one or two before it).
    pub records: Vec<(Record, Location)>,
    /// The newest segment and where its valid records end: rows pointing
    /// at or past it are of events never acknowledged.
    pub segment: u64,
    pub valid_end: u64,
    /// Bytes cut off the end (a torn write of an unacknowledged group).
    pub truncated: u64,
}

/// The segment files of one data directory, and the records of the open
/// transaction not yet written.
pub(crate) struct Segments {
    dir: PathBuf,
    fsync: bool,
    active: Arc<File>,
    active_id: u64,
    /// Bytes of the active segment already written.
    written: u64,
    /// Records of the open transaction, written at commit.
    pending: Vec<u8>,
    /// Written since the sync thread last took the file.
    unsynced: bool,
    max_bytes: u64,
    /// Where the zeros written ahead of the records end (see
    /// [`Segments::zero_ahead`]).
    zeroed_to: u64,
    /// Where the active segment's pages may still be cached from (see
    /// [`Segments::drop_cached`]).
    cached_from: u64,
}

impl Segments {
    /// Opens the segments in `dir` (creating it), cuts a torn end off the
    /// newest one, and returns the live records past `indexed_head` (the
    /// index knows the others' fate: stored, or deleted since): those of
    /// the newest segment and of any older one they begin in. `next_seq`
    /// names the first segment when there is none.
    pub(crate) fn open(
        dir: &Path,
        fsync: bool,
        next_seq: u64,
        indexed_head: u64,
        max_bytes: u64,
    ) -> io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir).map_err(|e| error(dir, "cannot create", e))?;
        let mut ids = Self::ids(dir)?;
        ids.sort_unstable();
        let newest = ids.last().copied();
        let active_id = newest.unwrap_or(next_seq);
        let path = segment_path(dir, active_id);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| error(&path, "cannot open", e))?;
        let mut recovered = Recovered {
            segment: active_id,
            ..Default::default()
        };
        // The index lags the records (see `pending_index`): the ones past
        // its head may begin in an older segment than the newest, which
        // was synced whole before the next one was begun.
        let first = ids
            .iter()
            .rposition(|id| *id <= indexed_head + 1)
            .unwrap_or(0);
        for id in ids.iter().skip(first).filter(|id| **id != active_id) {
            let older = segment_path(dir, *id);
            std::fs::File::open(&older)
                .and_then(|f| scan(&f, *id, indexed_head, &mut recovered.records))
                .map_err(|e| error(&older, "cannot read", e))?;
        }
        let scanned = scan(&file, active_id, indexed_head, &mut recovered.records)
            .map_err(|e| error(&path, "cannot read", e))?;
        let at = scanned.valid_end;
        recovered.valid_end = at;
        recovered.truncated = if scanned.torn { scanned.len - at } else { 0 };
        if scanned.torn {
            file.set_len(at)
                .map_err(|e| error(&path, "cannot truncate", e))?;
            file.sync_all()
                .map_err(|e| error(&path, "cannot sync", e))?;
        }
        if newest.is_none() {
            sync_dir(dir)?;
        }
        let segments = Segments {
            dir: dir.to_path_buf(),
            fsync,
            active: Arc::new(file),
            active_id,
            written: at,
            zeroed_to: if scanned.torn { at } else { scanned.len },
            pending: Vec::new(),
            unsynced: false,
            max_bytes,
            cached_from: 0,
        };
        Ok((segments, recovered))
    }

    /// The ids (first seqs) of the segment files, in no order.
    fn ids(dir: &Path) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| error(dir, "cannot list", e))? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(&format!(".{EXTENSION}"))
                .and_then(|n| n.parse().ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Adds an event's record to the open transaction and says where it
    /// will be. May first start a new segment (syncing the full one).
    pub(crate) fn append(&mut self, record: NewRecord<'_>) -> io::Result<Location> {
        let len = record.len() as u64;
        let end = self.end().1;
        if end > 0 && end + len > self.max_bytes {
            self.roll(record.seq)?;
        }
        let offset = self.end().1;
        record.encode(&mut self.pending);
        Ok(Location {
            segment: self.active_id,
            offset,
            len,
        })
    }

    /// Writes what is pending, syncs the full segment, and starts a new one
    /// named `first_seq`: no byte reaches it before the last one is durable.
    fn roll(&mut self, first_seq: u64) -> io::Result<()> {
        self.write_pending()?;
        if self.fsync {
            self.active
                .sync_data()
                .map_err(|e| error(&self.path(), "cannot sync", e))?;
        }
        let path = segment_path(&self.dir, first_seq);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| error(&path, "cannot create", e))?;
        if self.fsync {
            sync_dir(&self.dir)?;
        }
        advise(&self.active, 0, 0, Advice::DontNeed);
        self.cached_from = 0;
        self.active = Arc::new(file);
        self.active_id = first_seq;
        self.written = 0;
        self.unsynced = false;
        self.zeroed_to = 0;
        Ok(())
    }

    /// Where the records end, pending ones included.
    pub(crate) fn end(&self) -> (u64, u64) {
        (self.active_id, self.written + self.pending.len() as u64)
    }

    /// Writes `zeros` just past the records when fewer than `lead` zeroed
    /// bytes are ahead of them, and returns the file to sync so that the
    /// blocks are allocated and written before records reach them: an
    /// `fdatasync` after overwriting written blocks has no metadata to
    /// write (an append waits for the inode too), about 110 µs instead of
    /// 180 on the test machine. Under the lock, so that no record is
    /// written where the zeros go.
    pub(crate) fn zero_ahead(&mut self, zeros: &[u8], lead: u64) -> io::Result<Option<Arc<File>>> {
        let end = self.end().1;
        let from = self.zeroed_to.max(end);
        if from >= end + lead || from + zeros.len() as u64 > self.max_bytes {
            return Ok(None);
        }
        self.active
            .write_all_at(zeros, from)
            .map_err(|e| error(&self.path(), "cannot write", e))?;
        self.zeroed_to = from + zeros.len() as u64;
        Ok(Some(self.active.clone()))
    }

    fn path(&self) -> PathBuf {
        segment_path(&self.dir, self.active_id)
    }

    /// Writes the records appended since the last write (the next sync of
    /// the segment covers them: [`Self::flush`] still hands it over).
    pub(crate) fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.active
            .write_all_at(&self.pending, self.written)
            .map_err(|e| error(&self.path(), "cannot write", e))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        self.unsynced = true;
        self.drop_cached();
        Ok(())
    }

    /// Lets the page cache drop the records more than [`CACHE_KEEP`] behind
    /// the newest (written and synced long ago; readers are mostly near the
    /// head and read ahead of themselves, see [`SegmentReader`]). A page
    /// cache that grew by every byte ingested cost `/v1/batch` a third of
    /// its rate after a few GB on the test machine: writing into ever new
    /// page-cache pages got several times slower.
    fn drop_cached(&mut self) {
        if self.written < self.cached_from + 2 * CACHE_KEEP {
            return;
        }
        let to = self.written - CACHE_KEEP;
        advise(
            &self.active,
            self.cached_from,
            to - self.cached_from,
            Advice::DontNeed,
        );
        self.cached_from = to;
    }

    /// Writes the open transaction's records, before it commits; returns
    /// the file to sync for it, if it wrote anything since the last call.
    pub(crate) fn flush(&mut self) -> io::Result<Option<Arc<File>>> {
        self.write_pending()?;
        Ok(std::mem::take(&mut self.unsynced).then(|| self.active.clone()))
    }

    /// Takes back the records appended from `end` (as [`Self::end`] gave
    /// it) on, when they are not written yet, so that they never are.
    pub(crate) fn discard_from(&mut self, end: (u64, u64)) {
        let (segment, offset) = end;
        if segment == self.active_id && offset >= self.written {
            self.pending.truncate((offset - self.written) as usize);
        }
    }

    /// Drops the records of a transaction that did not commit, when they
    /// were not written yet (written ones stay, see `Writer::commit`).
    pub(crate) fn discard_pending(&mut self) {
        self.pending.clear();
    }

    /// Erases records in place (a user's deletion): payload zeroed but for
    /// the seq, length kept, checksum renewed; then syncs what it touched.
    pub(crate) fn erase(&mut self, locations: &[Location]) -> io::Result<()> {
        // Pending records are written first, so that none is erased in the
        // buffer only to be written whole at commit.
        self.write_pending()?;
        let mut files: HashMap<u64, File> = HashMap::new();
        for loc in locations {
            let file = match files.entry(loc.segment) {
                std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
                std::collections::hash_map::Entry::Vacant(slot) => {
                    let path = segment_path(&self.dir, loc.segment);
                    match std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)
                    {
                        Ok(f) => slot.insert(f),
                        // A segment already removed holds nothing to erase.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(error(&path, "cannot open", e)),
                    }
                }
            };
            let mut record = vec![0; loc.len as usize];
            file.read_exact_at(&mut record, loc.offset)?;
            if parse(&record).is_none_or(|p| p.erased) {
                continue;
            }
            record[HEADER + 8..].fill(0);
            record[HEADER + 8] = ERASED;
            let crc = crc32fast::hash(&record[HEADER..]);
            record[4..HEADER].copy_from_slice(&crc.to_le_bytes());
            file.write_all_at(&record, loc.offset)?;
        }
        if self.fsync {
            for file in files.values() {
                file.sync_data()?;
            }
        }
        Ok(())
    }

    /// Removes the segments older than `oldest_kept` (the segment of the
    /// oldest event still indexed); never the active one. Returns how many.
    pub(crate) fn remove_before(&self, oldest_kept: u64) -> io::Result<u64> {
        let mut removed = 0;
        for id in Self::ids(&self.dir)? {
            if id < oldest_kept && id != self.active_id {
                let path = segment_path(&self.dir, id);
                std::fs::remove_file(&path).map_err(|e| error(&path, "cannot remove", e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// How far ahead of the records the zeroer keeps zeros, in what steps,
/// how often it looks, and the record rate (bytes per look) above which it
/// stops: under `/v1/batch` the groups are large, a sync's metadata is shared
/// by thousands of events, and zeros would double the bytes written. The
/// steps are small because each is synced on the same device as the
/// records: a group's sync that lands behind a step waits for it (a 1 MiB
/// step of new blocks took 3.8 ms here, a 128 KiB one under 1 ms).
const ZERO_LEAD: u64 = 4 << 20;
const ZERO_CHUNK: usize = 128 << 10;
const ZERO_TICK: std::time::Duration = std::time::Duration::from_millis(10);
const ZERO_MAX_RATE: u64 = 512 << 10;

/// A thread that writes zeros ahead of the records (see
/// [`Segments::zero_ahead`]) while the log grows slowly; dropping the
/// sender stops it.
pub(crate) fn spawn_zeroer(
    segments: Arc<std::sync::Mutex<Segments>>,
) -> io::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("store-zeroer".into())
        .spawn(move || {
            let zeros = vec![0u8; ZERO_CHUNK];
            let mut last = (0, 0);
            while let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(ZERO_TICK) {
                {
                    let Ok(segments) = segments.lock() else {
                        return;
                    };
                    let now = segments.end();
                    let previous = std::mem::replace(&mut last, now);
                    // A new segment: its rate is known at the next look.
                    if now.0 != previous.0 || now.1 - previous.1 > ZERO_MAX_RATE {
                        continue;
                    }
                }
                // Step by step up to the lead, each step synced before the
                // next is written, the lock let go in between.
                while let Err(TryRecvError::Empty) = stop_rx.try_recv() {
                    let step = {
                        let Ok(mut segments) = segments.lock() else {
                            return;
                        };
                        segments.zero_ahead(&zeros, ZERO_LEAD)
                    };
                    let file = match step {
                        Ok(Some(file)) => file,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "store: cannot write zeros ahead of the event records");
                            break;
                        }
                    };
                    if let Err(e) = file.sync_data() {
                        tracing::warn!(error = %e, "store: cannot sync the zeros ahead of the event records");
                        break;
                    }
                }
            }
        })?;
    Ok((stop_tx, handle))
}

/// Records kept in the page cache behind the newest.
const CACHE_KEEP: u64 = 32 << 20;
/// How far a reader asks the system to read ahead of it.
const READ_AHEAD: u64 = 4 << 20;

enum Advice {
    DontNeed,
    WillNeed,
}

/// Page-cache advice for `len` bytes of `file` from `offset` (0: to the
/// end). Advice only: a failure changes nothing but speed.
fn advise(file: &File, offset: u64, len: u64, advice: Advice) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let advice = match advice {
            Advice::DontNeed => libc::POSIX_FADV_DONTNEED,
            Advice::WillNeed => libc::POSIX_FADV_WILLNEED,
        };
        // SAFETY: a valid open descriptor; the call only advises the kernel.
        unsafe {
            libc::posix_fadvise(
                file.as_raw_fd(),
                offset as libc::off_t,
                len as libc::off_t,
                advice,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len, advice);
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| error(dir, "cannot sync", e))
}

/// Reads records for the read connections: each file opened once per
/// reader, and every record checked against its location and seq.
pub(crate) struct SegmentReader<'a> {
    dir: &'a Path,
    /// Each open segment, and how far it was asked to be read ahead.
    files: HashMap<u64, (File, u64)>,
}

impl<'a> SegmentReader<'a> {
    pub(crate) fn new(dir: &'a Path) -> Self {
        SegmentReader {
            dir,
            files: HashMap::new(),
        }
    }

    /// The body of the event `seq` at `loc`. An error of kind
    /// `InvalidData` means the record is not there (corrupt, erased — then
    /// its inner error is [`ErasedRecord`] — or of another event); any other
    /// is the file's.
    pub(crate) fn body(&mut self, seq: u64, loc: Location) -> io::Result<Vec<u8>> {
        let dir = self.dir;
        let (file, ahead) = match self.files.entry(loc.segment) {
            std::collections::hash_map::Entry::Occupied(f) => f.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let path = segment_path(dir, loc.segment);
                slot.insert((
                    File::open(&path).map_err(|e| error(&path, "cannot open", e))?,
                    0,
                ))
            }
        };
        // Records behind the newest 32 MiB are not kept cached: a reader
        // catching up asks for the next few MiB at once, not record by record.
        if loc.offset + loc.len > *ahead {
            advise(file, loc.offset, READ_AHEAD, Advice::WillNeed);
            *ahead = loc.offset + READ_AHEAD;
        }
        let mut bytes = vec![0; loc.len as usize];
        file.read_exact_at(&mut bytes, loc.offset)
            .map_err(|e| error(&segment_path(dir, loc.segment), "cannot read", e))?;
        match parse(&bytes) {
            Some(p) if !p.erased && p.seq == seq => {
                bytes.truncate(p.body.end);
                bytes.drain(..p.body.start);
                Ok(bytes)
            }
            Some(p) if p.erased => Err(io::Error::new(io::ErrorKind::InvalidData, ErasedRecord)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "no valid record of event {seq} at {} offset {}",
                    segment_path(dir, loc.segment).display(),
                    loc.offset
                ),
            )),
        }
    }
}

/// A record erased by a user deletion: gone on purpose, not damaged. Its
/// index row may outlive it when the deletion was cut short; a later
/// deletion of the same user removes the row.
#[derive(Debug)]
pub(crate) struct ErasedRecord;

impl std::fmt::Display for ErasedRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the record was erased by a user deletion")
    }
}

impl std::error::Error for ErasedRecord {}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("switchyard-seg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn append(s: &mut Segments, seq: u64, user: Option<&str>) -> Location {
        let body = format!(r#"{{"messageId":"m{seq}"}}"#);
        s.append(NewRecord {
            seq,
            source_id: 7,
            received_ms: 1000 + seq as i64,
            message_id: &format!("m{seq}"),
            user_id: user,
            body: body.as_bytes(),
        })
        .unwrap()
    }

    #[test]
    fn records_round_trip_and_survive_a_reopen() {
        let dir = temp_dir("round-trip");
        let (mut s, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert!(recovered.records.is_empty());
        let a = append(&mut s, 1, Some("u1"));
        let b = append(&mut s, 2, None);
        assert!(
            s.flush().unwrap().is_some(),
            "written: the file is to be synced"
        );
        assert!(s.flush().unwrap().is_none(), "nothing new: nothing to sync");
        let mut reader = SegmentReader::new(&dir);
        assert_eq!(reader.body(2, b).unwrap(), br#"{"messageId":"m2"}"#);
        assert!(reader.body(3, b).is_err(), "the seq is checked");
        drop(s);
        let (_, recovered) = Segments::open(&dir, true, 99, 0, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.segment, 1);
        assert_eq!(recovered.truncated, 0);
        let found: Vec<_> = recovered
            .records
            .iter()
            .map(|(r, l)| (r.seq, r.user_id.clone(), *l))
            .collect();
        assert_eq!(found, [(1, Some("u1".to_string()), a), (2, None, b)]);
        assert_eq!(recovered.records[0].0.source_id, 7);
        assert_eq!(recovered.records[0].0.received_ms, 1001);
        assert_eq!(recovered.records[0].0.message_id, "m1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_or_corrupt_end_is_cut_off_and_the_next_records_go_there() {
        let dir = temp_dir("torn");
        let (mut s, _) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        append(&mut s, 1, None);
        let second = append(&mut s, 2, None);
        s.flush().unwrap();
        drop(s);
        let path = segment_path(&dir, 1);
        // The second record's last byte flipped, then half a record more.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        bytes.extend_from_slice(&[42; 20]);
        std::fs::write(&path, &bytes).unwrap();
        let (mut s, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.records.len(), 1);
        assert_eq!(recovered.valid_end, second.offset);
        assert_eq!(recovered.truncated, second.len + 20);
        let again = append(&mut s, 2, None);
        assert_eq!(
            again.offset, second.offset,
            "written where the valid records end"
        );
        s.flush().unwrap();
        let mut reader = SegmentReader::new(&dir);
        assert_eq!(reader.body(2, again).unwrap(), br#"{"messageId":"m2"}"#);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The scan at open reads a segment a chunk at a time: records that
    /// straddle chunks, one longer than a chunk, and a torn byte far past
    /// the records (beyond a long run of zeros written ahead) are all found.
    #[test]
    fn the_scan_at_open_reads_in_chunks_and_misses_nothing() {
        let dir = temp_dir("chunks");
        let (mut s, _) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        let filler = "x".repeat(777);
        let big = vec![b'y'; SCAN_CHUNK * 2 + 13];
        let mut locations = Vec::new();
        for seq in 1..=4_000u64 {
            let body: &[u8] = if seq == 2_500 {
                &big
            } else {
                filler.as_bytes()
            };
            locations.push(
                s.append(NewRecord {
                    seq,
                    source_id: 7,
                    received_ms: 1000,
                    message_id: &format!("m{seq}"),
                    user_id: None,
                    body,
                })
                .unwrap(),
            );
        }
        s.flush().unwrap();
        let end = s.end().1;
        drop(s);
        assert!(end > 4 * SCAN_CHUNK as u64);
        let path = segment_path(&dir, 1);
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // Zeros written ahead, then one stray byte past the first chunk of them.
        file.set_len(end + 3 * SCAN_CHUNK as u64).unwrap();
        let (_, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.records.len(), 4_000);
        assert_eq!(recovered.truncated, 0, "zeros ahead are not a torn write");
        for ((record, location), (seq, expected)) in
            recovered.records.iter().zip((1u64..).zip(&locations))
        {
            assert_eq!((record.seq, location), (seq, expected));
        }
        assert_eq!(recovered.records[2_499].0.body, big);
        file.write_at(&[1], end + 2 * SCAN_CHUNK as u64 + 5)
            .unwrap();
        let (_, recovered) = Segments::open(&dir, true, 1, 3_000, SEGMENT_BYTES).unwrap();
        assert_eq!(
            recovered.records.len(),
            1_000,
            "only those past the index's head"
        );
        assert_eq!(recovered.valid_end, end);
        assert_eq!(
            recovered.truncated,
            3 * SCAN_CHUNK as u64,
            "the torn tail is cut off"
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn full_segments_roll_over_and_old_ones_are_removed() {
        let dir = temp_dir("roll");
        let (mut s, _) = Segments::open(&dir, false, 1, 0, 200).unwrap();
        let locations: Vec<_> = (1..=6).map(|seq| append(&mut s, seq, None)).collect();
        s.flush().unwrap();
        let segments: Vec<_> = locations.iter().map(|l| l.segment).collect();
        assert!(segments.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            segments.len() > 2 && segments[0] != segments[5],
            "{segments:?}"
        );
        let mut reader = SegmentReader::new(&dir);
        for (i, loc) in locations.iter().enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(
                reader.body(seq, *loc).unwrap(),
                format!(r#"{{"messageId":"m{seq}"}}"#).as_bytes()
            );
        }
        let removed = s.remove_before(locations[5].segment).unwrap();
        assert!(removed >= 1);
        assert!(reader_after_removal(&dir, locations[0]).is_err());
        let mut reader = SegmentReader::new(&dir);
        assert!(reader.body(6, locations[5]).is_ok());
        // Reopened: only the newest segment is scanned.
        drop(s);
        let (_, recovered) = Segments::open(&dir, false, 1, 0, 200).unwrap();
        assert_eq!(recovered.segment, locations[5].segment);
        assert!(recovered
            .records
            .iter()
            .all(|(r, _)| r.seq >= locations[5].segment));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn reader_after_removal(dir: &Path, loc: Location) -> io::Result<Vec<u8>> {
        SegmentReader::new(dir).body(1, loc)
    }

    /// The zeroer thread reaches its whole lead, step by step, with no
    /// step past it, and what it wrote reads back as zeros, not records.
    #[test]
    fn the_zeroer_keeps_the_whole_lead_ahead_in_small_steps() {
        let dir = temp_dir("zeroer");
        let (mut s, _) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        let first = append(&mut s, 1, None);
        s.flush().unwrap();
        let segments = Arc::new(std::sync::Mutex::new(s));
        let (stop, handle) = spawn_zeroer(segments.clone()).unwrap();
        let path = segment_path(&dir, 1);
        let wanted = first.len + ZERO_LEAD;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < wanted {
            assert!(
                std::time::Instant::now() < deadline,
                "the zeros never reached the lead"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(stop);
        handle.join().unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size < wanted + ZERO_CHUNK as u64,
            "no step past the lead: {size} bytes"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes[first.len as usize..].iter().all(|b| *b == 0));
        let (_, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert_eq!((recovered.records.len(), recovered.truncated), (1, 0));
    }

    /// Zeros written ahead are not a torn end: a reopen keeps them and
    /// writes the next records over them; a record torn inside them is cut.
    #[test]
    fn zeros_ahead_of_the_records_are_written_over() {
        let dir = temp_dir("zeros");
        let (mut s, _) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        let first = append(&mut s, 1, None);
        let zeros = vec![0; 4096];
        assert!(s.zero_ahead(&zeros, 8192).unwrap().is_some());
        assert!(s.zero_ahead(&zeros, 8192).unwrap().is_some());
        assert!(
            s.zero_ahead(&zeros, 8192).unwrap().is_none(),
            "8 KiB ahead already"
        );
        s.flush().unwrap();
        let second = append(&mut s, 2, None);
        assert_eq!(
            second.offset, first.len,
            "records go where the last one ended"
        );
        s.flush().unwrap();
        drop(s);
        let path = segment_path(&dir, 1);
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size >= first.len + 8192);
        let (mut s, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert_eq!((recovered.records.len(), recovered.truncated), (2, 0));
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            size,
            "the zeros stay"
        );
        let third = append(&mut s, 3, None);
        assert_eq!(third.offset, second.offset + second.len);
        s.flush().unwrap();
        drop(s);
        // Half of a fourth record lands past the zeros' start: torn.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = (third.offset + third.len) as usize;
        bytes[at + 10] = 7;
        std::fs::write(&path, &bytes).unwrap();
        let (_, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        assert_eq!(recovered.records.len(), 3);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            at as u64,
            "cut at the records' end"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn erased_records_lose_their_content_and_keep_the_scan_going() {
        let dir = temp_dir("erase");
        let (mut s, _) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        append(&mut s, 1, Some("keep"));
        let gone = s
            .append(NewRecord {
                seq: 2,
                source_id: 7,
                received_ms: 0,
                message_id: "m2",
                user_id: Some("gone-user"),
                body: br#"{"userId":"gone-user","email":"x@example.com"}"#,
            })
            .unwrap();
        append(&mut s, 3, Some("keep"));
        s.flush().unwrap();
        s.erase(&[gone]).unwrap();
        let bytes = std::fs::read(segment_path(&dir, 1)).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("gone-user") && !text.contains("x@example.com"));
        let mut reader = SegmentReader::new(&dir);
        assert!(reader.body(2, gone).is_err());
        drop(s);
        let (_, recovered) = Segments::open(&dir, true, 1, 0, SEGMENT_BYTES).unwrap();
        let seqs: Vec<_> = recovered.records.iter().map(|(r, _)| r.seq).collect();
        assert_eq!(
            seqs,
            [1, 3],
            "the erased record is skipped, the one after it kept"
        );
        assert_eq!(recovered.truncated, 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
