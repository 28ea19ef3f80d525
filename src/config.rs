//! The `weft launch --config FILE` file: TOML whose keys are the launch
//! flags without their leading dashes (`overlay`, `peer`, `secret-file`,
//! ...), plus a `[timers]` table. Flags on the command line win.
//!
//! Every error names the file, the line and the key. Paths in the file are
//! relative to the file's directory. Keys of older weft versions
//! (`peers`, `secret_file`, ...) still work, each with a warning naming the
//! new key.

use serde::de::DeserializeOwned;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every top-level key, with what its value is (for the README and errors).
/// These are exactly the `weft launch` flags minus `--config`.
pub const KEYS: &[(&str, &str)] = &[
    (
        "overlay",
        "string or list: this host's overlay address/prefix (one IPv4 and one IPv6 for dual stack)",
    ),
    ("listen", "string: IP:PORT of the control and data sockets"),
    (
        "peer",
        "list of strings (or one string): IP[:PORT] or HOST[:PORT] of peers",
    ),
    ("secret-file", "path: the network secret"),
    ("key-file", "path: this host's private key"),
    ("iface-name", "string: name of the TUN/TAP device"),
    ("status-addr", "string: IP:PORT of the status server"),
    ("vni", "integer: VXLAN network identifier"),
    ("cipher", "string: auto, chacha20poly1305 or aes256gcm"),
    ("name", "string: name shown to peers"),
    ("mode", "string: auto, fastdp, xdp, udp or plain"),
    ("force", "bool: start an unsafe explicit mode"),
    ("allow-xdp", "bool: let --mode auto attach AF_XDP"),
    ("no-offload", "bool: turn TUN offloads off"),
    (
        "workers",
        "integer: datapath worker threads (default: one per core)",
    ),
    ("iface", "string: tun or bridge"),
    ("bridge", "string: bridge name in bridge mode"),
    (
        "mac-quota",
        "integer: most MACs learned behind one peer or VTEP",
    ),
    ("insecure-plaintext", "bool: allow unencrypted frames"),
    ("vxlan-port", "integer: VXLAN UDP port (plaintext mode)"),
    ("vtep", "list of strings: static VXLAN endpoints"),
    ("trusted-subnet", "list of strings: CIDRs allowed on fastdp"),
    ("fastdp-port", "integer: UDP port of the kernel VXLAN vport"),
    (
        "ca-cert",
        "list of paths (or one path): network CA certificates",
    ),
    ("cert", "path: this host's certificate"),
    ("revoked", "path: revoked certificate fingerprints"),
    (
        "ipalloc-range",
        "string, or a list of one IPv4 and one IPv6: CIDR ranges IPAM hands pod addresses out of",
    ),
    (
        "ipalloc-dir",
        "path: where IPAM records the addresses pods hold",
    ),
    (
        "ipalloc-reclaim-after",
        "string: how long a departed peer's chunks stay reserved (e.g. 1h, 30m, 90s)",
    ),
    (
        "cni-socket",
        "string: abstract socket name the CNI plugin talks to",
    ),
    (
        "ipalloc-pod-cidr",
        "string, or a list of one IPv4 and one IPv6: this host's own pod ranges, each inside the ipalloc-range of its family",
    ),
    (
        "masquerade",
        "bool: NAT for pods' traffic leaving ipalloc-range (nftables)",
    ),
    (
        "kube",
        "bool: peers and the pod range from the Kubernetes API",
    ),
    ("kube-api", "string: the Kubernetes API's URL"),
    ("kube-token-file", "path: the Kubernetes API bearer token"),
    ("kube-ca-file", "path: the Kubernetes cluster CA (PEM)"),
    ("kube-node-name", "string: this host's Kubernetes node name"),
    (
        "kube-refresh",
        "string: how often the node list is read (e.g. 30s)",
    ),
    ("timers", "table: timer overrides (see [timers])"),
];

/// Keys of the `[timers]` table (no flags; for tests and unusual networks).
pub const TIMER_KEYS: &[&str] = &[
    "heartbeat_connecting_ms",
    "heartbeat_established_ms",
    "missed_limit",
    "rekey_after_secs",
    "mac_age_secs",
    "fastdp_heartbeat_ms",
    "fastdp_missed_limit",
    "fastdp_retry_secs",
    "fastdp_flow_idle_secs",
    "gossip_interval_ms",
    "peer_failure_timeout_secs",
];

/// Keys of earlier versions and the key that replaces each. `offload` is
/// special: `offload = false` becomes `no-offload = true`.
pub const DEPRECATED: &[(&str, &str)] = &[
    ("peers", "peer"),
    ("secret_file", "secret-file"),
    ("key_file", "key-file"),
    ("iface_name", "iface-name"),
    ("status_addr", "status-addr"),
    ("insecure_plaintext", "insecure-plaintext"),
    ("vxlan_port", "vxlan-port"),
    ("vteps", "vtep"),
    ("trusted_subnets", "trusted-subnet"),
    ("fastdp_port", "fastdp-port"),
    ("allow_xdp", "allow-xdp"),
    ("offload", "no-offload"),
];

/// A loaded config file.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// Where it was read from (`None`: no `--config`).
    pub path: Option<PathBuf>,
    table: toml::Table,
    timers: toml::Table,
    /// 1-based line of each key as written (after renaming old keys).
    lines: HashMap<String, usize>,
    /// One line per deprecated key used (log them as warnings).
    pub deprecations: Vec<String>,
}

/// The 1-based line of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// The 1-based line where `key` is assigned (after `section`'s header, if
/// given), found by reading the text: `key =`, `"key" =` or `'key' =`.
fn find_key_line(text: &str, key: &str, section: Option<&str>) -> Option<usize> {
    let mut in_section = section.is_none();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let header = t.trim_start_matches('[').split(']').next().unwrap_or("");
            in_section = section.is_some_and(|s| header.trim() == s);
            continue;
        }
        if !in_section {
            continue;
        }
        for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
            if let Some(rest) = t.strip_prefix(&quoted) {
                if rest.trim_start().starts_with('=') {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

impl ConfigFile {
    /// Reads and checks `path`: TOML syntax, known keys, old keys renamed.
    /// The error is one line naming the file, the line and the key.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read --config {}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Like [`ConfigFile::load`] for text already read.
    pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, String> {
        let file = path.display();
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| format!(" line {}", line_of(text, s.start)))
                .unwrap_or_default();
            format!(
                "config {file}{at}: {}",
                e.message().trim().replace('\n', " ")
            )
        })?;
        let mut lines = HashMap::new();
        let mut deprecations = Vec::new();
        let line_text = |key: &str, section: Option<&str>| {
            find_key_line(text, key, section)
                .map(|l| format!(" line {l}"))
                .unwrap_or_default()
        };
        let keys: Vec<String> = table.keys().cloned().collect();
        for key in keys {
            let line = find_key_line(text, &key, None);
            let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
            if let Some((_, new)) = DEPRECATED.iter().find(|(old, _)| *old == key) {
                if table.contains_key(*new) {
                    return Err(format!(
                        "config {file}{at}: key {key} is the old name of {new}, which is also set; keep only {new}"
                    ));
                }
                let mut value = table.remove(&key).unwrap_or(toml::Value::Boolean(false));
                if key == "offload" {
                    let toml::Value::Boolean(on) = value else {
                        return Err(format!(
                            "config {file}{at}, key offload: expected true or false (write no-offload = true instead)"
                        ));
                    };
                    value = toml::Value::Boolean(!on);
                    deprecations.push(format!(
                        "config {file}{at}: key offload is deprecated; write no-offload = {}",
                        !on
                    ));
                } else {
                    deprecations.push(format!(
                        "config {file}{at}: key {key} is deprecated; write {new} (the flag's name)"
                    ));
                }
                table.insert((*new).to_string(), value);
                if let Some(l) = line {
                    lines.insert((*new).to_string(), l);
                }
                continue;
            }
            if !KEYS.iter().any(|(k, _)| *k == key) {
                let known: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
                return Err(format!(
                    "config {file}{at}: unknown key {key}; the keys are the `weft launch` flags without dashes: {}",
                    known.join(", ")
                ));
            }
            if let Some(l) = line {
                lines.insert(key, l);
            }
        }
        let timers = match table.remove("timers") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => {
                return Err(format!(
                    "config {file}{}, key timers: expected a table ([timers])",
                    line_text("timers", None)
                ))
            }
        };
        let mut normalized = toml::Table::new();
        for (key, value) in timers {
            let name = key.replace('-', "_");
            let at = line_text(&key, Some("timers"));
            if !TIMER_KEYS.contains(&name.as_str()) {
                return Err(format!(
                    "config {file}{at}: unknown key {key} in [timers]; known: {}",
                    TIMER_KEYS.join(", ")
                ));
            }
            if let Some(l) = find_key_line(text, &key, Some("timers")) {
                lines.insert(format!("timers.{name}"), l);
            }
            normalized.insert(name, value);
        }
        // In the order of the file, not of the keys.
        deprecations.sort_by_key(|line: &String| {
            line.split(" line ")
                .nth(1)
                .and_then(|t| t.split(':').next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        });
        Ok(ConfigFile {
            path: Some(path.to_path_buf()),
            table,
            timers: normalized,
            lines,
            deprecations,
        })
    }

    /// "config FILE line N, key KEY" for messages about a value from here.
    pub fn context(&self, key: &str) -> String {
        let file = self
            .path
            .as_deref()
            .map_or_else(|| "config".into(), |p| p.display().to_string());
        match self.lines.get(key) {
            Some(l) => format!("config {file} line {l}, key {key}"),
            None => format!("config {file}, key {key}"),
        }
    }

    /// Whether the file sets `key`.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    fn convert<T: DeserializeOwned>(
        &self,
        key: &str,
        value: Option<&toml::Value>,
        what: &str,
    ) -> Result<Option<T>, String> {
        let Some(value) = value else { return Ok(None) };
        value.clone().try_into::<T>().map(Some).map_err(|_| {
            format!(
                "{}: expected {what}, found {}",
                self.context(key),
                value.type_str()
            )
        })
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<Option<String>, String> {
        self.convert(key, self.table.get(key), "a string in quotes")
    }

    /// A bool value (`false` when absent).
    pub fn flag(&self, key: &str) -> Result<bool, String> {
        Ok(self
            .convert(key, self.table.get(key), "true or false")?
            .unwrap_or(false))
    }

    /// A number value.
    pub fn number<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.convert(key, self.table.get(key), "a number in range")
    }

    /// A list of strings; one string is a list of one.
    pub fn list(&self, key: &str) -> Result<Vec<String>, String> {
        match self.table.get(key) {
            Some(toml::Value::String(s)) => Ok(vec![s.clone()]),
            other => Ok(self
                .convert(key, other, "a list of strings, e.g. [\"198.18.0.2:6783\"]")?
                .unwrap_or_default()),
        }
    }

    /// A path, relative to the config file's directory when not absolute.
    pub fn path_value(&self, key: &str) -> Result<Option<PathBuf>, String> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        Ok(Some(self.resolve_path(&text)))
    }

    /// A path from this file, relative to its directory when not absolute.
    pub fn resolve_path(&self, text: &str) -> PathBuf {
        let path = PathBuf::from(text);
        if path.is_absolute() {
            return path;
        }
        let base = self
            .path
            .as_deref()
            .and_then(Path::parent)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        base.join(path)
    }

    /// A `[timers]` value.
    pub fn timer<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, String> {
        self.convert(&format!("timers.{key}"), self.timers.get(key), "a number")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        ConfigFile::parse(Path::new("/etc/weft/a.toml"), text)
    }

    #[test]
    fn keys_are_the_flag_names_and_paths_are_relative_to_the_file() {
        let c = parse(
            "overlay = \"10.40.0.1/16\"\npeer = [\"198.18.0.2\"]\nsecret-file = \"secret\"\nkey-file = \"/k\"\nallow-xdp = true\n",
        )
        .unwrap();
        assert_eq!(c.string("overlay").unwrap().unwrap(), "10.40.0.1/16");
        assert_eq!(c.list("peer").unwrap(), vec!["198.18.0.2"]);
        assert_eq!(
            c.path_value("secret-file").unwrap().unwrap(),
            PathBuf::from("/etc/weft/secret")
        );
        assert_eq!(
            c.path_value("key-file").unwrap().unwrap(),
            PathBuf::from("/k")
        );
        assert!(c.flag("allow-xdp").unwrap());
        assert!(c.deprecations.is_empty());
        let rel = ConfigFile::parse(Path::new("a.toml"), "key-file = \"k\"\n").unwrap();
        assert_eq!(
            rel.path_value("key-file").unwrap().unwrap(),
            PathBuf::from("./k")
        );
    }

    #[test]
    fn old_keys_work_with_a_warning_naming_the_new_key() {
        let c = parse("# comment\npeers = [\"198.18.0.2\"]\noffload = false\n").unwrap();
        assert_eq!(c.list("peer").unwrap(), vec!["198.18.0.2"]);
        assert!(c.flag("no-offload").unwrap());
        assert!(c.deprecations[0].contains("line 2") && c.deprecations[0].contains("write peer"));
        assert!(
            c.deprecations[1].contains("no-offload = true"),
            "{:?}",
            c.deprecations
        );
        let e = parse("peers = []\npeer = []\n").unwrap_err();
        assert!(e.contains("keep only peer"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("overlay = \"10.40.0.1/16\"\n\npeerz = []\n").unwrap_err();
        assert!(
            e.contains("/etc/weft/a.toml line 3") && e.contains("unknown key peerz"),
            "{e}"
        );
        // Syntax errors: the line of the mistake, not the one before.
        let e = parse("overlay = \"10.40.0.1/16\"\nlisten = 198.18.0.1\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let c = parse("overlay = \"x\"\nvni = \"seven\"\n").unwrap();
        let e = c.number::<u32>("vni").unwrap_err();
        assert!(e.contains("line 2, key vni") && e.contains("string"), "{e}");
        let c = parse("[timers]\nmissed-limit = 3\nbogus = 1\n").unwrap_err();
        assert!(c.contains("line 3") && c.contains("bogus"), "{c}");
        let c = parse("\n[timers]\nmissed-limit = \"x\"\n").unwrap();
        let e = c.timer::<u32>("missed_limit").unwrap_err();
        assert!(e.contains("line 3, key timers.missed_limit"), "{e}");
    }

    #[test]
    fn readme_lists_every_key() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
            .expect("README.md");
        for (key, _) in KEYS {
            assert!(
                readme.contains(&format!("| `{key}` |")),
                "README's config key table lacks `{key}`"
            );
        }
        for key in TIMER_KEYS {
            assert!(
                readme.contains(key),
                "README does not mention timer key {key}"
            );
        }
    }
}
