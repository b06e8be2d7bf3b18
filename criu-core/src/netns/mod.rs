//! Network namespaces of their own: what a tree's network namespace holds, saved in
//! CRIU's images and made again on restore.
//!
//! The images, per namespace id `ID` (the same files, names and layouts as CRIU's, so
//! that either tool restores the other's):
//! - `netns-ID.img`: the namespace's sysctls (`net.ipv4.conf.{all,default}.*`,
//!   `net.ipv6.conf.{all,default}.*`, `net.unix.max_dgram_qlen`,
//!   `net.ipv4.ping_group_range`);
//! - `netdev-ID.img`: one entry per link (loopback, veth pairs with both ends inside,
//!   bridges), with its index, name, mtu, flags, hardware address, master and per-link
//!   ipv4/ipv6 sysctls;
//! - `ifaddr-ID.img`, `route-ID.img`, `route6-ID.img`, `rule-ID.img`: raw files without
//!   a header, the output of `ip addr save`, `ip route save`, `ip -6 route save` and
//!   `ip rule save`, given back to `ip ... restore`;
//! - `iptables-ID.img`, `ip6tables-ID.img`: `iptables-save` text of the legacy
//!   backend (the nftables backend's rules are in the ruleset already);
//! - `nftables-ID.img`: `nft list ruleset`;
//! - `netns-ct-ID.img`, `netns-exp-ID.img`: the connection tracking table and its
//!   expectations, as ctnetlink dumps them (`conntrack.rs`).
//!
//! The contents are read by a helper thread that joins the namespace (setns changes
//! only that thread, and the tools it starts are born in it), once the network lock
//! is in it, as CRIU does: the lock comes back with the firewall on restore, before any
//! connection is rebuilt, and the restore lifts it once the tree runs (`dump.rs`). The restore makes the namespace on a helper thread too, keeps
//! it by an fd and fills it before the tree exists (`restore.rs`); the root then joins
//! it as it would join one named by `--join-ns net:PATH`.

mod conntrack;
pub mod dump;
mod links;
pub mod restore;
mod sysctl;

use std::io;
use std::process::{Command, Stdio};

/// Errors of reading or making a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Something the images cannot carry or the restore cannot make again.
    #[error("network namespace: cannot {0}")]
    Unsupported(String),
    #[error("network namespace: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A tool (`ip`, `iptables-save`, `nft`...) that failed.
    #[error("network namespace: `{command}` failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("network namespace: image {image}: {what}")]
    BadImage { image: String, what: String },
    #[error(transparent)]
    Image(#[from] criu_images::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Io { what, source }
}

/// The raw images (no header: CRIU's `RAW_IMAGE_MAGIC`), by file prefix.
pub const RAW_IMAGES: [&str; 9] = [
    "ifaddr",
    "route",
    "route6",
    "rule",
    "iptables",
    "ip6tables",
    "nftables",
    "netns-ct",
    "netns-exp",
];

/// Runs `program args` in the calling thread's network namespace with `input` on its
/// standard input (a file: `ip ... restore` seeks in it); returns its standard output.
/// A failure names the command and carries what it said.
fn run_tool(program: &str, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, NetnsError> {
    let command = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let path = crate::netlock::find_tool(program).unwrap_or_else(|| program.into());
    let stdin = match input {
        Some(data) => Stdio::from(
            input_file(data).map_err(io_err(format!("preparing the input of `{command}`")))?,
        ),
        None => Stdio::null(),
    };
    let child = Command::new(path)
        .args(args)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting `{command}`")))?;
    let out = child
        .wait_with_output()
        .map_err(io_err(format!("waiting for `{command}`")))?;
    if !out.status.success() {
        return Err(NetnsError::Tool {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// A memory file holding `data`, read from its start.
fn input_file(data: &[u8]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    let mut file = std::fs::File::from(crate::sys::memfd_create("criu-rs-netns", 0)?);
    file.write_all(data)?;
    file.rewind()?;
    Ok(file)
}

/// The iptables tool of the legacy backend for `family` ("iptables" or "ip6tables") and
/// `action` ("save" or "restore"), as CRIU picks it: `X-save` unless it is the
/// nftables backend's, else `X-legacy-save`; `None` when there is none.
fn legacy_iptables(family: &str, action: &str) -> Option<String> {
    let not_nft = |path: std::path::PathBuf| {
        Command::new(path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("nf_tables")
            })
    };
    [
        format!("{family}-{action}"),
        format!("{family}-legacy-{action}"),
    ]
    .into_iter()
    .find(|tool| crate::netlock::find_tool(tool).is_some_and(not_nft))
}
