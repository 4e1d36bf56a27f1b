//! The durable bare handler (`switchyard bench --bare-server --durable-dir D`):
//! the bare handler plus the least a server can do to answer only once a
//! body is on disk. Each body is copied into one open buffer; a sync thread
//! writes the buffer and `fdatasync`s it while the next one fills (group
//! commit), then answers the whole group. No parsing, no validation, no
//! index, no deduplication, no reading back: the writes go round a
//! preallocated 64 MiB ring, so that every sync overwrites written blocks
//! and never has an inode to write.
//!
//! It is a bound, not a store: what switchyard reaches against it says what
//! its own work costs on this machine, and what this machine's syncs cost
//! any durable server.

use axum::body::Bytes;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use tokio::sync::oneshot;

/// The size of the ring the bodies are written round.
const RING_BYTES: u64 = 64 << 20;

/// The group being filled.
#[derive(Default)]
struct Open {
    bytes: Vec<u8>,
    waiters: Vec<oneshot::Sender<()>>,
}

/// Shared by the handlers and the sync thread.
pub struct DurableLog {
    open: Mutex<Open>,
    filled: Condvar,
}

impl DurableLog {
    /// Preallocates the ring in `dir` (written with zeros and synced) and
    /// starts the sync thread.
    pub fn start(dir: &Path) -> anyhow::Result<Arc<DurableLog>> {
        std::fs::create_dir_all(dir)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("ring"))?;
        let zeros = vec![0u8; 1 << 20];
        for chunk in 0..RING_BYTES / zeros.len() as u64 {
            file.write_all_at(&zeros, chunk * zeros.len() as u64)?;
        }
        file.sync_all()?;
        let log = Arc::new(DurableLog {
            open: Mutex::new(Open::default()),
            filled: Condvar::new(),
        });
        let syncer = log.clone();
        std::thread::Builder::new()
            .name("bare-sync".into())
            .spawn(move || syncer.sync_loop(&file))?;
        Ok(log)
    }

    /// Resolves once `body` is durable.
    pub async fn append(&self, body: &[u8]) -> bool {
        let (tx, rx) = oneshot::channel();
        {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.bytes
                .extend_from_slice(&(body.len() as u32).to_le_bytes());
            open.bytes.extend_from_slice(body);
            open.waiters.push(tx);
        }
        self.filled.notify_one();
        rx.await.is_ok()
    }

    /// Writes and syncs each filled group, then answers it; a failed write
    /// or sync drops the waiters, which answer 503.
    fn sync_loop(&self, file: &File) {
        let mut offset = 0u64;
        loop {
            let group = {
                let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
                while open.waiters.is_empty() {
                    open = self
                        .filled
                        .wait(open)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                std::mem::take(&mut *open)
            };
            let written =
                write_ring(file, &mut offset, &group.bytes).and_then(|()| file.sync_data());
            if written.is_ok() {
                for waiter in group.waiters {
                    let _ = waiter.send(());
                }
            }
        }
    }
}

/// Writes `bytes` at `offset` round the ring (wrapping at its end).
fn write_ring(file: &File, offset: &mut u64, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let room = (RING_BYTES - *offset) as usize;
        let (now, rest) = bytes.split_at(bytes.len().min(room));
        file.write_all_at(now, *offset)?;
        *offset = (*offset + now.len() as u64) % RING_BYTES;
        bytes = rest;
    }
    Ok(())
}

/// The durable bare handler's route: `{"success":true}` once the body is
/// synced, 503 if it could not be.
pub async fn handle(
    axum::extract::State(log): axum::extract::State<Arc<DurableLog>>,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if log.append(&body).await {
        super::receiver::success()
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that reaches the ring's end goes on at its start.
    #[test]
    fn writes_wrap_round_the_ring() {
        let path = std::env::temp_dir().join(format!("switchyard-ring-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut offset = RING_BYTES - 3;
        write_ring(&file, &mut offset, b"abcdef").unwrap();
        assert_eq!(offset, 3);
        let mut tail = [0u8; 3];
        file.read_exact_at(&mut tail, RING_BYTES - 3).unwrap();
        let mut head = [0u8; 3];
        file.read_exact_at(&mut head, 0).unwrap();
        assert_eq!((&tail, &head), (b"abc", b"def"));
        assert_eq!(
            file.metadata().unwrap().len(),
            RING_BYTES,
            "never past the ring"
        );
        let _ = std::fs::remove_file(&path);
    }
}
