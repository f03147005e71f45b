//! Container start, part of the binary (not the library): what an official image's
//! entrypoint script does, done here because the image has no shell.
//!
//! When the process starts as root and `RUN_AS` is set (the images set it to
//! `10001:10001`), it makes the SQLite data directory usable by that user, then drops to
//! it for good, before any other thread, the runtime or the store exists: supplementary
//! groups cleared, then the group id, then the user id, then `no_new_privs`, and a check
//! that root cannot be regained. A bind mount that Docker created owned by root, or a
//! database file written by the original's image (which ran as root), then just works.
//!
//! Started as any other user (`docker run --user 10001:10001`, Kubernetes `runAsUser`),
//! or without `RUN_AS` (a binary run by hand), nothing here happens.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The user and group to run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// Parses `RUN_AS`: `uid:gid`, or `uid` (the group is the same number).
pub fn parse_run_as(text: &str) -> Result<RunAs, String> {
    let bad = || format!("RUN_AS must be a numeric uid:gid such as 10001:10001, got '{text}'");
    let (uid, gid) = match text.trim().split_once(':') {
        Some((u, g)) => (u.trim(), g.trim()),
        None => (text.trim(), text.trim()),
    };
    Ok(RunAs {
        uid: uid.parse().map_err(|_| bad())?,
        gid: gid.parse().map_err(|_| bad())?,
    })
}

/// What [`start`] did, to be logged once the logger runs.
#[derive(Debug, Default)]
pub struct Started {
    pub notes: Vec<String>,
}

/// Prepares `data_file`'s directory and drops to `RUN_AS` when running as root with
/// `RUN_AS` set. `run_as` is the variable's value (environment or `.env`); `data_file` is
/// the SQLite file when the configuration uses SQLite.
pub fn start(run_as: Option<&str>, data_file: Option<&Path>) -> Result<Started, String> {
    let mut started = Started::default();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let Some(text) = run_as.filter(|t| !t.trim().is_empty()) else {
        return Ok(started);
    };
    let target = parse_run_as(text)?;
    if uid != 0 || target.uid == 0 {
        return Ok(started);
    }
    if let Some(file) = data_file {
        prepare_data_dir(file, target, &mut started.notes);
    }
    drop_privileges(target)?;
    started.notes.push(format!(
        "started as root: now running as uid {}, gid {} (RUN_AS)",
        target.uid, target.gid
    ));
    Ok(started)
}

/// Creates the directory of `file` and gives it, the file and SQLite's side files to
/// `owner`. Failures are notes, not errors: the store then says what is wrong.
fn prepare_data_dir(file: &Path, owner: RunAs, notes: &mut Vec<String>) {
    let dir = match file.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("."),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        notes.push(format!("cannot create {}: {e}", dir.display()));
        return;
    }
    let mut paths = vec![dir.clone()];
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        paths.push(PathBuf::from(name));
    }
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() == owner.uid && meta.gid() == owner.gid {
            continue;
        }
        match chown(&path, owner) {
            Ok(()) => notes.push(format!(
                "gave {} to uid {}, gid {}",
                path.display(),
                owner.uid,
                owner.gid
            )),
            Err(e) => notes.push(format!(
                "cannot give {} to uid {}: {e}",
                path.display(),
                owner.uid
            )),
        }
    }
}

fn chown(path: &Path, owner: RunAs) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated path; lchown does not follow a symlink.
    match unsafe { libc::lchown(c.as_ptr(), owner.uid, owner.gid) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Drops root for good: groups cleared, then gid, then uid, then no new privileges;
/// then checks that it worked and that root cannot be regained.
fn drop_privileges(to: RunAs) -> Result<(), String> {
    let step = |what: &str, rc: libc::c_int| -> Result<(), String> {
        match rc {
            0 => Ok(()),
            _ => Err(format!(
                "cannot drop root privileges ({what}): {}",
                std::io::Error::last_os_error()
            )),
        }
    };
    // SAFETY: plain system calls on the calling process, made while it has one thread;
    // setgroups reads no memory when its count is 0.
    unsafe {
        step("setgroups", libc::setgroups(0, std::ptr::null()))?;
        step("setgid", libc::setgid(to.gid))?;
        step("setuid", libc::setuid(to.uid))?;
        step(
            "no_new_privs",
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
        )?;
        let ids = (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getegid(),
            libc::getgroups(0, std::ptr::null_mut()),
        );
        if ids != (to.uid, to.uid, to.gid, to.gid, 0) {
            return Err(format!("privileges not dropped as asked: {ids:?}"));
        }
        if libc::setuid(0) == 0 {
            return Err("privileges not dropped: root could be regained".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_as_is_numeric_uid_and_gid() {
        assert_eq!(
            parse_run_as("10001:10002"),
            Ok(RunAs {
                uid: 10001,
                gid: 10002
            })
        );
        assert_eq!(parse_run_as(" 500 "), Ok(RunAs { uid: 500, gid: 500 }));
        for bad in ["app", "1:x", ":1", "-1", ""] {
            assert!(parse_run_as(bad).is_err(), "{bad}");
        }
    }
}
