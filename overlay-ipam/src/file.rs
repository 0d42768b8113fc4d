//! File-backed pools: the in-memory allocator of [`crate::pools`] whose
//! state is written to a JSON file after every change.
//!
//! Writes are atomic (temporary file in the same directory, `fsync`,
//! `rename`, `fsync` of the directory), so a crash leaves either the old or
//! the new state, never a torn file. A file that is not an overlay pool
//! state file (corrupt, or something else entirely) is reported and never
//! overwritten.
//!
//! One process owns a state file: the state is read at open and kept in
//! memory, so a second writer would hand out addresses twice. The backend
//! therefore holds an exclusive lock on a sidecar file, `<stateFile>.lock`
//! (the state file itself is replaced on every write, so it cannot carry the
//! lock), from [`FileBackend::open`] until it is dropped; the lock file names
//! the holder's pid. A second open, in this process or another, is refused:
//! embedded pools support one controller replica.
//!
//! Held entries (released with a hold-down) are stored with their expiry as
//! an RFC 3339 `held_until`; state files written before hold-downs existed
//! have no such field and load as they are. (An older version reading a
//! newer file ignores the field and sees held addresses as still in use by
//! their departed owner, which its orphan collection releases: never an
//! address handed out twice.)

use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use overlay_core::IpamError;
use serde::{Deserialize, Serialize};

use crate::embedded::{EmbeddedBackend, Store};
use crate::pools::{Engine, Entry, PoolsConfig};

const FORMAT: &str = "overlay-ipam-pools";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateDocument {
    format: String,
    version: u32,
    reservations: Vec<Entry>,
}

/// An [`IpamBackend`](overlay_core::IpamBackend) over pools whose state
/// persists in a file, with hold-downs like
/// [`MemoryBackend`](crate::memory::MemoryBackend). Holds the state file's
/// lock (see the [module docs](self)) until dropped.
pub type FileBackend = EmbeddedBackend<StateFile>;

/// The store of a [`FileBackend`]: the state file, written after every
/// change, and its lock.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    lock: StateLock,
}

impl Store for StateFile {
    const BACKEND: &'static str = "file";
    const PERSISTENT: bool = true;

    async fn save(&self, entries: Vec<Entry>) -> Result<(), IpamError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, entries))
            .await
            .map_err(|e| storage(&self.path, format!("writer task failed: {e}")))?
    }
}

impl FileBackend {
    /// Opens (or prepares to create) the state file at `path`. A missing
    /// file means "nothing reserved yet"; it is created on the first
    /// reservation. A file that exists but is not an overlay pool state
    /// file is an [`IpamError::Storage`] error, and the file is left alone.
    /// Reservations in the file whose pool is no longer configured are kept
    /// (listed, found by `lookup_all` and released, never allocated from);
    /// their gateway is unknown.
    ///
    /// Takes the exclusive lock `<path>.lock` first: when another
    /// `FileBackend`, in this process or another, has the state file open,
    /// this is an [`IpamError::Storage`] error naming the holder's pid.
    pub fn open(path: impl Into<PathBuf>, config: &PoolsConfig) -> Result<Self, IpamError> {
        let path = path.into();
        let mut engine = Engine::new(config)?;
        let dir = parent_dir(&path);
        if !dir.is_dir() {
            return Err(storage(
                &path,
                format!(
                    "directory {} does not exist; create it or pick another stateFile",
                    dir.display()
                ),
            ));
        }
        let lock = StateLock::acquire(&path)?;
        match std::fs::read(&path) {
            Ok(bytes) => engine.set_entries(parse_state(&bytes).map_err(|why| {
                storage(
                    &path,
                    format!(
                        "{why}; not an overlay pool state file, refusing to use or overwrite it (move it away or point stateFile elsewhere)"
                    ),
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(storage(&path, format!("cannot read: {e}"))),
        }
        Ok(Self::with_store(StateFile { path, lock }, engine))
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// The lock file beside the state file (`<stateFile>.lock`), locked
    /// while this backend lives.
    pub fn lock_path(&self) -> &Path {
        &self.store.lock.path
    }
}

/// Reads the state file at `path` as it is now, without taking its lock and
/// without changing it: the entries a [`FileBackend`] over it would start
/// from (for tools such as `overlayctl ipam migrate`). A missing or
/// unreadable file, or one that is not an overlay pool state file, is an
/// [`IpamError::Storage`] error naming the file and the problem.
pub fn read_state(path: &Path) -> Result<Vec<Entry>, IpamError> {
    let bytes = std::fs::read(path).map_err(|e| storage(path, format!("cannot read: {e}")))?;
    parse_state(&bytes)
        .map_err(|why| storage(path, format!("{why}; not an overlay pool state file")))
}

/// The exclusive lock on `<stateFile>.lock`, released when dropped (the
/// file is closed; it stays on disk, since removing it would let two
/// processes lock different files of the same name).
#[derive(Debug)]
struct StateLock {
    path: PathBuf,
    _file: File,
}

impl StateLock {
    fn acquire(state: &Path) -> Result<Self, IpamError> {
        let mut name = OsString::from(state.as_os_str());
        name.push(".lock");
        let path = PathBuf::from(name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                storage(
                    state,
                    format!("cannot open the lock file {}: {e}", path.display()),
                )
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) if pid == std::process::id() => {
                        format!("this process (pid {pid}) already has it open")
                    }
                    Ok(pid) => format!("another controller process (pid {pid}) holds it"),
                    Err(_) => "another controller process holds it (its pid is not recorded yet)"
                        .to_string(),
                };
                return Err(storage(
                    state,
                    format!(
                        "state file is locked: {holder} (lock file {}). Embedded pools support one controller replica: run the controller with replicas: 1 and strategy: Recreate, stop the other process, or use phpIPAM for several replicas",
                        path.display()
                    ),
                ));
            }
            Err(TryLockError::Error(e)) => {
                return Err(storage(
                    state,
                    format!("cannot lock {}: {e}", path.display()),
                ));
            }
        }
        // Ours: name this process for whoever is refused next.
        let pid = std::process::id();
        if let Err(e) = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{pid}"))
        {
            tracing::warn!(lock = %path.display(), error = %e, "locked, but cannot record the pid in the lock file");
        }
        Ok(Self { path, _file: file })
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn storage(path: &Path, message: impl Into<String>) -> IpamError {
    IpamError::Storage {
        backend: "file".into(),
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The entries of a state file, or why it is not one.
fn parse_state(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
    match value.get("format").and_then(|f| f.as_str()) {
        Some(FORMAT) => {}
        Some(other) => return Err(format!("format is {other:?}, expected {FORMAT:?}")),
        None => return Err("no \"format\" field".into()),
    }
    let state: StateDocument =
        serde_json::from_value(value).map_err(|e| format!("malformed ({e})"))?;
    if state.version != VERSION {
        return Err(format!(
            "version {} is not supported (expected {VERSION})",
            state.version
        ));
    }
    Ok(state.reservations)
}

fn write_atomic(path: &Path, entries: Vec<Entry>) -> Result<(), IpamError> {
    let state = StateDocument {
        format: FORMAT.into(),
        version: VERSION,
        reservations: entries,
    };
    let bytes = serde_json::to_vec_pretty(&state)
        .map_err(|e| storage(path, format!("cannot encode state: {e}")))?;
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".overlay-ipam-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| {
            storage(
                path,
                format!("cannot create a temporary file in {}: {e}", dir.display()),
            )
        })?;
    tmp.write_all(&bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| storage(path, format!("cannot write temporary file: {e}")))?;
    tmp.persist(path).map_err(|e| {
        storage(
            path,
            format!("cannot rename temporary file into place: {}", e.error),
        )
    })?;
    // Make the rename itself durable.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
