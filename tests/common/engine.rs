//! A private Docker engine owned by one test, beside the machine's: its own `dockerd` in its
//! own network namespace, with its own socket, data root, exec root, pidfile and log under a
//! short temporary directory. Restarting or stopping it touches nobody else's containers; the
//! machine's engine is only read (`docker save` of the images the test needs).
//!
//! - `unshare --net` always: a `dockerd --bridge=none` started in the machine's network
//!   namespace deletes the machine's `docker0` bridge at start-up.
//! - `--config-file` points at an empty `{}` file: the machine's `/etc/docker/daemon.json`
//!   may set keys (data-root) that the flags here would repeat.
//! - Storage: `fuse-overlayfs` (installed with apt when missing); `vfs` when it cannot be had.
//! - `setpriv --pdeathsig TERM`: should the test process be killed outright, the engine is
//!   told to shut down instead of outliving it.
//!
//! It never skips: an engine that does not come up panics with the tail of its log. On drop
//! it removes its containers, stops (SIGTERM, then SIGKILL after a timeout), reaps what may be
//! left (processes naming its directory, mounts under it) and removes the directory; a leftover
//! it cannot remove fails the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::docker_bin;

/// How long a start may take before the test fails (the machine may be heavily loaded).
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long a SIGTERM may take (it stops every container first) before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// A `dockerd` this test started and owns.
pub struct PrivateEngine {
    dir: PathBuf,
    driver: &'static str,
    child: Option<Child>,
}

/// What one [`PrivateEngine::restart`] took.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// SIGTERM → the old daemon exited (it stops every container first).
    pub stopped: Duration,
    /// SIGTERM → the new daemon answers `docker info`: how long the engine was unavailable.
    pub down: Duration,
}

impl PrivateEngine {
    /// Start one and copy `images` into it from the machine's engine.
    pub fn start(images: &[&str]) -> PrivateEngine {
        static N: AtomicU32 = AtomicU32::new(0);
        // Short on purpose: a unix socket path may not exceed 108 bytes, and containerd puts
        // its own socket under the exec root.
        let dir = PathBuf::from(format!(
            "/tmp/pe-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            panic!("{} exists already (left by an earlier run?)", dir.display());
        }
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("daemon.json"), "{}\n").unwrap();
        let mut me = PrivateEngine {
            dir,
            driver: storage_driver(),
            child: None,
        };
        // From here on a panic drops `me`, which cleans up whatever was started.
        let t0 = Instant::now();
        me.spawn();
        me.wait_ready();
        eprintln!(
            "private engine {} ({}) answered {} ms after start",
            me.docker_host(),
            me.driver,
            t0.elapsed().as_millis()
        );
        for image in images {
            me.load(image);
        }
        me
    }

    /// Its directory (socket, data root, exec root, pidfile, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unix socket it listens on.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    /// `unix://…`, for `DOCKER_HOST` or `docker -H`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// The storage driver it runs with.
    pub fn storage_driver(&self) -> &'static str {
        self.driver
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the private engine is not running")
            .id()
    }

    /// Run `docker -H <this engine> ARGS`, panicking with its stderr on failure.
    pub fn docker(&self, args: &[&str]) -> String {
        super::docker_on(Some(&self.docker_host()), args)
    }

    /// The last `lines` lines of the daemon's log (all its runs).
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM the daemon, wait for it to exit and start it again on the same data root.
    pub fn restart(&mut self) -> Restart {
        let t0 = Instant::now();
        let forced = self.stop(STOP_LIMIT);
        let stopped = t0.elapsed();
        assert!(
            !forced,
            "the private dockerd did not exit within {STOP_LIMIT:?} of SIGTERM (killed); log:\n{}",
            self.log_tail(40)
        );
        self.spawn();
        self.wait_ready();
        Restart {
            stopped,
            down: t0.elapsed(),
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let d = &self.dir;
        // A pidfile left by a killed daemon would name a stale (maybe reused) pid.
        let _ = std::fs::remove_file(d.join("docker.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("dockerd.log"))
            .unwrap();
        // setpriv and unshare exec: the child's pid is dockerd's.
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "TERM", "unshare", "--net", "dockerd"])
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(self.docker_host())
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--ip-forward=false",
                "--storage-driver",
                self.driver,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start a private dockerd (setpriv, unshare and dockerd are needed; root): {e}")
            });
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                panic!(
                    "the private dockerd exited ({st}) before answering; log:\n{}",
                    self.log_tail(40)
                );
            }
            if self.socket().exists()
                && Command::new(docker_bin())
                    .args(["-H", &self.docker_host(), "info", "--format", "{{.ID}}"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            {
                return;
            }
            assert!(
                t0.elapsed() < START_LIMIT,
                "the private dockerd did not answer within {START_LIMIT:?}; log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker save IMAGE` from the machine's engine into `docker load` here.
    fn load(&self, image: &str) {
        let t0 = Instant::now();
        let mut save = Command::new(docker_bin())
            .args(["save", image])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run docker save");
        let load = Command::new(docker_bin())
            .args(["-H", &self.docker_host(), "load", "-q"])
            .stdin(save.stdout.take().unwrap())
            .output()
            .expect("cannot run docker load");
        let saved = save.wait_with_output().unwrap();
        assert!(
            saved.status.success(),
            "docker save {image} (machine's engine) failed: {}",
            String::from_utf8_lossy(&saved.stderr)
        );
        assert!(
            load.status.success(),
            "docker load of {image} into the private engine failed: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        eprintln!(
            "loaded {image} into the private engine in {} ms",
            t0.elapsed().as_millis()
        );
    }

    /// SIGTERM (to the pid in its pidfile), then SIGKILL after `limit`; waits for the exit.
    /// Returns whether it had to be killed.
    fn stop(&mut self, limit: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = std::fs::read_to_string(self.dir.join("docker.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .unwrap_or(child.id());
        assert_eq!(
            pid,
            child.id(),
            "the private engine's pidfile names another process"
        );
        signal("TERM", pid);
        let t0 = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Remove every container of this engine (quick, and no container outlives the engine).
    fn remove_containers(&self) {
        let ids = Command::new("timeout")
            .args(["20", docker_bin(), "-H", &self.docker_host(), "ps", "-aq"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = Command::new("timeout")
                .args(["60", docker_bin(), "-H", &self.docker_host(), "rm", "-f"])
                .args(&ids)
                .output();
        }
    }

    /// Processes left behind: anything naming this directory on its command line (containerd,
    /// shims, fuse-overlayfs) and anything in the cgroup of one of this engine's containers.
    fn leftover_pids(&self) -> Vec<(u32, String)> {
        let dir = format!("{}/", self.dir.display());
        let ids: Vec<String> = std::fs::read_dir(self.dir.join("data/containers"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|id| id.len() == 64)
                    .collect()
            })
            .unwrap_or_default();
        let me = std::process::id();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            if cmd.is_empty() {
                continue; // a kernel thread, or gone (a zombie has an empty cmdline too)
            }
            let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if cmd.contains(&dir) || ids.iter().any(|id| cgroup.contains(id.as_str())) {
                out.push((pid, cmd.trim().to_string()));
            }
        }
        out
    }

    /// Mount points under this directory, deepest first.
    fn mounts(&self) -> Vec<String> {
        let dir = format!("{}/", self.dir.display());
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut m: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .map(String::from)
            .collect();
        m.sort_by_key(|p| std::cmp::Reverse(p.len()));
        m.dedup();
        m
    }

    /// Everything after the daemon is gone: mounts, processes, the directory. Returns what
    /// could not be cleaned.
    fn reap(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for m in self.mounts() {
            eprintln!("private engine: unmounting leftover {m}");
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let left = self.leftover_pids();
        for (pid, cmd) in &left {
            eprintln!("private engine: killing leftover process {pid}: {cmd}");
            signal("KILL", *pid);
        }
        let t0 = Instant::now();
        while !self.leftover_pids().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for (pid, cmd) in self.leftover_pids() {
            problems.push(format!("process {pid} still running: {cmd}"));
        }
        for m in self.mounts() {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        for m in self.mounts() {
            problems.push(format!("still mounted: {m}"));
        }
        if problems.is_empty()
            && let Err(e) = std::fs::remove_dir_all(&self.dir)
        {
            problems.push(format!("cannot remove {}: {e}", self.dir.display()));
        }
        problems
    }
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.remove_containers();
            if self.stop(STOP_LIMIT) {
                eprintln!(
                    "private engine: dockerd ignored SIGTERM for {STOP_LIMIT:?}; killed. log:\n{}",
                    self.log_tail(20)
                );
            }
        }
        let problems = self.reap();
        if !problems.is_empty() {
            let msg = format!(
                "the private engine in {} left things behind:\n{}",
                self.dir.display(),
                problems.join("\n")
            );
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `fuse-overlayfs` when it is (or can be made) available, else `vfs` (slow and
/// space-hungry, but fine for the small FROM-scratch sandbox image).
fn storage_driver() -> &'static str {
    static DRIVER: OnceLock<&'static str> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let have = || {
            Command::new("sh")
                .args(["-c", "command -v fuse-overlayfs"])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !have() {
            eprintln!("private engine: fuse-overlayfs missing; apt-get install -y fuse-overlayfs");
            let _ = Command::new("apt-get")
                .args(["install", "-y", "fuse-overlayfs"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(Stdio::null())
                .status();
        }
        if have() && Path::new("/dev/fuse").exists() {
            "fuse-overlayfs"
        } else {
            eprintln!("private engine: no fuse-overlayfs (or no /dev/fuse); using vfs");
            "vfs"
        }
    })
}
