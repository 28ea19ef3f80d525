//! An interface's XDP program: query, attach, detach (IFLA_XDP in
//! RTM_GETLINK / RTM_SETLINK). Loading programs is the AF_XDP driver's
//! (bpf(2)); this only hangs a loaded program on a link.

use std::os::fd::RawFd;

use netlink_packet_core::NLM_F_ACK;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use netlink_packet_route::RouteNetlinkMessage;

use super::{Netlink, Result};

/// XDP_FLAGS_UPDATE_IF_NOEXIST (linux/if_link.h): fail with EBUSY rather
/// than replace a program that is already attached.
const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
/// Generic (SKB) mode.
const XDP_FLAGS_SKB_MODE: u32 = 2;
/// Native (driver) mode.
const XDP_FLAGS_DRV_MODE: u32 = 4;
/// Offloaded to the NIC.
const XDP_FLAGS_HW_MODE: u32 = 8;

/// How an XDP program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before any skb exists.
    Native,
    /// Generic / SKB: works on every interface, after the kernel built an skb.
    Generic,
    /// Offloaded to the NIC.
    Offload,
    /// Several at once.
    Multi,
}

impl AttachMode {
    /// The attach flag that selects this mode.
    fn flag(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
            AttachMode::Offload => XDP_FLAGS_HW_MODE,
            AttachMode::Multi => 0,
        }
    }

    /// How `weft status` names the mode.
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Offload => "offload",
            AttachMode::Multi => "multi",
        }
    }
}

/// The XDP program attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpProgram {
    /// The kernel's program id.
    pub id: u32,
    /// How it is attached.
    pub mode: AttachMode,
}

impl Netlink {
    /// The XDP program attached to link `index`, or None when there is none
    /// (or no such link).
    pub fn xdp_program(&mut self, index: u32) -> Result<Option<XdpProgram>> {
        Ok(self.link_by_index(index)?.and_then(|link| link.xdp))
    }

    fn set_xdp(&mut self, index: u32, what: &str, fd: RawFd, flags: u32) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = vec![LinkAttribute::Xdp(vec![
            LinkXdp::Fd(fd),
            LinkXdp::Flags(flags),
        ])];
        self.request(what, RouteNetlinkMessage::SetLink(message), NLM_F_ACK)?;
        Ok(())
    }

    /// Attaches the loaded program `program_fd` to link `index` in `mode`
    /// (Native or Generic), never replacing a program already there (that
    /// is EBUSY).
    pub fn attach_xdp(
        &mut self,
        index: u32,
        name: &str,
        program_fd: RawFd,
        mode: AttachMode,
    ) -> Result<()> {
        self.set_xdp(
            index,
            &format!("attach the XDP program to {name} in {} mode", mode.name()),
            program_fd,
            XDP_FLAGS_UPDATE_IF_NOEXIST | mode.flag(),
        )
    }

    /// Detaches whatever XDP program is attached to link `index` in `mode`.
    pub fn detach_xdp(&mut self, index: u32, name: &str, mode: AttachMode) -> Result<()> {
        self.set_xdp(
            index,
            &format!("detach the XDP program from {name}"),
            -1,
            mode.flag(),
        )
    }
}
