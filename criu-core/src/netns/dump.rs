//! Reading a tree's network namespace: the check before the freeze (every link must be
//! one the restore can make again) and the contents, read from a helper thread inside
//! it, written as CRIU's images.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use criu_images::{pb, ImageKind, ImageWriter};

use super::{conntrack, io_err, legacy_iptables, links, run_tool, sysctl, NetnsError};
use crate::sys::{self, Pid};

/// What a network namespace holds, as its images keep it.
#[derive(Debug, Default)]
pub struct NetnsContents {
    pub entry: pb::NetnsEntry,
    pub devices: Vec<pb::NetDeviceEntry>,
    /// The raw images, by file prefix (see [`super::RAW_IMAGES`]); an absent one is
    /// not written (its tool is not installed).
    pub raw: Vec<(&'static str, Vec<u8>)>,
}

/// Runs `work` on a helper thread inside `pid`'s network namespace.
fn in_netns_of<T: Send>(
    pid: Pid,
    work: impl FnOnce() -> Result<T, NetnsError> + Send,
) -> Result<T, NetnsError> {
    let link = format!("/proc/{}/ns/net", pid.0);
    let ns = File::open(&link).map_err(io_err(format!("opening {link}")))?;
    sys::in_namespace_thread(ns.as_fd(), libc::CLONE_NEWNET, work).map_err(io_err(format!(
        "entering the network namespace of {}",
        pid.0
    )))?
}

/// Refuses, by name, a link of `pid`'s network namespace that the restore could not
/// make again. Changes nothing.
pub fn check(pid: Pid) -> Result<(), NetnsError> {
    let links = in_netns_of(pid, || links::list().map_err(io_err("listing its links")))?;
    for l in &links {
        l.nd_type().map_err(NetnsError::Unsupported)?;
    }
    Ok(())
}

/// Everything `pid`'s network namespace holds (see the module doc of `netns`).
pub fn read(pid: Pid) -> Result<NetnsContents, NetnsError> {
    in_netns_of(pid, read_here)
}

/// [`read`], in the calling thread's namespace.
fn read_here() -> Result<NetnsContents, NetnsError> {
    let entry = sysctl::read_netns_entry().map_err(io_err("reading its sysctls"))?;
    let mut devices = Vec::new();
    for l in links::list().map_err(io_err("listing its links"))? {
        let ty = l.nd_type().map_err(NetnsError::Unsupported)?;
        let (conf4, conf6) = sysctl::read_devconf(&l.name)
            .map_err(io_err(format!("reading the sysctls of link {}", l.name)))?;
        let veth = ty == pb::NdType::Veth;
        devices.push(pb::NetDeviceEntry {
            r#type: ty as i32,
            ifindex: l.index,
            mtu: l.mtu,
            flags: l.flags,
            name: l.name.clone(),
            address: l.address.clone().filter(|_| ty != pb::NdType::Loopback),
            conf4,
            conf6,
            peer_ifindex: Some(if veth {
                l.link.unwrap_or(l.index)
            } else {
                l.index
            }),
            master: l.master,
            ..Default::default()
        });
    }
    let mut raw = Vec::new();
    for (name, args) in [
        ("ifaddr", &["addr", "save"][..]),
        ("route", &["route", "save"][..]),
        ("route6", &["-6", "route", "save"][..]),
    ] {
        raw.push((name, run_tool("ip", args, None)?));
    }
    // An `ip` without rule support says so; CRIU lets it fail too.
    raw.push((
        "rule",
        run_tool("ip", &["rule", "save"], None).unwrap_or_default(),
    ));
    for (name, family) in [("iptables", "iptables"), ("ip6tables", "ip6tables")] {
        if let Some(tool) = legacy_iptables(family, "save") {
            raw.push((name, run_tool(&tool, &[], None)?));
        }
    }
    if crate::netlock::find_tool("nft").is_some() {
        raw.push(("nftables", run_tool("nft", &["list", "ruleset"], None)?));
    }
    for table in [conntrack::Table::Conntrack, conntrack::Table::Expectations] {
        let what = format!("dumping its {} table", table.prefix());
        raw.push((
            table.prefix(),
            conntrack::dump(table).map_err(io_err(what))?,
        ));
    }
    Ok(NetnsContents {
        entry,
        devices,
        raw,
    })
}

fn kind(name: &str) -> &'static ImageKind {
    // Spelled here only, and all in the static table.
    ImageKind::by_name(name).unwrap_or_else(|| panic!("image kind {name} is missing"))
}

impl NetnsContents {
    /// Writes the images of namespace `id` into `dir`.
    pub fn write(&self, dir: &Path, id: u32) -> Result<(), NetnsError> {
        let k = kind("NETNS");
        let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
        w.write_entry(&self.entry)?;
        w.finish()?;
        let k = kind("NETDEV");
        let mut w = ImageWriter::create(dir.join(k.file_name(id)), k)?;
        for d in &self.devices {
            // As CRIU records it: a peer (a veth's, or the link itself) in this namespace.
            let d = pb::NetDeviceEntry {
                peer_nsid: d.peer_nsid.or(Some(id)),
                ..d.clone()
            };
            w.write_entry(&d)?;
        }
        w.finish()?;
        for (name, data) in &self.raw {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let path = dir.join(format!("{name}-{id}.img"));
            // Private, as every other image.
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .and_then(|mut f| f.write_all(data))
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(())
    }
}
