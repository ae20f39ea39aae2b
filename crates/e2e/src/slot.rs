//! Slots: each running test holds one of 256 slots, which gives it unique namespace names and a
//! unique subnet `10.234.<slot>.0/24`. A slot is held by an exclusive `flock` on
//! `/run/sluice-e2e/slot-<n>.lock`; the kernel releases it when the holder exits, however it exits,
//! so a killed test never leaks its slot. Whoever takes a slot next first removes anything a dead
//! holder left behind (namespaces whose names start with the slot's prefix).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

const LOCK_DIR: &str = "/run/sluice-e2e";
pub const SLOTS: u16 = 256;

/// A held slot; released when dropped.
pub struct Slot {
    index: u8,
    lock: File,
}

impl Slot {
    /// Takes a free slot, starting the search at a point derived from the pid and the test name
    /// so that parallel tests rarely contend for the same lock file.
    pub fn acquire(test: &str) -> Slot {
        std::fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
        let mut h: u32 = std::process::id().wrapping_mul(2_654_435_761);
        for b in test.bytes() {
            h = h.wrapping_mul(31).wrapping_add(u32::from(b));
        }
        let start = (h % u32::from(SLOTS)) as u16;
        for i in 0..SLOTS {
            let index = ((start + i) % SLOTS) as u8;
            let path = PathBuf::from(format!("{LOCK_DIR}/slot-{index:03}.lock"));
            let Ok(mut file) = OpenOptions::new()
                .create(true)
                .read(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                remove_recorded_dirs(&file);
                let _ = writeln!(file, "pid {} test {test}", std::process::id());
                return Slot { index, lock: file };
            }
        }
        panic!("all {SLOTS} end-to-end test slots in {LOCK_DIR} are taken");
    }

    /// Removes what dead test processes left behind in any slot: for every namespace named like a
    /// slot's (`slNNN-…`) whose slot lock nobody holds, takes the lock briefly and removes the
    /// slot's namespaces. A slot whose lock is held belongs to a live test and is left alone.
    pub fn sweep_stale(&self) {
        let mut stale: Vec<u8> = crate::netns::list()
            .iter()
            .filter_map(|n| slot_of(n))
            .filter(|i| *i != self.index)
            .collect();
        stale.sort_unstable();
        stale.dedup();
        for index in stale {
            let path = PathBuf::from(format!("{LOCK_DIR}/slot-{index:03}.lock"));
            let Ok(file) = OpenOptions::new()
                .create(true)
                .read(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            // SAFETY: flock on a file descriptor we own; released when `file` is dropped.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue;
            }
            remove_recorded_dirs(&file);
            let prefix = format!("sl{index:03}-");
            for ns in crate::netns::list()
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
            {
                eprintln!("[e2e] removing netns {ns} left behind by a dead test");
                crate::netns::remove(&ns);
            }
        }
        // Our own slot: anything a previous holder left.
        for ns in crate::netns::list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix()))
        {
            crate::netns::remove(&ns);
        }
    }

    /// Records the test's temporary directory in the lock file, so that a sweep after a crash can
    /// remove it too.
    pub fn record_dir(&self, dir: &std::path::Path) {
        let _ = writeln!(&self.lock, "dir {}", dir.display());
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    /// The prefix of every namespace name owned by this slot.
    pub fn prefix(&self) -> String {
        format!("sl{:03}-", self.index)
    }
}

/// Removes the temporary directories that the previous holder of a slot lock recorded (it is dead:
/// we hold its lock), then empties the lock file.
fn remove_recorded_dirs(lock: &File) {
    use std::io::{Read, Seek};
    let mut recorded = String::new();
    let mut f = lock;
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_string(&mut recorded);
    for dir in recorded.lines().filter_map(|l| l.strip_prefix("dir ")) {
        let dir = std::path::Path::new(dir);
        let ours = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("sluice-e2e-"));
        if ours && dir.is_dir() && std::env::var_os("SLUICE_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    let _ = lock.set_len(0);
    let _ = f.seek(std::io::SeekFrom::Start(0));
}

/// The slot a namespace name belongs to (`sl042-pod-…` → 42).
fn slot_of(ns: &str) -> Option<u8> {
    let rest = ns.strip_prefix("sl")?;
    let (digits, tail) = rest.split_at_checked(3)?;
    if !tail.starts_with('-') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn slot_of_names() {
        assert_eq!(super::slot_of("sl042-pod-x"), Some(42));
        assert_eq!(super::slot_of("sl255-ext-y"), Some(255));
        assert_eq!(super::slot_of("sl256-ext-y"), None);
        assert_eq!(super::slot_of("sltest"), None);
        assert_eq!(super::slot_of("other"), None);
    }
}
