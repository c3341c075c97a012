//! What the `sandbox_info` tool reports about the environment the server
//! runs in, read from `/proc` and `/sys` only (no libc calls, no network).

use std::{
    fs::{self, OpenOptions},
    path::Path,
};

use serde::Serialize;

/// A snapshot of the sandbox as seen from inside.
#[derive(Debug, Serialize)]
pub(crate) struct SandboxInfo {
    /// The kernel host name (the container's, in a container).
    pub hostname: Option<String>,
    /// Effective user id of the server process.
    pub uid: Option<u32>,
    /// Effective group id of the server process.
    pub gid: Option<u32>,
    /// Process id of the server (1 when it is a container's init).
    pub pid: u32,
    /// Network interface names, sorted.
    pub network_interfaces: Vec<String>,
    /// Whether a file could be created in `/`.
    pub root_writable: bool,
    /// Why a file could not be created in `/`, if it could not.
    pub root_write_error: Option<String>,
    /// Whether a file could be created in `/tmp`.
    pub tmp_writable: bool,
    /// Why a file could not be created in `/tmp`, if it could not.
    pub tmp_write_error: Option<String>,
}

impl SandboxInfo {
    /// Gather the snapshot. Never fails: what cannot be read is `None`/empty.
    pub(crate) fn collect() -> Self {
        let (uid, gid) = ids();
        let (root_writable, root_write_error) = probe_writable(Path::new("/"));
        let (tmp_writable, tmp_write_error) = probe_writable(Path::new("/tmp"));
        Self {
            hostname: hostname(),
            uid,
            gid,
            pid: std::process::id(),
            network_interfaces: interfaces(),
            root_writable,
            root_write_error,
            tmp_writable,
            tmp_write_error,
        }
    }
}

fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// Effective uid and gid, from the `Uid:`/`Gid:` lines of `/proc/self/status`
/// (real, effective, saved, filesystem).
fn ids() -> (Option<u32>, Option<u32>) {
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let effective = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|id| id.parse().ok())
    };
    (effective("Uid:"), effective("Gid:"))
}

/// Interface names from `/sys/class/net`, falling back to `/proc/net/dev`.
fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir("/sys/class/net") {
        Ok(dir) => dir
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(_) => fs::read_to_string("/proc/net/dev")
            .map(|dev| {
                dev.lines()
                    .skip(2)
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, _)| name.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default(),
    };
    names.sort();
    names
}

/// Try to create (and then remove) a fresh file in `dir`.
fn probe_writable(dir: &Path) -> (bool, Option<String>) {
    let probe = dir.join(format!(".mcp-server-write-probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            (true, None)
        }
        // A leftover probe from an earlier call means the directory is writable.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = fs::remove_file(&probe);
            (true, None)
        }
        Err(e) => (false, Some(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxInfo;

    #[test]
    fn collects_something() {
        let info = SandboxInfo::collect();
        assert_eq!(info.pid, std::process::id());
        assert!(info.uid.is_some() && info.gid.is_some());
        assert!(info.network_interfaces.iter().any(|n| n == "lo"));
        assert!(info.tmp_writable, "{:?}", info.tmp_write_error);
    }
}
