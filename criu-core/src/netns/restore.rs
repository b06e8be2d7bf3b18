//! Making a tree's network namespace again: a new namespace, made by a helper thread
//! and kept by an fd, filled from the images in CRIU's order (sysctls, links, addresses,
//! routes, rules, iptables, nftables) before any task exists. The root joins it as it
//! joins one named by `--join-ns net:PATH`; dropping the fd before that leaves nothing.

use std::fs::File;
use std::path::Path;

use criu_images::{pb, ImageReader};

use super::dump::NetnsContents;
use super::{conntrack, io_err, legacy_iptables, links, run_tool, sysctl, NetnsError, RAW_IMAGES};
use crate::sys;

/// The images of network namespace `id` in `dir`.
pub fn load(dir: &Path, id: u32) -> Result<NetnsContents, NetnsError> {
    let name = format!("netns-{id}.img");
    if !dir.join(&name).exists() {
        return Err(NetnsError::Unsupported(format!(
            "make the tree's network namespace again: the dump did not save it (no {name}:              it was declared external); join one with --join-ns net:PATH"
        )));
    }
    let mut r = ImageReader::open(dir.join(&name))?;
    let entry: pb::NetnsEntry = r.next_entry()?.ok_or_else(|| NetnsError::BadImage {
        image: name.clone(),
        what: "it holds no entry".into(),
    })?;
    if entry.ext_key.is_some() {
        return Err(NetnsError::Unsupported(format!(
            "restore an external network namespace ({name} names it by key {:?}) without \
             --join-ns net:PATH",
            entry.ext_key.as_deref().unwrap_or_default()
        )));
    }
    let mut devices = Vec::new();
    let name = format!("netdev-{id}.img");
    let path = dir.join(&name);
    if path.exists() {
        let mut r = ImageReader::open(&path)?;
        while let Some(d) = r.next_entry::<pb::NetDeviceEntry>()? {
            devices.push(d);
        }
    }
    // Refused now, before anything is made.
    links::create_commands(&devices).map_err(NetnsError::Unsupported)?;
    let mut raw = Vec::new();
    for prefix in RAW_IMAGES {
        let path = dir.join(format!("{prefix}-{id}.img"));
        match std::fs::read(&path) {
            Ok(data) => raw.push((prefix, data)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }
    Ok(NetnsContents {
        entry,
        devices,
        raw,
    })
}

/// A new network namespace holding `contents`; the fd keeps it.
pub fn create(contents: &NetnsContents) -> Result<File, NetnsError> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<File, NetnsError> {
            sys::unshare(libc::CLONE_NEWNET).map_err(io_err("unshare(CLONE_NEWNET)"))?;
            let ns = File::open("/proc/thread-self/ns/net")
                .map_err(io_err("opening the new namespace"))?;
            fill(contents)?;
            Ok(ns)
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn raw<'a>(contents: &'a NetnsContents, prefix: &str) -> Option<&'a [u8]> {
    contents
        .raw
        .iter()
        .find(|(p, _)| *p == prefix)
        .map(|(_, d)| d.as_slice())
        .filter(|d| !d.is_empty())
}

fn ip(args: &[String]) -> Result<(), NetnsError> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_tool("ip", &args, None).map(drop)
}

/// Fills the calling thread's (new) network namespace.
fn fill(c: &NetnsContents) -> Result<(), NetnsError> {
    sysctl::write_netns_entry(&c.entry).map_err(io_err("restoring its sysctls"))?;
    let creates = links::create_commands(&c.devices).map_err(NetnsError::Unsupported)?;
    for cmd in &creates {
        ip(cmd)?;
    }
    let name_of = |index: u32| {
        c.devices
            .iter()
            .find(|d| d.ifindex == index)
            .map(|d| d.name.as_str())
    };
    for d in &c.devices {
        sysctl::write_link_conf(&d.name, &d.conf4, &d.conf6, &c.entry)
            .map_err(io_err(format!("restoring the sysctls of link {}", d.name)))?;
        let master = d.master.filter(|&m| m != 0).and_then(name_of);
        ip(&links::settings_command(d, master, false))?;
    }
    // Up only once every link is set: a bridge port goes up after its master is set.
    for d in &c.devices {
        ip(&links::settings_command(d, None, true))?;
    }
    for (prefix, args) in [
        ("ifaddr", &["addr", "restore"][..]),
        ("route", &["route", "restore"][..]),
        ("route6", &["route", "restore"][..]),
    ] {
        if let Some(data) = raw(c, prefix) {
            run_tool("ip", args, Some(data))?;
        }
    }
    if let Some(data) = raw(c, "rule") {
        // The saved rules include the three a namespace starts with.
        run_tool("ip", &["rule", "flush"], None)?;
        run_tool("ip", &["rule", "delete", "table", "local"], None)?;
        run_tool("ip", &["rule", "restore"], Some(data))?;
    }
    for (prefix, family) in [("iptables", "iptables"), ("ip6tables", "ip6tables")] {
        if let Some(data) = raw(c, prefix) {
            let tool = legacy_iptables(family, "restore").ok_or_else(|| {
                NetnsError::Unsupported(format!(
                    "restore {prefix} rules without the legacy {family}-restore installed"
                ))
            })?;
            run_tool(&tool, &["-w"], Some(data))?;
        }
    }
    if let Some(data) = raw(c, "nftables") {
        run_tool("nft", &["-f", "-"], Some(data))?;
    }
    for table in [conntrack::Table::Conntrack, conntrack::Table::Expectations] {
        if let Some(data) = raw(c, table.prefix()) {
            conntrack::restore(table, data)
                .map_err(io_err(format!("restoring its {} table", table.prefix())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!("criu-rs-netns-images-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let contents = NetnsContents {
            entry: pb::NetnsEntry {
                unix_conf: vec![pb::SysctlEntry {
                    r#type: pb::SysctlType::Ctl32 as i32,
                    iarg: Some(313),
                    sarg: None,
                }],
                ..Default::default()
            },
            devices: vec![pb::NetDeviceEntry {
                r#type: pb::NdType::Loopback as i32,
                ifindex: 1,
                mtu: 65536,
                flags: 0x49,
                name: "lo".into(),
                ..Default::default()
            }],
            raw: vec![("ifaddr", b"saved".to_vec()), ("rule", Vec::new())],
        };
        contents.write(&dir, 7).unwrap();
        let back = load(&dir, 7).unwrap();
        assert_eq!(back.entry, contents.entry);
        assert_eq!(back.devices[0].name, "lo");
        // As CRIU records it, the link names its own namespace.
        assert_eq!(back.devices[0].peer_nsid, Some(7));
        assert_eq!(raw(&back, "ifaddr"), Some(&b"saved"[..]));
        assert_eq!(
            raw(&back, "rule"),
            None,
            "an empty image is nothing to restore"
        );
        let missing = load(&dir, 8).unwrap_err();
        assert!(missing.to_string().contains("netns-8.img"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
