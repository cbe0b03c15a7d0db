//! Outputs that appear only when complete, survive crashes and clean up after interruptions.
//!
//! Everything kiln writes goes to a hidden sibling of the target first:
//! `.<name>.kiln-tmp-<host>-<pid>-<n>` (`<host>`: eight hex digits derived from the host name,
//! `<pid>`: the writing process). It is fsynced and renamed over the target only when complete.
//!
//! **Replacing a directory** (`--force`) takes two renames, since no portable call swaps two
//! directories: the old target moves aside to `.<name>.kiln-old-<host>-<pid>`, the new one moves
//! in, the old one is removed. A crash between the renames leaves no target; the next
//! [`AtomicDir::create`] (or [`recover`]) for that target repairs it: when the target is missing,
//! the old directory is moved back (the replacement is rolled back); when the target is there,
//! the old copy is removed (the replacement is finished).
//!
//! **Interrupted runs.** A program that installs a SIGINT/SIGTERM handler (the `kiln` CLI does)
//! calls [`interrupt_cleanup`] from it: every staging path of the process is removed and a
//! replacement caught between its renames is rolled back.
//!
//! **Leftovers of other processes** are removed by the next run for the same target only when
//! they are provably dead: written on this host by a process that no longer runs, or untouched
//! for [`STALE_AFTER`] (24 hours). A staging directory of another machine on a shared
//! filesystem is therefore left alone while it may be in use.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result, io_err};

/// Age after which another host's (or an unidentifiable) staging or aside directory counts as
/// abandoned: 24 hours without a change.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Environment variable of the fault-injection hook used by kiln's tests: set it to one of
/// `atomic-staged` (everything written, before any rename), `atomic-aside` (the old target moved
/// aside, the new one not yet in) or `atomic-replaced` (the new target in place, the old copy not
/// yet removed) and the process stops there until it is killed.
pub const TEST_PAUSE_VAR: &str = "KILN_TEST_PAUSE_AT";

fn pause_if_asked(point: &str) {
    if std::env::var(TEST_PAUSE_VAR).is_ok_and(|p| p == point) {
        eprintln!("kiln: paused at {point} ({TEST_PAUSE_VAR})");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// This host's id in staging names: FNV-1a of the host name, eight hex digits.
pub(crate) fn host_id() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_else(|| "unknown-host".into());
    let h = name.trim().bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// One output being written: where it is staged, and, during a replacement, where the old
/// target waits.
#[derive(Debug)]
struct Active {
    id: u64,
    staging: PathBuf,
    target: PathBuf,
    aside: Option<PathBuf>,
}

static ACTIVE: Mutex<Vec<Active>> = Mutex::new(Vec::new());
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn active() -> MutexGuard<'static, Vec<Active>> {
    ACTIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(staging: &Path, target: &Path) -> u64 {
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    active().push(Active {
        id,
        staging: staging.to_owned(),
        target: target.to_owned(),
        aside: None,
    });
    id
}

fn unregister(id: u64) {
    active().retain(|a| a.id != id);
}

/// A scratch path registered with [`register_scratch`]; dropping it unregisters the path (its
/// owner removes it, e.g. a `tempfile::TempDir` dropped after this guard).
#[derive(Debug)]
#[must_use = "the path is unregistered when the guard is dropped"]
pub struct ScratchGuard {
    id: u64,
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        unregister(self.id);
    }
}

/// Registers a temporary path a command removes when it ends (a scratch copy of a model) so that
/// [`interrupt_cleanup`] removes it too when the run is interrupted.
pub fn register_scratch(path: &Path) -> ScratchGuard {
    ScratchGuard {
        id: register(path, path),
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Undoes this process's unfinished outputs: removes every staging path and moves an old target
/// that was set aside back into place. Call it from a SIGINT/SIGTERM handler right before the
/// process exits; it blocks until a rename in progress has finished, and outputs cannot be
/// committed after it returns. Returns the paths it removed or restored.
pub fn interrupt_cleanup() -> Vec<PathBuf> {
    let mut guard = active();
    let touched = undo(&mut guard);
    // Keep the lock: nothing may be committed between this cleanup and the process's exit.
    std::mem::forget(guard);
    touched
}

/// Undoes and forgets `entries` (outputs not yet committed: committed ones leave the registry):
/// staging removed, an aside target moved back.
fn undo(entries: &mut Vec<Active>) -> Vec<PathBuf> {
    let mut touched = Vec::new();
    for a in entries.drain(..) {
        if let Some(aside) = &a.aside
            && std::fs::symlink_metadata(&a.target).is_err()
            && std::fs::rename(aside, &a.target).is_ok()
        {
            touched.push(a.target.clone());
        }
        if std::fs::symlink_metadata(&a.staging).is_ok() && remove_any(&a.staging).is_ok() {
            touched.push(a.staging.clone());
        }
    }
    touched
}

/// Parsed name of a hidden sibling: `.<name>.kiln-<kind>-<host>-<pid>[-<n>]` (or the older
/// `.<name>.kiln-tmp-<pid>-<n>` without a host).
struct Sibling {
    path: PathBuf,
    host: Option<String>,
    pid: Option<u32>,
}

fn siblings(parent: &Path, name: &str, kind: &str) -> Vec<Sibling> {
    let prefix = format!(".{name}.kiln-{kind}-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fname = entry.file_name().to_string_lossy().into_owned();
            let rest = fname.strip_prefix(&prefix)?;
            let parts: Vec<&str> = rest.split('-').collect();
            let (host, pid) = match parts.as_slice() {
                [host, pid, ..] if host.len() == 8 && u32::from_str_radix(host, 16).is_ok() => {
                    (Some((*host).to_owned()), pid.parse().ok())
                }
                [pid, ..] => (None, pid.parse().ok()),
                [] => (None, None),
            };
            Some(Sibling {
                path: entry.path(),
                host,
                pid,
            })
        })
        .collect()
}

/// Whether a sibling certainly belongs to no running process.
fn abandoned(s: &Sibling, me: &str) -> bool {
    let own_host_dead = s.host.as_deref() == Some(me)
        && s.pid
            .is_some_and(|pid| pid != std::process::id() && !process_alive(pid));
    own_host_dead || age(&s.path).is_some_and(|a| a > STALE_AFTER)
}

/// Time since the path last changed (its status change time on Unix: a rename counts).
fn age(path: &Path) -> Option<Duration> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    #[cfg(unix)]
    let changed = {
        use std::os::unix::fs::MetadataExt;
        let secs = u64::try_from(meta.ctime()).ok()?;
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    };
    #[cfg(not(unix))]
    let changed = meta.modified().ok()?;
    SystemTime::now().duration_since(changed).ok()
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        // Without a cheap check, assume it runs: leaving a stale directory is harmless.
        true
    }
}

/// Removes abandoned staging siblings of `target` (see the module docs for "abandoned").
fn remove_stale_staging(parent: &Path, name: &str) {
    let me = host_id();
    for s in siblings(parent, name, "tmp") {
        if abandoned(&s, &me) {
            let _ = remove_any(&s.path);
        }
    }
}

/// What [`recover`] did for a target whose replacement was interrupted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// The target was missing; the old directory set aside was moved back into place.
    RolledBack {
        /// Where the old directory had been set aside.
        from: PathBuf,
    },
    /// The new target was in place; the old copy set aside was removed.
    Finished {
        /// The removed copy.
        removed: PathBuf,
    },
}

impl std::fmt::Display for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RolledBack { from } => write!(
                f,
                "an earlier replacement of this output was interrupted before the new version was in place; the previous version was restored from {}",
                from.display()
            ),
            Self::Finished { removed } => write!(
                f,
                "an earlier replacement of this output was interrupted after the new version was in place; the previous version left at {} was removed",
                removed.display()
            ),
        }
    }
}

/// Repairs an interrupted replacement of `target` (see the module docs): rolls it back when the
/// target is missing, finishes it when the target is there. Only aside directories of processes
/// that are certainly gone are touched.
///
/// # Errors
/// [`Error::Recovery`] when the target is missing and several old versions wait beside it (kiln
/// cannot tell which to restore; the message lists them); [`Error::Io`].
pub fn recover(target: &Path) -> Result<Vec<Recovered>> {
    let target = std::path::absolute(target).map_err(io_err(target))?;
    let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(Vec::new());
    };
    let me = host_id();
    let old: Vec<Sibling> = siblings(parent, &name.to_string_lossy(), "old")
        .into_iter()
        .filter(|s| abandoned(s, &me))
        .collect();
    let mut done = Vec::new();
    let target_there = std::fs::symlink_metadata(&target).is_ok();
    if !target_there && old.len() > 1 {
        return Err(Error::Recovery {
            path: target.clone(),
            message: format!(
                "the output is missing and {} interrupted replacements left old versions beside it ({}); move the one you want back to {} by hand",
                old.len(),
                old.iter()
                    .map(|s| s.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                target.display()
            ),
        });
    }
    for s in old {
        if std::fs::symlink_metadata(&target).is_err() {
            std::fs::rename(&s.path, &target).map_err(io_err(&s.path))?;
            done.push(Recovered::RolledBack { from: s.path });
        } else {
            remove_any(&s.path).map_err(io_err(&s.path))?;
            done.push(Recovered::Finished { removed: s.path });
        }
    }
    if !done.is_empty() {
        sync_dir(parent)?;
    }
    Ok(done)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and fsynced on Unix; elsewhere the rename is as durable as the
    // platform makes it.
    if cfg!(unix) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into())
}

fn parent_of(path: &Path) -> Result<PathBuf> {
    path.parent().map(Path::to_owned).ok_or_else(|| Error::Io {
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "output path has no parent directory",
        ),
    })
}

/// An output directory that appears only when complete.
///
/// Files are written into a hidden sibling (see the module docs); [`commit`](Self::commit)
/// fsyncs them and the directory, then renames it over the final path. If the process dies
/// first, the final path is untouched; if the value is dropped uncommitted, the staging directory
/// is removed. Replacing an existing target (`force`) is recoverable after a crash at any point
/// ([`recover`], run by [`create`](Self::create)).
#[derive(Debug)]
pub struct AtomicDir {
    target: PathBuf,
    staging: PathBuf,
    force: bool,
    committed: bool,
    id: u64,
    recovered: Vec<Recovered>,
}

impl AtomicDir {
    /// Prepares to create `target`, first repairing an interrupted replacement of it and removing
    /// abandoned staging directories beside it. An existing `target` is an error unless `force`,
    /// in which case it is replaced at commit time (not before).
    ///
    /// # Errors
    /// [`Error::OutputExists`], [`Error::Recovery`], or [`Error::Io`] if the staging directory
    /// cannot be created.
    pub fn create(target: impl AsRef<Path>, force: bool) -> Result<Self> {
        let target = std::path::absolute(target.as_ref()).map_err(io_err(target.as_ref()))?;
        let parent = parent_of(&target)?;
        std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        let recovered = recover(&target)?;
        if target.exists() && !force {
            return Err(Error::OutputExists { path: target });
        }
        let name = file_name(&target);
        remove_stale_staging(&parent, &name);
        let prefix = format!(".{name}.kiln-tmp-{}-{}", host_id(), std::process::id());
        let mut n = 0u32;
        let staging = loop {
            let candidate = parent.join(format!("{prefix}-{n}"));
            match std::fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(io_err(&candidate)(e)),
            }
        };
        let id = register(&staging, &target);
        Ok(Self {
            target,
            staging,
            force,
            committed: false,
            id,
            recovered,
        })
    }

    /// Where files go until commit.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// What [`create`](Self::create) repaired from an earlier, interrupted replacement.
    pub fn recovered(&self) -> &[Recovered] {
        &self.recovered
    }

    /// Fsyncs every file and the directory, then renames it into place (replacing an existing
    /// target when created with `force`).
    ///
    /// # Errors
    /// [`Error::OutputExists`] if the target appeared meanwhile without `force`; [`Error::Io`].
    pub fn commit(mut self) -> Result<PathBuf> {
        for entry in std::fs::read_dir(&self.staging).map_err(io_err(&self.staging))? {
            let path = entry.map_err(io_err(&self.staging))?.path();
            if path.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&path))?;
            }
        }
        sync_dir(&self.staging)?;
        pause_if_asked("atomic-staged");
        let parent = parent_of(&self.target)?;
        let exists = std::fs::symlink_metadata(&self.target).is_ok();
        if exists && !self.force {
            return Err(Error::OutputExists {
                path: self.target.clone(),
            });
        }
        if !exists {
            let mut guard = active();
            std::fs::rename(&self.staging, &self.target).map_err(io_err(&self.target))?;
            self.committed = true;
            mark_committed(&mut guard, self.id);
            drop(guard);
            sync_dir(&parent)?;
            return Ok(self.target.clone());
        }
        let old = parent.join(format!(
            ".{}.kiln-old-{}-{}",
            file_name(&self.target),
            host_id(),
            std::process::id()
        ));
        remove_any(&old).map_err(io_err(&old))?;
        {
            let mut guard = active();
            std::fs::rename(&self.target, &old).map_err(io_err(&self.target))?;
            if let Some(a) = guard.iter_mut().find(|a| a.id == self.id) {
                a.aside = Some(old.clone());
            }
        }
        pause_if_asked("atomic-aside");
        {
            let mut guard = active();
            if let Err(e) = std::fs::rename(&self.staging, &self.target) {
                // Put the old target back before reporting.
                let _ = std::fs::rename(&old, &self.target);
                return Err(io_err(&self.target)(e));
            }
            self.committed = true;
            mark_committed(&mut guard, self.id);
        }
        sync_dir(&parent)?;
        pause_if_asked("atomic-replaced");
        remove_any(&old).map_err(io_err(&old))?;
        sync_dir(&parent)?;
        Ok(self.target.clone())
    }
}

fn mark_committed(guard: &mut MutexGuard<'static, Vec<Active>>, id: u64) {
    guard.retain(|a| a.id != id);
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
        unregister(self.id);
    }
}

/// Writes a file atomically: `fill` writes into a temporary sibling, which is fsynced and renamed
/// over `path`, then the directory is fsynced. Readers see the old file or the new one, never a
/// part; an error or an interruption ([`interrupt_cleanup`]) leaves no temporary behind.
pub(crate) fn with_atomic_file(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = file_name(path);
    remove_stale_staging(&dir, &name);
    let tmp = dir.join(format!(
        ".{name}.kiln-tmp-{}-{}-f",
        host_id(),
        std::process::id()
    ));
    let id = register(&tmp, path);
    let result = (|| -> Result<()> {
        let mut f = std::io::BufWriter::new(File::create(&tmp).map_err(io_err(&tmp))?);
        fill(&mut f).map_err(io_err(&tmp))?;
        let f = f.into_inner().map_err(|e| io_err(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp))?;
        let mut guard = active();
        std::fs::rename(&tmp, path).map_err(io_err(path))?;
        mark_committed(&mut guard, id);
        drop(guard);
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    unregister(id);
    result
}

/// Writes `bytes` to `path` atomically: a temporary sibling, fsync, rename, fsync of the
/// directory. Readers see the old file or the new one, never a part.
///
/// # Errors
/// [`Error::Io`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    with_atomic_file(path, |f| f.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn existing_output_is_refused_without_force_and_replaced_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep"), b"x").unwrap();
        assert!(matches!(
            AtomicDir::create(&out, false),
            Err(Error::OutputExists { .. })
        ));
        let a = AtomicDir::create(&out, true).unwrap();
        std::fs::write(a.path().join("new"), b"y").unwrap();
        // Until commit, the old directory is untouched.
        assert!(out.join("keep").exists());
        a.commit().unwrap();
        assert!(!out.join("keep").exists() && out.join("new").exists());
        assert_eq!(names(dir.path()), ["o"]);
    }

    #[test]
    fn staging_names_carry_host_and_pid() {
        let dir = tempfile::tempdir().unwrap();
        let a = AtomicDir::create(dir.path().join("o"), false).unwrap();
        let name = a.path().file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            name,
            format!(".o.kiln-tmp-{}-{}-0", host_id(), std::process::id())
        );
        drop(a);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn only_provably_abandoned_staging_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let me = host_id();
        let dead_here = dir.path().join(format!(".o.kiln-tmp-{me}-4000000000-0"));
        // Another machine's staging on a shared filesystem: its pid means nothing here.
        let other_host = dir.path().join(".o.kiln-tmp-0badc0de-4000000000-0");
        // The old format without a host: unknown owner.
        let legacy = dir.path().join(".o.kiln-tmp-4000000000-0");
        for d in [&dead_here, &other_host, &legacy] {
            std::fs::create_dir(d).unwrap();
        }
        let a = AtomicDir::create(dir.path().join("o"), false).unwrap();
        if cfg!(target_os = "linux") {
            assert!(!dead_here.exists());
        }
        assert!(other_host.exists() && legacy.exists());
        drop(a);
    }

    #[test]
    fn an_interrupted_replacement_is_rolled_back_or_finished() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        let old = dir
            .path()
            .join(format!(".o.kiln-old-{}-4000000000", host_id()));
        if !cfg!(target_os = "linux") {
            return; // liveness of a pid is only checked on Linux
        }
        // Crash between the renames: no target, the old version aside.
        std::fs::create_dir(&old).unwrap();
        std::fs::write(old.join("weights"), b"old").unwrap();
        let done = recover(&out).unwrap();
        assert!(matches!(done.as_slice(), [Recovered::RolledBack { .. }]));
        assert_eq!(std::fs::read(out.join("weights")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["o"]);
        // Crash after the new version moved in: the old copy is removed.
        std::fs::create_dir(&old).unwrap();
        let done = recover(&out).unwrap();
        assert!(matches!(done.as_slice(), [Recovered::Finished { .. }]));
        assert_eq!(names(dir.path()), ["o"]);
        // A live process's aside directory (this one's) is never touched.
        let mine = dir
            .path()
            .join(format!(".o.kiln-old-{}-{}", host_id(), std::process::id()));
        std::fs::create_dir(&mine).unwrap();
        assert!(recover(&out).unwrap().is_empty());
        assert!(mine.exists());
    }

    #[test]
    fn several_candidates_for_a_missing_target_are_not_guessed() {
        if !cfg!(target_os = "linux") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for pid in [4000000000u32, 4000000001] {
            std::fs::create_dir(dir.path().join(format!(".o.kiln-old-{}-{pid}", host_id())))
                .unwrap();
        }
        let err = recover(&dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("by hand"), "{err}");
    }

    #[test]
    fn undo_removes_staging_and_restores_an_aside_target() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("keep"), b"x").unwrap();
        let staging = dir.path().join(".o.kiln-tmp-test");
        std::fs::create_dir(&staging).unwrap();
        // The state `commit` records after its first rename.
        let aside = dir.path().join(".o.kiln-old-test");
        std::fs::rename(&out, &aside).unwrap();
        let mut entries = vec![Active {
            id: u64::MAX,
            staging: staging.clone(),
            target: out.clone(),
            aside: Some(aside.clone()),
        }];
        let touched = undo(&mut entries);
        assert_eq!(touched, [out.clone(), staging.clone()]);
        assert!(entries.is_empty());
        assert_eq!(std::fs::read(out.join("keep")).unwrap(), b"x");
        assert_eq!(names(dir.path()), ["o"]);
    }

    #[test]
    fn write_atomic_replaces_whole_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write_atomic(&p, b"first").unwrap();
        write_atomic(&p, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second, longer");
        assert_eq!(names(dir.path()), ["state.json"]);
        let missing = dir.path().join("no/such/dir/file");
        assert!(matches!(
            write_atomic(&missing, b"x"),
            Err(Error::Io { .. })
        ));
    }
}
