//! One kernel OVS datapath owned by weft: created named after the weft
//! interface (its local port, port 0, is an internal device of that name),
//! with a VXLAN vport on weft's fastdp UDP port; deleted on drop and, if
//! a previous run left it behind, at creation.

use super::attr::*;
use super::genl::{resolve_family, GenlSocket, NlError, OvsMessage, Reply};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The datapath's local port number (the internal device named like the datapath).
pub const LOCAL_PORT: u32 = 0;

/// Resolved ids of the four OVS generic-netlink families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Families {
    /// `ovs_datapath`.
    pub datapath: u16,
    /// `ovs_vport`.
    pub vport: u16,
    /// `ovs_flow`.
    pub flow: u16,
    /// `ovs_packet`.
    pub packet: u16,
}

impl Families {
    /// Resolves all four; an error names the first missing family.
    pub fn resolve() -> Result<Families, String> {
        let one = |name: &str| -> Result<u16, String> {
            match resolve_family(name) {
                Ok(Some(id)) => Ok(id),
                Ok(None) => Err(format!(
                    "generic-netlink family {name} not found: the openvswitch kernel module is not loaded (modprobe openvswitch)"
                )),
                Err(e) => Err(format!("looking up generic-netlink family {name}: {e}")),
            }
        };
        Ok(Families {
            datapath: one(FAMILY_DATAPATH)?,
            vport: one(FAMILY_VPORT)?,
            flow: one(FAMILY_FLOW)?,
            packet: one(FAMILY_PACKET)?,
        })
    }
}

/// A flow as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEntry {
    /// The match.
    pub key: FlowKey,
    /// What it does.
    pub actions: Vec<Action>,
    /// Packets that matched.
    pub packets: u64,
    /// Bytes that matched.
    pub bytes: u64,
}

/// `struct ovs_dp_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DatapathStats {
    /// Packets that matched a flow (stayed in the kernel).
    pub hit: u64,
    /// Packets sent up as misses.
    pub missed: u64,
    /// Misses lost (upcall queue full).
    pub lost: u64,
    /// Flows installed.
    pub flows: u64,
}

/// A packet that matched no flow, as sent up by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Miss {
    /// The Ethernet frame.
    pub packet: Vec<u8>,
    /// The kernel's full flow key, raw (passed back verbatim on execute).
    pub key_raw: Vec<u8>,
    /// The parts weft decides on.
    pub key: FlowKey,
}

/// A weft-owned OVS datapath.
pub struct Datapath {
    name: String,
    families: Families,
    control: GenlSocket,
    upcalls: GenlSocket,
    dp_ifindex: i32,
    vxlan_port: u32,
    owned: bool,
}

fn msg(cmd: u8, version: u8, dp_ifindex: i32, attrs: Vec<Attr>) -> OvsMessage {
    OvsMessage {
        cmd,
        version,
        dp_ifindex,
        attrs,
    }
}

impl Datapath {
    /// Creates datapath `name` (deleting a stale one of that name first)
    /// with a VXLAN vport listening on UDP `vxlan_udp_port`.
    pub fn create(name: &str, vxlan_udp_port: u16) -> Result<Datapath, String> {
        let families = Families::resolve()?;
        let mut control = GenlSocket::open().map_err(|e| e.to_string())?;
        let upcalls = GenlSocket::open().map_err(|e| e.to_string())?;
        if datapath_exists(&mut control, families, name) {
            delete_with_deadline(name, DELETE_DEADLINE)
                .map_err(|e| format!("a stale OVS datapath {name} from an earlier run: {e}"))?;
            tracing::info!(
                datapath = name,
                "deleted a stale OVS datapath left by an earlier run"
            );
        }
        let replies = control
            .request_with(
                families.datapath,
                &format!("creating OVS datapath {name}"),
                // ECHO: the kernel multicasts the new object; with ECHO it
                // also comes back to us (its dp_ifindex).
                NLM_F_CREATE | NLM_F_ECHO,
                msg(
                    CMD_NEW,
                    DATAPATH_VERSION,
                    0,
                    vec![
                        Attr::string(DP_ATTR_NAME, name),
                        Attr::u32(DP_ATTR_UPCALL_PID, upcalls.port_id()),
                    ],
                ),
            )
            .map_err(|e| e.to_string())?;
        let dp_ifindex = replies
            .first()
            .map(|m| m.dp_ifindex)
            .filter(|i| *i > 0)
            .ok_or_else(|| {
                format!("creating OVS datapath {name}: the kernel did not say its ifindex")
            })?;
        let mut datapath = Datapath {
            name: name.to_string(),
            families,
            control,
            upcalls,
            dp_ifindex,
            vxlan_port: 0,
            owned: true,
        };
        let vport_name = format!("vxlan-{vxlan_udp_port}");
        let replies = datapath
            .control
            .request_with(
                families.vport,
                &format!("creating VXLAN vport {vport_name} (UDP port {vxlan_udp_port}) on datapath {name}"),
                NLM_F_CREATE | NLM_F_ECHO,
                msg(
                    CMD_NEW,
                    OTHER_VERSION,
                    dp_ifindex,
                    vec![
                        Attr::u32(VPORT_ATTR_TYPE, VPORT_TYPE_VXLAN),
                        Attr::string(VPORT_ATTR_NAME, &vport_name),
                        Attr::u32(VPORT_ATTR_UPCALL_PID, datapath.upcalls.port_id()),
                        Attr::nested(VPORT_ATTR_OPTIONS, vec![Attr::u16(TUNNEL_ATTR_DST_PORT, vxlan_udp_port)]),
                    ],
                ),
            )
            .map_err(|e| e.to_string())?;
        datapath.vxlan_port = replies
            .first()
            .and_then(|m| m.attr(VPORT_ATTR_PORT_NO))
            .and_then(|v| v.get(..4))
            .and_then(|v| v.try_into().ok())
            .map(u32::from_ne_bytes)
            .ok_or_else(|| {
                format!("creating VXLAN vport {vport_name}: the kernel did not say its port number")
            })?;
        Ok(datapath)
    }

    /// Opens an existing datapath by name without taking ownership (for
    /// inspection: dumping flows and stats from another process).
    pub fn open_existing(name: &str) -> Result<Datapath, String> {
        let families = Families::resolve()?;
        let mut control = GenlSocket::open().map_err(|e| e.to_string())?;
        let upcalls = GenlSocket::open().map_err(|e| e.to_string())?;
        let replies = lookup(&mut control, families, name).map_err(|e| e.to_string())?;
        let dp_ifindex = replies
            .first()
            .map(|m| m.dp_ifindex)
            .ok_or_else(|| format!("no OVS datapath {name}"))?;
        Ok(Datapath {
            name: name.to_string(),
            families,
            control,
            upcalls,
            dp_ifindex,
            vxlan_port: 0,
            owned: false,
        })
    }

    /// The datapath (and local device) name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Datapath port number of the VXLAN vport.
    pub fn vxlan_port(&self) -> u32 {
        self.vxlan_port
    }

    /// File descriptor on which misses arrive (poll it for readability).
    pub fn upcall_fd(&self) -> i32 {
        self.upcalls.raw_fd()
    }

    /// Installs (or replaces the actions of) the flow matching `key`.
    pub fn install_flow(&mut self, key: &FlowKey, actions: &[Action]) -> Result<(), NlError> {
        let attrs = vec![
            Attr::nested(FLOW_ATTR_KEY, key.to_match_attrs()),
            Attr::nested(
                FLOW_ATTR_ACTIONS,
                actions.iter().map(Action::to_attr).collect(),
            ),
        ];
        self.control
            .request_with(
                self.families.flow,
                "installing an OVS flow",
                NLM_F_CREATE,
                msg(CMD_NEW, OTHER_VERSION, self.dp_ifindex, attrs),
            )
            .map(|_| ())
    }

    /// Deletes the flow matching `key` (ENOENT if it is already gone).
    pub fn delete_flow(&mut self, key: &FlowKey) -> Result<(), NlError> {
        let attrs = vec![Attr::nested(FLOW_ATTR_KEY, key.to_match_attrs())];
        self.control
            .request(
                self.families.flow,
                "deleting an OVS flow",
                msg(CMD_DEL, OTHER_VERSION, self.dp_ifindex, attrs),
            )
            .map(|_| ())
    }

    /// Deletes every flow of the datapath (peers or routes changed).
    pub fn flush_flows(&mut self) -> Result<(), NlError> {
        self.control
            .request(
                self.families.flow,
                "flushing OVS flows",
                msg(CMD_DEL, OTHER_VERSION, self.dp_ifindex, Vec::new()),
            )
            .map(|_| ())
    }

    /// All flows with their counters.
    pub fn dump_flows(&mut self) -> Result<Vec<FlowEntry>, NlError> {
        let replies = self.control.dump(
            self.families.flow,
            "dumping OVS flows",
            msg(CMD_GET, OTHER_VERSION, self.dp_ifindex, Vec::new()),
        )?;
        let mut flows = Vec::with_capacity(replies.len());
        for reply in replies {
            let key = FlowKey::parse(reply.attr(FLOW_ATTR_KEY).unwrap_or(&[]))?;
            let actions = Action::parse_list(reply.attr(FLOW_ATTR_ACTIONS).unwrap_or(&[]))?;
            let (packets, bytes) = match reply.attr(FLOW_ATTR_STATS) {
                Some(v) => parse_flow_stats(v)?,
                None => (0, 0),
            };
            flows.push(FlowEntry {
                key,
                actions,
                packets,
                bytes,
            });
        }
        Ok(flows)
    }

    /// Hit/miss/lost counters and the flow count.
    pub fn stats(&mut self) -> Result<DatapathStats, NlError> {
        let replies = self.control.request(
            self.families.datapath,
            "reading OVS datapath stats",
            msg(CMD_GET, DATAPATH_VERSION, self.dp_ifindex, Vec::new()),
        )?;
        let raw = replies
            .first()
            .and_then(|m| m.attr(DP_ATTR_STATS))
            .ok_or_else(|| NlError::Parse("datapath reply without stats".into()))?;
        let word = |i: usize| -> Result<u64, NlError> {
            raw.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
                .ok_or_else(|| {
                    NlError::Parse(format!("datapath stats: {} bytes, expected 32", raw.len()))
                })
        };
        Ok(DatapathStats {
            hit: word(0)?,
            missed: word(1)?,
            lost: word(2)?,
            flows: word(3)?,
        })
    }

    /// Applies `actions` to one packet (the miss that started a flow, or a
    /// heartbeat). `key_raw` is the kernel's own key for it, or one built
    /// from [`FlowKey::to_match_attrs`] for packets weft originates.
    pub fn execute(
        &mut self,
        packet: &[u8],
        key_raw: &[u8],
        actions: &[Action],
    ) -> Result<(), NlError> {
        let attrs = vec![
            Attr::bytes(PACKET_ATTR_PACKET, packet),
            Attr::bytes(PACKET_ATTR_KEY, key_raw),
            Attr::nested(
                PACKET_ATTR_ACTIONS,
                actions.iter().map(Action::to_attr).collect(),
            ),
        ];
        self.control
            .request(
                self.families.packet,
                "executing a packet",
                msg(PACKET_CMD_EXECUTE, OTHER_VERSION, self.dp_ifindex, attrs),
            )
            .map(|_| ())
    }

    /// Waits up to `timeout_ms` for misses and returns those that arrived.
    /// Unparsable misses are logged and dropped.
    pub fn receive_misses(&mut self, timeout_ms: u64) -> Result<Vec<Miss>, NlError> {
        self.upcalls.set_recv_timeout(timeout_ms.max(1));
        let mut misses = Vec::new();
        for item in self.upcalls.receive()? {
            match item {
                Ok(Reply::Message(m)) if m.cmd == PACKET_CMD_MISS => {
                    let (Some(packet), Some(key_raw)) =
                        (m.attr(PACKET_ATTR_PACKET), m.attr(PACKET_ATTR_KEY))
                    else {
                        tracing::warn!("OVS miss without packet or key; dropped");
                        continue;
                    };
                    match FlowKey::parse(key_raw) {
                        Ok(key) => misses.push(Miss {
                            packet: packet.to_vec(),
                            key_raw: key_raw.to_vec(),
                            key,
                        }),
                        Err(e) => tracing::debug!(
                            "OVS miss with a key weft does not handle ({e}); dropped"
                        ),
                    }
                }
                Ok(other) => tracing::debug!("unexpected message on the upcall socket: {other:?}"),
                Err(e) => tracing::warn!("malformed message on the upcall socket: {e}"),
            }
        }
        Ok(misses)
    }

    /// Returns the misses queued now without waiting (for an event loop
    /// that polls [`Datapath::upcall_fd`]); at most `limit` datagrams are
    /// read so one burst cannot starve the loop.
    pub fn take_misses(&mut self, limit: usize) -> Result<Vec<Miss>, NlError> {
        let mut misses = Vec::new();
        for _ in 0..limit {
            let Some(items) = self.upcalls.try_receive()? else {
                break;
            };
            for item in items {
                match item {
                    Ok(Reply::Message(m)) if m.cmd == PACKET_CMD_MISS => {
                        let (Some(packet), Some(key_raw)) =
                            (m.attr(PACKET_ATTR_PACKET), m.attr(PACKET_ATTR_KEY))
                        else {
                            continue;
                        };
                        if let Ok(key) = FlowKey::parse(key_raw) {
                            misses.push(Miss {
                                packet: packet.to_vec(),
                                key_raw: key_raw.to_vec(),
                                key,
                            });
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!("malformed message on the upcall socket: {e}"),
                }
            }
        }
        Ok(misses)
    }

    /// Sends a frame weft made itself (a heartbeat) through `actions`, as
    /// if it had entered on the local port.
    pub fn execute_from_local(&mut self, packet: &[u8], actions: &[Action]) -> Result<(), NlError> {
        use netlink_packet_core::Emitable;
        let attrs = vec![Attr::u32(KEY_ATTR_IN_PORT, LOCAL_PORT)];
        let mut key_raw = vec![0u8; attrs.as_slice().buffer_len()];
        attrs.as_slice().emit(&mut key_raw);
        self.execute(packet, &key_raw, actions)
    }

    /// Deletes the datapath (and with it the local device, the VXLAN vport
    /// and every flow), waiting at most [`DELETE_DEADLINE`] for the kernel.
    pub fn delete(&mut self) -> Result<(), DeleteError> {
        if !self.owned {
            return Ok(());
        }
        self.owned = false;
        delete_with_deadline(&self.name, DELETE_DEADLINE)
    }
}

/// How long weft waits for the kernel to delete a datapath. A healthy
/// kernel takes milliseconds; some never finish (known kernel issue
/// `ovs-tunnel-vport-release-hang`), and weft must still exit.
pub const DELETE_DEADLINE: Duration = Duration::from_secs(10);

/// Why a datapath could not be deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// The kernel refused the deletion.
    #[error("deleting OVS datapath {name}: {reason}")]
    Refused {
        /// The datapath.
        name: String,
        /// What the kernel (or the deleting process) said.
        reason: String,
    },
    /// The kernel did not answer within the deadline; the deleting process
    /// is left stuck in the kernel and weft goes on without it.
    #[error("deleting OVS datapath {name} did not complete within {} s: the kernel is stuck releasing its devices; {blame}; weft exits without waiting (the datapath and its network namespace stay until reboot)", waited.as_secs())]
    TimedOut {
        /// The datapath.
        name: String,
        /// How long weft waited.
        waited: Duration,
        /// The known kernel issue this kernel has, or a request to report it.
        blame: String,
    },
}

/// The prefix of the lines `weft fastdp delete` prints: one just before it
/// asks the kernel, one with the outcome. The parent knows from them that
/// the child really is weft (and not, say, a test harness that
/// `/proc/self/exe` pointed at) and when the kernel's part began.
const DELETE_MARKER: &str = "weft-odp-delete:";

/// How long the child may take to start (exec from a slow disk, a loaded
/// host) before it asks the kernel; not part of the kernel's deadline.
const DELETE_START_LIMIT: Duration = Duration::from_secs(30);

/// Deletes datapath `name` in a child process (`weft fastdp delete`) and
/// gives the kernel at most `deadline` to complete it. A deletion the
/// kernel never completes blocks its caller in uninterruptible sleep, where
/// no signal reaches it, and a process is not gone until every thread is:
/// only a separate process lets weft exit. Falls back to deleting
/// in-process when the child cannot be started or is not weft.
pub fn delete_with_deadline(name: &str, deadline: Duration) -> Result<(), DeleteError> {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let refused = |reason: String| DeleteError::Refused {
        name: name.to_string(),
        reason,
    };
    let in_process = |why: String| {
        tracing::debug!("deleting datapath {name} in-process: {why}");
        delete_in_process(name).map(|_| ()).map_err(refused)
    };
    let spawned = Command::new("/proc/self/exe")
        .args(["fastdp", "delete", "--iface", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return in_process(format!("cannot start a child process: {e}")),
    };
    // The child's lines arrive through a channel so that waiting for them
    // has a deadline; the reader thread ends with the pipe.
    let (lines_tx, lines) = crossbeam_channel::unbounded::<String>();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    let timed_out = |waited: Duration| DeleteError::TimedOut {
        name: name.to_string(),
        waited,
        blame: blame_kernel(),
    };
    match lines.recv_timeout(DELETE_START_LIMIT) {
        Ok(line) if line.starts_with(DELETE_MARKER) => {}
        Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            let _ = child.wait();
            return in_process("the child process was not weft".to_string());
        }
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            let _ = child.kill();
            let _ = child.wait();
            return in_process(format!(
                "the child process did not start within {} s",
                DELETE_START_LIMIT.as_secs()
            ));
        }
    }
    // The kernel's part: the outcome line, or the pipe closing on an error.
    let asked = Instant::now();
    match lines.recv_timeout(deadline) {
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
            // Not killed: it cannot be (uninterruptible sleep); not waited
            // for: that is the hang. Init reaps it if it ever ends.
            Err(timed_out(asked.elapsed()))
        }
        Ok(_) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
            let status = child
                .wait()
                .map_err(|e| refused(format!("waiting for the deleting process: {e}")))?;
            if status.success() {
                Ok(())
            } else {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = pipe.read_to_string(&mut err);
                }
                Err(refused(
                    err.trim().trim_start_matches("weft fastdp: ").to_string(),
                ))
            }
        }
    }
}

/// What to say about the kernel when a deletion hangs: the known issue it
/// has, or that it is not known yet.
fn blame_kernel() -> String {
    use crate::host::known_issues::kernel_blockers;
    use crate::host::plan::Datapath as PlannedDatapath;
    let kernel = crate::host::facts::running_kernel();
    match &kernel {
        Ok(release) => match kernel_blockers(release, PlannedDatapath::Fastdp).first() {
            Some(issue) => format!(
                "kernel {} ({}) has known issue {}: {}",
                release.raw,
                release.describe(),
                issue.id,
                issue.mitigation
            ),
            None => format!(
                "kernel {} ({}) is not in weft's known-issues table: please report it with the output of `uname -rv` and `dmesg | grep unregister_netdevice`",
                release.raw,
                release.describe()
            ),
        },
        Err(e) => format!("the kernel release cannot be read ({e})"),
    }
}

/// `weft fastdp delete --iface NAME`: deletes datapath NAME in this process
/// and prints the marker [`delete_with_deadline`] looks for.
pub fn delete_command(name: &str) -> Result<(), String> {
    use std::io::Write;
    println!("{DELETE_MARKER} deleting {name}");
    let _ = std::io::stdout().flush();
    let deleted = delete_in_process(name)?;
    println!(
        "{DELETE_MARKER} {} {name}",
        if deleted { "deleted" } else { "absent" }
    );
    Ok(())
}

/// Deletes datapath `name` here and now; `Ok(false)` if there was none.
fn delete_in_process(name: &str) -> Result<bool, String> {
    let families = Families::resolve()?;
    let mut control = GenlSocket::open().map_err(|e| e.to_string())?;
    match delete_by_name(&mut control, families, name) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.errno(), Some(libc::ENOENT) | Some(libc::ENODEV)) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.delete() {
            tracing::warn!("{e}");
        }
    }
}

/// Asks the kernel for datapath `name` (OVS_DP_CMD_GET).
fn lookup(
    control: &mut GenlSocket,
    families: Families,
    name: &str,
) -> Result<Vec<OvsMessage>, NlError> {
    control.request(
        families.datapath,
        &format!("looking up OVS datapath {name}"),
        msg(
            CMD_GET,
            DATAPATH_VERSION,
            0,
            vec![Attr::string(DP_ATTR_NAME, name)],
        ),
    )
}

/// Whether datapath `name` exists.
fn datapath_exists(control: &mut GenlSocket, families: Families, name: &str) -> bool {
    lookup(control, families, name).is_ok_and(|replies| !replies.is_empty())
}

fn delete_by_name(control: &mut GenlSocket, families: Families, name: &str) -> Result<(), NlError> {
    control
        .request(
            families.datapath,
            &format!("deleting OVS datapath {name}"),
            msg(
                CMD_DEL,
                DATAPATH_VERSION,
                0,
                vec![Attr::string(DP_ATTR_NAME, name)],
            ),
        )
        .map(|_| ())
}

/// Whether `addr` is a usable unicast peer address for the tunnel (the
/// kernel refuses an all-zero destination of either family).
pub fn is_tunnel_destination(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}
