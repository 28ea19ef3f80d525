//! IPAM's state on disk: `allocations.json` in `--ipalloc-dir`, replaced
//! atomically (written to a temporary file, synced, renamed over the old
//! one, directory synced), so a crash leaves the old state or the new one,
//! never half of either.

use super::{Family, State};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file name inside the IPAM directory (of the IPv4 range; the IPv6
/// range's is [`Family::STORE_FILE`], `allocations6.json`).
pub const FILE: &str = "allocations.json";

/// The IPv4 state file of `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The state file of family `A` in `dir`.
pub fn path_of<A: Family>(dir: &Path) -> PathBuf {
    dir.join(A::STORE_FILE)
}

/// Reads the state of family `A` in `dir`: `None` when there is none yet;
/// an error names the file and what is wrong with it.
pub fn load<A: Family>(dir: &Path) -> Result<Option<State<A>>, String> {
    let file = path_of::<A>(dir);
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read IPAM state {}: {e}", file.display())),
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        format!(
            "IPAM state {} is not valid ({e}); it records the addresses pods hold: repair it, or remove it once no pod of this host runs",
            file.display()
        )
    })
}

/// Writes `state` to `dir` atomically, creating the directory (mode 0700)
/// if needed.
pub fn save<A: Family>(dir: &Path, state: &State<A>) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the IPAM directory {}: {e}", dir.display()))?;
    let file = path_of::<A>(dir);
    let tmp = dir.join(format!(".{}.tmp", A::STORE_FILE));
    let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, &file)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write IPAM state {}: {e}", file.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_a_missing_file_is_no_state() {
        let dir = std::env::temp_dir().join(format!("weft-ipam-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(load::<std::net::Ipv4Addr>(&dir).unwrap(), None);
        let state: State = State {
            range: "10.32.0.0/16".into(),
            chunks: vec!["10.32.0.0/26".into()],
            ..State::default()
        };
        save(&dir, &state).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(state));
        assert!(!dir.join(".allocations.json.tmp").exists());
        fs::write(path(&dir), b"{nonsense").unwrap();
        assert!(load::<std::net::Ipv4Addr>(&dir)
            .unwrap_err()
            .contains("allocations.json"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
