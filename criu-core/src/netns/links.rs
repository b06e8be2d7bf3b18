//! The links of the calling thread's network namespace, read with an rtnetlink dump
//! (RTM_GETLINK), and the `ip link` commands that make them again.

use std::io;
use std::os::fd::AsFd;

use criu_images::pb;

use crate::sys;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFINFOMSG_LEN: usize = 16;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;

const ARPHRD_LOOPBACK: u16 = 772;

/// One link as rtnetlink shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub hw_type: u16,
    pub flags: u32,
    pub mtu: u32,
    pub address: Option<Vec<u8>>,
    /// `IFLA_LINK`: a veth's peer index.
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer lives in another namespace.
    pub link_netnsid: Option<i32>,
    pub master: Option<u32>,
    /// `IFLA_INFO_KIND` ("veth", "bridge", ...).
    pub kind: Option<String>,
}

impl Link {
    /// CRIU's type of the link, or why it cannot be made again.
    pub(super) fn nd_type(&self) -> Result<pb::NdType, String> {
        if self.hw_type == ARPHRD_LOOPBACK {
            return Ok(pb::NdType::Loopback);
        }
        match self.kind.as_deref() {
            Some("veth") if self.link_netnsid.is_some() => Err(format!(
                "recreate link {} (index {}): a veth whose peer is in another network \
                 namespace",
                self.name, self.index
            )),
            Some("veth") => Ok(pb::NdType::Veth),
            Some("bridge") => Ok(pb::NdType::Bridge),
            Some(kind) => Err(format!(
                "recreate link {} (index {}) of kind {kind}",
                self.name, self.index
            )),
            None => Err(format!(
                "recreate link {} (index {}): a link of unknown kind (hardware type {})",
                self.name, self.index, self.hw_type
            )),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes (type, payload) of a buffer of netlink attributes.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(ty)) = (u16_at(b, 0), u16_at(b, 2)) {
        let len = len as usize;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty & 0x3fff, &b[4..len]));
        b = &b[len.next_multiple_of(4).min(b.len())..];
    }
    out
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One RTM_NEWLINK payload (ifinfomsg and attributes).
fn parse_link(msg: &[u8]) -> Option<Link> {
    let hw_type = u16_at(msg, 2)?;
    let index = u32_at(msg, 4)?;
    let flags = u32_at(msg, 8)?;
    let mut link = Link {
        index,
        name: String::new(),
        hw_type,
        flags,
        mtu: 0,
        address: None,
        link: None,
        link_netnsid: None,
        master: None,
        kind: None,
    };
    for (ty, data) in attrs(msg.get(IFINFOMSG_LEN..)?) {
        match ty {
            IFLA_IFNAME => link.name = c_string(data),
            IFLA_MTU => link.mtu = u32_at(data, 0)?,
            IFLA_ADDRESS => link.address = Some(data.to_vec()),
            IFLA_LINK => link.link = u32_at(data, 0),
            IFLA_LINK_NETNSID => link.link_netnsid = u32_at(data, 0).map(|v| v as i32),
            IFLA_MASTER => link.master = u32_at(data, 0),
            IFLA_LINKINFO => {
                for (ity, idata) in attrs(data) {
                    if ity == IFLA_INFO_KIND {
                        link.kind = Some(c_string(idata));
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

/// Every link of the calling thread's network namespace, by index.
pub(super) fn list() -> io::Result<Vec<Link>> {
    let sock = sys::socket(
        libc::AF_NETLINK,
        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
        libc::NETLINK_ROUTE,
    )?;
    let seq = 1u32;
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    req.extend_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&seq.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.push(libc::AF_UNSPEC as u8);
    req.resize(NLMSG_HDRLEN + IFINFOMSG_LEN, 0);
    sys::send(sock.as_fd(), &req, 0)?;
    let mut links = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = sys::recv(sock.as_fd(), &mut buf, 0)?;
        if n == 0 {
            return Err(bad("the link dump ended before its last message"));
        }
        let mut at = 0;
        while at + NLMSG_HDRLEN <= n {
            let len = u32_at(&buf, at).unwrap_or(0) as usize;
            let ty = u16_at(&buf, at + 4).unwrap_or(0);
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(bad("a malformed message in the link dump"));
            }
            let payload = &buf[at + NLMSG_HDRLEN..at + len];
            match ty {
                NLMSG_DONE => {
                    links.sort_by_key(|l: &Link| l.index);
                    return Ok(links);
                }
                NLMSG_ERROR => {
                    let code = u32_at(payload, 0).map_or(-libc::EIO, |c| c as i32);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWLINK => {
                    links.push(parse_link(payload).ok_or_else(|| bad("a short link message"))?)
                }
                _ => {}
            }
            at += len.next_multiple_of(4);
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("rtnetlink: {what}"))
}

/// A MAC address as `ip` takes it.
fn mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The `ip` argument lists that create the links of `devs` (loopback exists in every
/// namespace; a veth pair is created once, from its lower-indexed end), with their
/// old indexes and names. Returns `Err` naming a link that cannot be made.
pub(super) fn create_commands(devs: &[pb::NetDeviceEntry]) -> Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    for d in devs {
        let base = |kind: &str| {
            vec![
                "link".to_owned(),
                "add".into(),
                "name".into(),
                d.name.clone(),
                "index".into(),
                d.ifindex.to_string(),
                "type".into(),
                kind.into(),
            ]
        };
        match pb::NdType::try_from(d.r#type) {
            Ok(pb::NdType::Loopback) => {}
            Ok(pb::NdType::Bridge) => out.push(base("bridge")),
            Ok(pb::NdType::Veth) => {
                let peer_index = d.peer_ifindex.unwrap_or(d.ifindex);
                let Some(peer) = devs
                    .iter()
                    .find(|p| p.ifindex == peer_index && p.ifindex != d.ifindex)
                else {
                    return Err(format!(
                        "recreate veth {} (index {}): its peer (index {peer_index}) is not in \
                         the namespace",
                        d.name, d.ifindex
                    ));
                };
                if d.ifindex < peer.ifindex {
                    let mut cmd = base("veth");
                    cmd.extend([
                        "peer".into(),
                        "name".into(),
                        peer.name.clone(),
                        "index".into(),
                        peer.ifindex.to_string(),
                    ]);
                    out.push(cmd);
                }
            }
            _ => {
                return Err(format!(
                    "recreate link {} (index {}) of CRIU type {}",
                    d.name, d.ifindex, d.r#type
                ))
            }
        }
    }
    Ok(out)
}

const IFF_UP: u32 = 0x1;
const IFF_NOARP: u32 = 0x80;
const IFF_PROMISC: u32 = 0x100;
const IFF_ALLMULTI: u32 = 0x200;
const IFF_MULTICAST: u32 = 0x1000;

/// The `ip link set` arguments that give link `d` its saved mtu, address, master (by
/// name, `master`) and flags (`up` only when `with_up`: links go up after their
/// settings).
pub(super) fn settings_command(
    d: &pb::NetDeviceEntry,
    master: Option<&str>,
    with_up: bool,
) -> Vec<String> {
    let on_off = |bit: u32| if d.flags & bit != 0 { "on" } else { "off" };
    let mut cmd: Vec<String> = vec!["link".into(), "set".into(), "dev".into(), d.name.clone()];
    cmd.extend(["mtu".into(), d.mtu.to_string()]);
    if let Some(addr) = d.address.as_ref().filter(|a| !a.is_empty()) {
        if d.r#type != pb::NdType::Loopback as i32 {
            cmd.extend(["address".into(), mac(addr)]);
        }
    }
    if let Some(master) = master {
        cmd.extend(["master".into(), master.to_owned()]);
    }
    cmd.extend([
        "arp".into(),
        if d.flags & IFF_NOARP != 0 {
            "off"
        } else {
            "on"
        }
        .into(),
    ]);
    cmd.extend(["promisc".into(), on_off(IFF_PROMISC).into()]);
    cmd.extend(["allmulticast".into(), on_off(IFF_ALLMULTI).into()]);
    cmd.extend(["multicast".into(), on_off(IFF_MULTICAST).into()]);
    if with_up && d.flags & IFF_UP != 0 {
        cmd.push("up".into());
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_our_loopback() {
        let links = list().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo is listed");
        assert_eq!(lo.nd_type(), Ok(pb::NdType::Loopback));
        assert_eq!(lo.index, 1);
        assert!(lo.mtu > 0);
    }

    #[test]
    fn refuses_by_name_what_cannot_be_made() {
        let veth = Link {
            index: 4,
            name: "eth0".into(),
            hw_type: 1,
            flags: IFF_UP,
            mtu: 1500,
            address: None,
            link: Some(9),
            link_netnsid: None,
            master: None,
            kind: Some("veth".into()),
        };
        assert_eq!(veth.nd_type(), Ok(pb::NdType::Veth));
        let outside = Link {
            link_netnsid: Some(0),
            ..veth.clone()
        };
        let why = outside.nd_type().unwrap_err();
        assert!(
            why.contains("eth0") && why.contains("another network namespace"),
            "{why}"
        );
        let macvlan = Link {
            kind: Some("macvlan".into()),
            ..veth
        };
        let why = macvlan.nd_type().unwrap_err();
        assert!(why.contains("eth0") && why.contains("macvlan"), "{why}");
    }

    fn dev(name: &str, ty: pb::NdType, index: u32, peer: Option<u32>) -> pb::NetDeviceEntry {
        pb::NetDeviceEntry {
            r#type: ty as i32,
            ifindex: index,
            mtu: 1500,
            flags: IFF_UP,
            name: name.into(),
            peer_ifindex: peer,
            ..Default::default()
        }
    }

    #[test]
    fn a_veth_pair_is_made_once() {
        let devs = [
            dev("lo", pb::NdType::Loopback, 1, None),
            dev("v0", pb::NdType::Veth, 2, Some(3)),
            dev("v1", pb::NdType::Veth, 3, Some(2)),
        ];
        let cmds = create_commands(&devs).unwrap();
        assert_eq!(cmds.len(), 1);
        assert_eq!(
            cmds[0].join(" "),
            "link add name v0 index 2 type veth peer name v1 index 3"
        );
        let lone = [dev("v0", pb::NdType::Veth, 2, Some(7))];
        assert!(create_commands(&lone).unwrap_err().contains("v0"));
    }

    #[test]
    fn settings_bring_the_link_up_last() {
        let d = dev("v0", pb::NdType::Veth, 2, Some(3));
        let cmd = settings_command(&d, None, true).join(" ");
        assert!(cmd.starts_with("link set dev v0 mtu 1500"), "{cmd}");
        assert!(cmd.ends_with(" up"), "{cmd}");
        assert!(!settings_command(&d, None, false).join(" ").ends_with(" up"));
    }
}
