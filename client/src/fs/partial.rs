//! [`Partial`]: a temporary file or folder (an output being written beside its destination, a
//! verified copy of a stored object) that is removed when the user interrupts the command.
//!
//! Dropped, a temporary is removed by its own type (`tempfile`); but Ctrl-C, `kill` or a closed
//! terminal end the process without dropping anything, and an interrupted `zdn get -o` or
//! `zdn apply -o` of a 7B model would leave gigabytes in a hidden `.NAME.….partial` folder. So each
//! temporary is also listed here while it lives, and once [`remove_on_interrupt`] has been called
//! (by the commands that write files), SIGINT, SIGTERM and SIGHUP remove every listed path before
//! the process ends by that signal, as it would have without the handler.
//!
//! The rename that turns a temporary into the output runs inside [`Partial::settle`], under the
//! same lock the handler takes: an interrupt either comes first (the temporary is removed and the
//! rename never runs) or waits for the rename to finish (the output is whole; nothing is listed
//! any more). An output is never half removed under its real name. A temporary is made and
//! listed under that lock too ([`Partial::create`]): an interrupt never finds one that exists
//! but is not listed yet (the e2e test, which stops the command the moment its temporary
//! appears, once caught exactly that).

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, Once};

/// The temporaries alive now, by a number of their own.
#[derive(Default)]
struct Listed {
    next: u64,
    paths: BTreeMap<u64, PathBuf>,
}

static LISTED: Mutex<Listed> = Mutex::new(Listed {
    next: 0,
    paths: BTreeMap::new(),
});

fn listed() -> MutexGuard<'static, Listed> {
    // A panic while the lock was held leaves the list as it was: still the right list.
    LISTED.lock().unwrap_or_else(|e| e.into_inner())
}

/// Something on disk with a path: a temporary file or folder.
pub trait TempPath {
    fn path(&self) -> &Path;
}

impl TempPath for tempfile::TempDir {
    fn path(&self) -> &Path {
        tempfile::TempDir::path(self)
    }
}

impl TempPath for tempfile::NamedTempFile {
    fn path(&self) -> &Path {
        tempfile::NamedTempFile::path(self)
    }
}

/// A temporary `T`, listed for removal on interrupt while it lives. Derefs to `T`.
#[derive(Debug)]
pub struct Partial<T: TempPath> {
    // Dropped first: `T` removes itself, then it leaves the list.
    inner: T,
    entry: Entry,
}

/// A path's place in the list; leaves it when dropped.
#[derive(Debug)]
struct Entry(u64);

impl Drop for Entry {
    fn drop(&mut self) {
        listed().paths.remove(&self.0);
    }
}

impl<T: TempPath> Partial<T> {
    /// Makes the temporary (`make`: a `tempfile` builder's call) and lists it, both under the
    /// list's lock: an interrupt comes before the temporary exists or after it is listed, never
    /// in between (where it would be left behind).
    pub fn create<E>(make: impl FnOnce() -> Result<T, E>) -> Result<Self, E> {
        let mut l = listed();
        let inner = make()?;
        let id = l.next;
        l.next += 1;
        l.paths.insert(id, inner.path().to_owned());
        Ok(Partial {
            inner,
            entry: Entry(id),
        })
    }

    /// Runs `f` (the rename into place, say) with the temporary, so that an interrupt comes
    /// either before it (and `f` never runs) or after it (and the path is no longer listed).
    pub fn settle<R>(self, f: impl FnOnce(T) -> R) -> R {
        let Partial { inner, entry } = self;
        let mut l = listed();
        let r = f(inner);
        l.paths.remove(&entry.0);
        drop(l);
        std::mem::forget(entry);
        r
    }
}

impl<T: TempPath> Deref for Partial<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: TempPath> DerefMut for Partial<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: TempPath + std::io::Write> std::io::Write for Partial<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: TempPath + std::io::Seek> std::io::Seek for Partial<T> {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// From now on, an interrupt (SIGINT, SIGTERM, SIGHUP) removes the listed temporaries, says so
/// on stderr, and ends the process by the same signal. Once per process; a failure to install the
/// handler leaves the signals as they were (the temporaries are then left, as before).
pub fn remove_on_interrupt() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        // The handler is registered by the thread that acts on it: if the thread cannot start,
        // nothing is registered and the signals keep their default action.
        let (registered, wait) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("zdn-interrupt".into())
            .spawn(move || {
                let signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]);
                let _ = registered.send(());
                if let Some(sig) = signals.ok().and_then(|mut s| s.forever().next()) {
                    interrupted(sig);
                }
            });
        if spawned.is_ok() {
            // From the return on, an interrupt is caught.
            let _ = wait.recv();
        }
    });
}

/// Removes what is listed and ends the process by `sig`. Holds the list's lock to the end, so no
/// [`Partial::settle`] can start after the removal began.
fn interrupted(sig: i32) -> ! {
    let l = listed();
    let mut removed = Vec::new();
    for p in l.paths.values() {
        if remove(p) {
            removed.push(p.display().to_string());
        }
    }
    if !removed.is_empty() {
        eprintln!(
            "zdn: interrupted; removed what it had written so far: {}",
            removed.join(", ")
        );
    }
    let _ = signal_hook::low_level::emulate_default_handler(sig);
    std::process::exit(128 + sig)
}

/// Removes a file or a folder; true when something was there and is gone. Another thread may
/// still be writing into a folder: a few tries.
fn remove(p: &Path) -> bool {
    for _ in 0..5 {
        let r = match std::fs::symlink_metadata(p) {
            Err(_) => return false,
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
            Ok(_) => std::fs::remove_file(p),
        };
        if r.is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn is_listed(p: &Path) -> bool {
        listed().paths.values().any(|q| q == p)
    }

    #[test]
    fn listed_while_alive_and_gone_after() {
        let d = Partial::create(tempfile::tempdir).unwrap();
        let p = d.path().to_owned();
        assert!(is_listed(&p));
        drop(d);
        assert!(!is_listed(&p));
        assert!(!p.exists());

        let f = Partial::create(tempfile::NamedTempFile::new).unwrap();
        let p = f.path().to_owned();
        assert!(is_listed(&p));
        let dest = p.with_extension("kept");
        f.settle(|t| t.persist(&dest)).unwrap();
        assert!(!is_listed(&p));
        assert!(dest.exists());
        std::fs::remove_file(dest).unwrap();
    }

    #[test]
    fn remove_takes_files_and_folders() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("a");
        std::fs::create_dir_all(sub.join("b")).unwrap();
        std::fs::write(sub.join("b/c"), b"x").unwrap();
        assert!(remove(&sub));
        assert!(!sub.exists());
        let f = d.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(remove(&f));
        assert!(!remove(&f), "nothing there: nothing removed");
    }
}
