//! A LAN between two hosts: two network namespaces joined by a veth pair, forwarded by the
//! kernel (no emulator, so no added delay, loss or rate limit). `link-bench --lan` runs the
//! source side in A and the destination side in B, the way two hosts on one switch would.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::cluster::ip;
use crate::error::{Error, Result};

pub const ADDR_A: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);
pub const ADDR_B: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 2);

/// The namespaces exist while this lives; dropping it deletes them (and with them the veth).
pub struct LanPair {
    ns_a: String,
    ns_b: String,
}

impl LanPair {
    /// Creates the pair with `mtu` on both ends of the veth.
    pub fn start(mtu: u32) -> Result<LanPair> {
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::usage("--lan needs root (network namespaces)"));
        }
        // Leftovers of a run that was killed before its Drop ran carry a dead pid: remove them.
        for ns in
            std::fs::read_dir("/run/netns").map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()).unwrap_or_default()
        {
            let pid = ns.strip_prefix("ferry-lan").and_then(|r| r.split_once('-')).and_then(|(p, _)| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = ip(&["netns", "del", &ns]);
            }
        }
        let tag = std::process::id();
        let pair = LanPair { ns_a: format!("ferry-lan{tag}-a"), ns_b: format!("ferry-lan{tag}-b") };
        // Created one by one, each recorded in `pair` first, so a failure half-way is cleaned
        // up by Drop.
        ip(&["netns", "add", &pair.ns_a])?;
        ip(&["netns", "add", &pair.ns_b])?;
        let (va, vb) = (format!("fla{tag}"), format!("flb{tag}"));
        ip(&["link", "add", &va, "netns", &pair.ns_a, "type", "veth", "peer", "name", &vb, "netns", &pair.ns_b])?;
        for (ns, dev, addr) in [(&pair.ns_a, &va, ADDR_A), (&pair.ns_b, &vb, ADDR_B)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "mtu", &mtu.to_string()])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    pub fn ns_a(&self) -> &str {
        &self.ns_a
    }

    pub fn ns_b(&self) -> &str {
        &self.ns_b
    }

    pub fn command_in_a(&self, program: &str) -> Command {
        crate::wan::ns_command(&self.ns_a, program)
    }

    pub fn command_in_b(&self, program: &str) -> Command {
        crate::wan::ns_command(&self.ns_b, program)
    }
}

impl Drop for LanPair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
