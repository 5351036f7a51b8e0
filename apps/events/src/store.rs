//! A durable JSON-lines file with group commit.
//!
//! Every append waits until its line is written *and* `fdatasync`ed; appends that arrive while
//! a sync is under way are written and synced together in the next batch, so one sync serves
//! many events under load. A batch that fails is cut back off the file, so a reader never
//! sees a torn line; a line torn by a crash (power loss, SIGKILL mid-write) is cut off when the
//! file is opened again, and the repair is logged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

/// The event could not be made durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("could not persist event to {path}: {reason}")]
pub struct StoreError {
    /// The file.
    pub path: String,
    /// The operating system's reason.
    pub reason: String,
}

struct Append {
    line: String,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Most lines written by one sync.
const MAX_BATCH: usize = 8192;

/// Handle to the writer thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct EventLog {
    tx: mpsc::Sender<Append>,
    path: Arc<PathBuf>,
}

/// What opening the file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of a torn last line that were cut off.
    pub repaired_bytes: u64,
    /// Complete lines in the file.
    pub lines: u64,
}

impl EventLog {
    /// Opens (creating it and its folder) the log at `path` and starts its writer thread. A
    /// file that cannot be opened now is retried at every batch; until then appends fail.
    pub fn open(path: impl Into<PathBuf>) -> (Self, Result<Opened, StoreError>) {
        let path = path.into();
        let (tx, rx) = mpsc::channel::<Append>(MAX_BATCH);
        let opened = open_and_repair(&path);
        let file = opened
            .as_ref()
            .ok()
            .map(|(f, _)| f.try_clone())
            .and_then(Result::ok);
        let p = path.clone();
        std::thread::Builder::new()
            .name("switchyard-event-log".into())
            .spawn(move || writer(p, file, rx))
            .expect("spawn the event log writer thread");
        (
            Self {
                tx,
                path: Arc::new(path),
            },
            opened.map(|(_, o)| o),
        )
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `line` (a newline is added) and returns once it is on disk.
    pub async fn append(&self, line: String) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let gone = || StoreError {
            path: self.path.display().to_string(),
            reason: "the writer stopped".into(),
        };
        self.tx
            .send(Append { line, done })
            .await
            .map_err(|_| gone())?;
        wait.await.map_err(|_| gone())?
    }
}

fn err(path: &Path, e: impl std::fmt::Display) -> StoreError {
    StoreError {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Opens for appending; cuts off a torn last line.
fn open_and_repair(path: &Path) -> Result<(File, Opened), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(path, e))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| err(path, e))?;
    let len = file.metadata().map_err(|e| err(path, e))?.len();
    let mut repaired = 0;
    let mut lines = 0;
    if len > 0 && file.metadata().map(|m| m.is_file()).unwrap_or(false) {
        let mut content = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(0)).map_err(|e| err(path, e))?;
        file.read_to_end(&mut content).map_err(|e| err(path, e))?;
        lines = content.iter().filter(|&&b| b == b'\n').count() as u64;
        if content.last() != Some(&b'\n') {
            let keep = content
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1) as u64;
            repaired = len - keep;
            file.set_len(keep).map_err(|e| err(path, e))?;
            file.sync_all().map_err(|e| err(path, e))?;
            tracing::warn!(target: "switchyard::events", path = %path.display(), bytes = repaired,
                "cut off a torn last line left by a crash");
        }
    }
    Ok((
        file,
        Opened {
            repaired_bytes: repaired,
            lines,
        },
    ))
}

fn writer(path: PathBuf, mut file: Option<File>, mut rx: mpsc::Receiver<Append>) {
    let mut batch: Vec<Append> = Vec::with_capacity(256);
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(a) => batch.push(a),
                Err(_) => break,
            }
        }
        buf.clear();
        for a in &batch {
            buf.extend_from_slice(a.line.as_bytes());
            buf.push(b'\n');
        }
        let result = write_batch(&path, &mut file, &buf);
        if result.is_err() {
            // Reopen next time: the folder may come back, the disk may get space.
            file = None;
        }
        for a in batch.drain(..) {
            let _ = a.done.send(result.clone());
        }
    }
}

fn write_batch(path: &Path, file: &mut Option<File>, buf: &[u8]) -> Result<(), StoreError> {
    if file.is_none() {
        *file = Some(open_and_repair(path)?.0);
    }
    let f = file.as_mut().ok_or_else(|| err(path, "not open"))?;
    let before = f.metadata().map(|m| m.len()).ok();
    let outcome = f.write_all(buf).and_then(|()| f.sync_data());
    if let Err(e) = outcome {
        // Take a partly written batch back off, so that no torn line stays behind.
        if let Some(len) = before {
            let _ = f.set_len(len);
        }
        return Err(err(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_are_lines_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/events.json");
        let (log, opened) = EventLog::open(&path);
        assert_eq!(
            opened.unwrap(),
            Opened {
                repaired_bytes: 0,
                lines: 0
            }
        );
        let mut tasks = Vec::new();
        for i in 0..500 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(format!("{{\"n\":{i}}}")).await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ns: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        ns.sort_unstable();
        assert_eq!(ns, (0..500).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_off_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.json");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        let (log, opened) = EventLog::open(&path);
        assert_eq!(
            opened.unwrap(),
            Opened {
                repaired_bytes: 5,
                lines: 2
            }
        );
        log.append("{\"d\":4}".into()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n{\"d\":4}\n"
        );
    }

    #[tokio::test]
    async fn a_full_disk_is_an_error_not_a_success() {
        let (log, _) = EventLog::open("/dev/full");
        let e = log.append("{}".into()).await.unwrap_err();
        assert!(e.reason.contains("No space left"), "{e}");
    }

    #[tokio::test]
    async fn an_impossible_folder_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let (log, opened) = EventLog::open(blocker.join("events.json"));
        assert!(opened.is_err());
        assert!(log.append("{}".into()).await.is_err());
    }
}
