//! Podman in a scratch world for the container tests (tests/podman.rs,
//! tests/deploy.rs): its own storage, run state, locks and configuration
//! under one directory, containers under a cgroup parent of their own, so
//! that everything can be found and removed afterwards, also when a test
//! fails.

use super::*;
use std::cell::RefCell;

/// True when `program` is on PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Returns early from a test when a tool it needs is missing (see
/// [`tool_present`]), except in CI (`CI=true`), where scripts/install-deps
/// has installed everything and a missing tool is a failure.
#[macro_export]
macro_rules! require_tools {
    ($($tool:expr),* $(,)?) => {
        let missing: Vec<&str> = [$($tool),*]
            .into_iter()
            .filter(|t| !common::containers::tool_present(t))
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "this test needs {} (scripts/install-deps installs them)",
                missing.join(", ")
            );
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{msg}");
            }
            eprintln!("skipped: {msg}");
            return;
        }
    };
}

/// Whether `tool` is there: a program on PATH, `busybox-static`
/// (/bin/busybox), or a Python module (`python3:NAME`).
pub fn tool_present(tool: &str) -> bool {
    match tool {
        "busybox-static" => Path::new("/bin/busybox").exists(),
        t => match t.strip_prefix("python3:") {
            Some(module) => Command::new("python3")
                .args(["-c", &format!("import {module}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            None => installed(t),
        },
    }
}

/// What podman and buildah write outside their own directories however
/// they are configured: libcni's result cache (/var/lib/cni) and the image
/// blob-info cache (/var/lib/containers/cache). Removed on drop if the
/// test created them; left as they are if they were there before.
pub struct HostCaches {
    /// The directories that did not exist when the test started.
    pub created_by_us: Vec<PathBuf>,
}

const HOST_CACHES: [&str; 3] = [
    "/var/lib/cni",
    "/var/lib/containers",
    "/var/lib/containers/cache",
];

impl HostCaches {
    /// Notes which of the cache directories do not exist yet.
    pub fn record() -> HostCaches {
        HostCaches {
            created_by_us: HOST_CACHES
                .iter()
                .map(PathBuf::from)
                .filter(|p| !p.exists())
                .collect(),
        }
    }

    /// Removes what the test created (the deepest first).
    pub fn clean(&self) {
        for p in self.created_by_us.iter().rev() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

impl Drop for HostCaches {
    fn drop(&mut self) {
        self.clean();
    }
}

/// Mount points at or under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_string)
        .collect()
}

/// The mount points of every cgroup hierarchy (v1 controllers and v2).
pub fn cgroup_roots() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// Removes the directories of cgroup `dir` and below (cgroups are
/// removed with rmdir, children first).
pub fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// One podman world: storage (vfs), run state, locks and configuration
/// under `dir`, containers and conmon under the cgroup `/<cgroup>`, podman
/// run in network namespace `ns` when given. Everything goes on drop.
pub struct PodmanWorld {
    /// The network namespace podman runs in (where the CNI plugins it
    /// starts find their weft), or the test's own.
    pub ns: Option<String>,
    /// The scratch directory.
    pub dir: PathBuf,
    /// The cgroup parent of its containers and conmon (in every hierarchy).
    pub cgroup: String,
    /// Network namespaces podman made for containers (SandboxKey), to
    /// remove if podman did not.
    pub sandboxes: RefCell<Vec<String>>,
}

impl PodmanWorld {
    /// A new world named `tag` (its directory is $TMPDIR/`tag`, its cgroup
    /// `/tag`); `network` is the body of containers.conf's `[network]`
    /// table; podman runs in network namespace `ns` when given.
    pub fn new(tag: &str, network: &str, ns: Option<&str>) -> PodmanWorld {
        let w = PodmanWorld {
            ns: ns.map(str::to_string),
            dir: std::env::temp_dir().join(tag),
            cgroup: tag.to_string(),
            sandboxes: RefCell::new(Vec::new()),
        };
        let _ = fs::remove_dir_all(&w.dir);
        for d in ["root", "runroot", "tmp"] {
            fs::create_dir_all(w.path(d)).expect("create the podman directories");
        }
        let d = |name: &str| w.path(name).display().to_string();
        // Only this file is read (CONTAINERS_CONF): runc (crun refuses
        // hybrid cgroup hosts), cgroupfs, no events or systemd, file locks
        // in tmp/ (not /dev/shm), ulimits this host allows (podman's
        // default is the maximum).
        let conf = format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[network]
{network}
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "{}"
"#,
            d("tmp")
        );
        fs::write(w.path("containers.conf"), conf).expect("write containers.conf");
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            d("root"),
            d("runroot")
        );
        fs::write(w.path("storage.conf"), storage).expect("write storage.conf");
        fs::write(w.path("registries.conf"), "").expect("write registries.conf");
        w
    }

    /// A path in the world's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `--cgroup-parent` for `podman run`: the world's own cgroup.
    pub fn cgroup_parent(&self) -> String {
        format!("/{}", self.cgroup)
    }

    /// `podman ARGS` with this world's configuration, in its network
    /// namespace if it has one (nsenter --net: only the network namespace
    /// changes, so the namespaces podman bind-mounts under /run/netns stay
    /// visible to its next invocation).
    pub fn cmd(&self, args: &[&str]) -> Output {
        let mut command = match &self.ns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        command
            .args(args)
            .env("CONTAINERS_CONF", self.path("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.path("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", self.path("registries.conf"))
            .stdin(Stdio::null())
            .output()
            .expect("run podman")
    }

    /// `podman ARGS`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "{}podman {}: {}",
            self.ns
                .as_ref()
                .map(|n| format!("{n}: "))
                .unwrap_or_default(),
            args.join(" "),
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Removes every container (`rm -f`, no grace).
    pub fn rm_all(&self) -> Output {
        self.cmd(&["rm", "-f", "-a", "-t", "0"])
    }

    /// What is left of this world on the host: mounts under its
    /// directory, its containers' network namespaces, its cgroups, the
    /// directory itself.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = mounts_under(&self.dir);
        left.extend(
            self.sandboxes
                .borrow()
                .iter()
                .filter(|s| Path::new(s).exists())
                .cloned(),
        );
        left.extend(
            cgroup_roots()
                .into_iter()
                .map(|r| r.join(&self.cgroup))
                .filter(|c| c.exists())
                .map(|c| c.display().to_string()),
        );
        if self.dir.exists() {
            left.push(self.dir.display().to_string());
        }
        left
    }

    /// Removes everything: containers, then whatever podman left mounted,
    /// the network namespaces, the cgroups, the directory.
    pub fn clean(&self) {
        let _ = self.rm_all();
        for m in mounts_under(&self.dir).iter().rev() {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for s in self.sandboxes.borrow().iter() {
            if Path::new(s).exists() {
                let _ = Command::new("umount")
                    .args(["-l", s])
                    .stderr(Stdio::null())
                    .status();
                let _ = fs::remove_file(s);
            }
        }
        // conmon may still be exiting: its cgroup is busy until it has.
        let cgroups: Vec<PathBuf> = cgroup_roots()
            .into_iter()
            .map(|r| r.join(&self.cgroup))
            .collect();
        wait_until(Duration::from_secs(5), || {
            cgroups.iter().for_each(|c| remove_cgroup(c));
            cgroups.iter().all(|c| !c.exists())
        });
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PodmanWorld {
    fn drop(&mut self) {
        self.clean();
    }
}
