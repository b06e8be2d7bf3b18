//! The sysctls CRIU saves for a network namespace and for each of its links, in CRIU's
//! order (the images hold them by position).

use std::io;

use criu_images::pb;

/// `net.ipv4.conf.<dev>.*`, in CRIU's order.
pub(super) const DEVCONF4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// `net.ipv6.conf.<dev>.*`, in CRIU's order.
pub(super) const DEVCONF6: [&str; 42] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

/// The one string-valued ipv6 devconf (unset until written: reading it fails).
const STABLE_SECRET: &str = "stable_secret";

/// `net.unix.*` saved in `unix_conf`.
pub(super) const UNIX_CONF: [&str; 1] = ["max_dgram_qlen"];

/// `net.ipv4.*` saved in `ipv4_sysctl` (a string).
pub(super) const IPV4_SYSCTLS: [&str; 1] = ["ping_group_range"];

const CTL_STR: i32 = pb::SysctlType::CtlStr as i32;
const CTL_32: i32 = pb::SysctlType::Ctl32 as i32;

fn path(group: &str, name: &str) -> String {
    format!("/proc/sys/net/{group}/{name}")
}

/// Reads one sysctl of the calling thread's network namespace; `None` when this kernel
/// lacks it (or, for a string such as `stable_secret`, when it was never set).
fn read_value(path: &str) -> io::Result<Option<String>> {
    match crate::proc::read_sysctl(path) {
        Ok(text) => Ok(Some(text.trim_end_matches('\n').to_owned())),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EIO)) => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("reading {path}: {e}"))),
    }
}

/// The entry CRIU keeps for one sysctl: an int, or (for `string`) its text.
fn read_entry(path: &str, string: bool) -> io::Result<pb::SysctlEntry> {
    let value = read_value(path)?;
    Ok(if string {
        pb::SysctlEntry {
            r#type: CTL_STR,
            iarg: None,
            sarg: value,
        }
    } else {
        let iarg = match value {
            Some(text) => Some(text.trim().parse::<i32>().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{path}: not a number: {text:?}"),
                )
            })?),
            None => None,
        };
        pb::SysctlEntry {
            r#type: CTL_32,
            iarg,
            sarg: None,
        }
    })
}

/// The ipv4 and ipv6 devconf of `dev` ("all", "default" or a link's name).
pub(super) fn read_devconf(dev: &str) -> io::Result<(Vec<pb::SysctlEntry>, Vec<pb::SysctlEntry>)> {
    let v4 = DEVCONF4
        .iter()
        .map(|name| read_entry(&path(&format!("ipv4/conf/{dev}"), name), false))
        .collect::<io::Result<_>>()?;
    let v6 = DEVCONF6
        .iter()
        .map(|name| {
            read_entry(
                &path(&format!("ipv6/conf/{dev}"), name),
                *name == STABLE_SECRET,
            )
        })
        .collect::<io::Result<_>>()?;
    Ok((v4, v6))
}

/// `netns-ID.img`'s entry for the calling thread's namespace.
pub(super) fn read_netns_entry() -> io::Result<pb::NetnsEntry> {
    let (def_conf4, def_conf6) = read_devconf("default")?;
    let (all_conf4, all_conf6) = read_devconf("all")?;
    let unix_conf = UNIX_CONF
        .iter()
        .map(|name| read_entry(&path("unix", name), false))
        .collect::<io::Result<_>>()?;
    let ipv4_sysctl = IPV4_SYSCTLS
        .iter()
        .map(|name| read_entry(&path("ipv4", name), true))
        .collect::<io::Result<_>>()?;
    Ok(pb::NetnsEntry {
        def_conf4,
        all_conf4,
        def_conf6,
        all_conf6,
        unix_conf,
        ipv4_sysctl,
        ..Default::default()
    })
}

/// The value an entry holds, as written to its file; `None` when it holds none.
fn entry_text(e: &pb::SysctlEntry) -> Option<String> {
    match e.r#type {
        CTL_32 => e.iarg.map(|v| v.to_string()),
        CTL_STR => e.sarg.clone(),
        _ => None,
    }
}

/// Writes the saved values of `names` (by position) under `/proc/sys/net/<group>` in
/// the calling thread's namespace, skipping those the namespace has already and those
/// of `skip_same_as` (the namespace's defaults, for a link) except `mtu`. As in CRIU,
/// `accept_redirects` goes last: writing `forwarding` changes it.
fn write_group(
    group: &str,
    names: &[&str],
    saved: &[pb::SysctlEntry],
    skip_same_as: Option<&[pb::SysctlEntry]>,
) -> io::Result<()> {
    let mut order: Vec<usize> = (0..names.len().min(saved.len())).collect();
    order.sort_by_key(|&i| names[i] == "accept_redirects");
    for i in order {
        let Some(want) = entry_text(&saved[i]) else {
            continue;
        };
        if let Some(defaults) = skip_same_as {
            if names[i] != "mtu" && defaults.get(i).and_then(entry_text).as_ref() == Some(&want) {
                continue;
            }
        }
        let file = path(group, names[i]);
        let Some(now) = read_value(&file)? else {
            // This kernel does not have it.
            continue;
        };
        if normalized(&now) == normalized(&want) {
            continue;
        }
        std::fs::write(&file, &want)
            .map_err(|e| io::Error::new(e.kind(), format!("writing {want:?} to {file}: {e}")))?;
    }
    Ok(())
}

/// Whitespace-separated words, as a sysctl reads back what was written.
fn normalized(text: &str) -> Vec<&str> {
    text.split_whitespace().collect()
}

/// The namespace-wide sysctls of `entry`, written into the calling thread's namespace.
pub(super) fn write_netns_entry(entry: &pb::NetnsEntry) -> io::Result<()> {
    write_group("ipv4/conf/all", &DEVCONF4, &entry.all_conf4, None)?;
    write_group("ipv4/conf/default", &DEVCONF4, &entry.def_conf4, None)?;
    write_group("ipv6/conf/all", &DEVCONF6, &entry.all_conf6, None)?;
    write_group("ipv6/conf/default", &DEVCONF6, &entry.def_conf6, None)?;
    write_group("unix", &UNIX_CONF, &entry.unix_conf, None)?;
    write_group("ipv4", &IPV4_SYSCTLS, &entry.ipv4_sysctl, None)
}

/// A link's own devconf, written where it differs from the namespace's defaults, which
/// a link made after they were written starts with. Loopback is not: a new namespace
/// has it from the start, with the kernel's defaults, so all of its values are written
/// (where they differ from what it has).
pub(super) fn write_link_conf(
    dev: &str,
    conf4: &[pb::SysctlEntry],
    conf6: &[pb::SysctlEntry],
    netns: &pb::NetnsEntry,
) -> io::Result<()> {
    let made_before_defaults = dev == "lo";
    let defaults = |d| (!made_before_defaults).then_some(d);
    write_group(
        &format!("ipv4/conf/{dev}"),
        &DEVCONF4,
        conf4,
        defaults(&netns.def_conf4[..]),
    )?;
    write_group(
        &format!("ipv6/conf/{dev}"),
        &DEVCONF6,
        conf6,
        defaults(&netns.def_conf6[..]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_namespace() {
        let e = read_netns_entry().unwrap();
        assert_eq!(e.def_conf4.len(), DEVCONF4.len());
        assert_eq!(e.all_conf6.len(), DEVCONF6.len());
        let fwd = DEVCONF4.iter().position(|n| *n == "forwarding").unwrap();
        let now = std::fs::read_to_string("/proc/sys/net/ipv4/conf/all/forwarding").unwrap();
        assert_eq!(e.all_conf4[fwd].iarg, Some(now.trim().parse().unwrap()));
        assert_eq!(e.ipv4_sysctl[0].r#type, CTL_STR);
        assert!(e.ipv4_sysctl[0].sarg.is_some());
    }

    #[test]
    fn values_compare_by_words() {
        assert_eq!(normalized("0\t2147483647"), normalized("0 2147483647"));
    }
}
