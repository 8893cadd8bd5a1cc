//! The demo's scratch directories: `emberwatch-demo-<pid>` (the gateways' and the agent's
//! storage) and `emberwatch-demo-console-<pid>` (the console's database and users file) in
//! the temporary directory.
//!
//! A demo removes its own when it ends, but one killed with SIGKILL (or by a power cut) cannot,
//! and its directories stayed forever. So a starting demo sweeps them: a directory of exactly
//! those names whose process is gone is removed. One whose process lives (another demo running
//! now, perhaps another user's) is never touched, and nothing else in the temporary directory
//! is looked at.

use std::path::{Path, PathBuf};

/// The name of every scratch directory starts so, then `<kind>-`, then the pid.
const PREFIX: &str = "emberwatch-demo-";

/// The kinds, each a directory per demo: the gateways' storage (no kind), the console's.
const KINDS: [&str; 2] = ["", "console-"];

/// This demo's directory of `kind` ("" or "console-") under `tmp`.
pub(super) fn dir(tmp: &Path, kind: &str) -> PathBuf {
    tmp.join(format!("{PREFIX}{kind}{}", std::process::id()))
}

/// The pid a scratch directory's name ends in, if `name` is one.
fn pid_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    KINDS
        .iter()
        .filter_map(|k| rest.strip_prefix(k))
        .find(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|pid| pid.parse().ok())
}

/// Removes under `tmp` the scratch directories of demos that no longer run (`alive` says
/// whether a pid is a running process; this process always counts as running). Returns what
/// it removed; what it could not remove (another user's, say) is left, without complaint.
pub(super) fn sweep(tmp: &Path, alive: impl Fn(u32) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(pid_of) else {
            continue;
        };
        // A real directory only: a symlink of that name is not ours to follow.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || pid == me || alive(pid) {
            continue;
        }
        let path = entry.path();
        if std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// Whether `pid` is a running process, from `/proc`. Without `/proc` (not Linux) nobody can
/// tell, so every pid counts as running and nothing is swept.
pub(super) fn alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_directories_of_dead_demos_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let me = std::process::id();
        let mk = |name: &str| {
            std::fs::create_dir(t.join(name)).unwrap();
            std::fs::write(t.join(name).join("state.json"), "{}").unwrap();
        };
        // Dead demos (pids 1001, 1002), a live one (2002), this one, and look-alikes.
        for name in [
            "emberwatch-demo-1001",
            "emberwatch-demo-console-1001",
            "emberwatch-demo-console-1002",
            "emberwatch-demo-2002",
            "emberwatch-demo-console-2002",
            &format!("emberwatch-demo-{me}"),
            &format!("emberwatch-demo-console-{me}"),
            "emberwatch-demo-",
            "emberwatch-demo-12x",
            "emberwatch-demo-other-1003",
            "emberwatch-demo-console-",
            "my-emberwatch-demo-1004",
        ] {
            mk(name);
        }
        // A file and a symlink with a dead demo's name are not directories of ours.
        std::fs::write(t.join("emberwatch-demo-1005"), "not a directory").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), t.join("emberwatch-demo-1006")).unwrap();

        let alive = |pid: u32| pid == 2002;
        let mut removed: Vec<String> = sweep(t, alive)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                "emberwatch-demo-1001",
                "emberwatch-demo-console-1001",
                "emberwatch-demo-console-1002",
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(t)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            "emberwatch-demo-".to_string(),
            "emberwatch-demo-1005".into(),
            "emberwatch-demo-1006".into(),
            "emberwatch-demo-12x".into(),
            "emberwatch-demo-2002".into(),
            "emberwatch-demo-console-".into(),
            "emberwatch-demo-console-2002".into(),
            format!("emberwatch-demo-console-{me}"),
            format!("emberwatch-demo-{me}"),
            "emberwatch-demo-other-1003".into(),
            "my-emberwatch-demo-1004".into(),
        ];
        want.sort();
        assert_eq!(left, want);
        // The symlink's target was not followed.
        assert!(elsewhere.path().exists());
    }

    #[test]
    fn this_process_is_alive_and_a_pid_past_the_kernel_limit_is_not() {
        assert!(alive(std::process::id()));
        // pid_max is at most 2^22 on Linux.
        assert_eq!(alive(4_194_305), !Path::new("/proc/self").exists());
    }
}
