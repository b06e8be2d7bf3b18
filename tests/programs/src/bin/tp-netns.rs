//! tp-netns: a process in a network namespace of its own, filled with what a dump must
//! carry, holding TCP connections over it.
//!
//! State: the program, still single-threaded, unshares a network namespace and sets up
//! in it: `lo` up with an extra address 10.231.7.7/32; a veth pair `nv0`/`nv1` (nv0 with
//! mtu 1400 and 10.231.0.1/24, both up); a route to 10.232.0.0/16 via 10.231.0.2; a
//! rule (`from 10.231.7.7 lookup 77`, priority 777); `net.unix.max_dgram_qlen` 313,
//! `net.ipv4.conf.nv0.rp_filter` 2, and `route_localnet` 1 as the default and on `lo`; and with `--firewall nft` (the default) a table
//! `inet tpnetns` dropping TCP port 9 and accepting tracked connections (so the
//! namespace's conntrack table holds the program's), with `--firewall iptables` the same rule with
//! legacy iptables, with `--firewall none` nothing. Then a listener on 10.231.7.7:7777
//! and a connection to it (both ends held), each end having sent 1000 bytes the other
//! has read. And a UDP socket bound to the link-local address fe80:4567::1 of `nv0`
//! (added without duplicate detection), which names `nv0` by its index in this namespace.
//!
//! Files: `PATH.netns`, at `ready`: the namespace as the program sees it (links,
//! addresses, routes, rules, firewall, sysctls), one fact per line.
//!
//! Check: the same facts, line for line; both ends of the connection exchange 1000 more
//! bytes each way (10 s at most); the listener accepts a new connection that carries
//! data; the link-local socket is still bound to its address on `nv0` (the index `nv0`
//! has here) and gets a datagram sent to it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use criu_testprogs::{cvt, write_atomic, Program, Report};

const ADDRESS: &str = "10.231.7.7:7777";
/// The link-local address of `nv0`.
const LINK_LOCAL: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfe80, 0x4567, 0, 0, 0, 0, 0, 1);

/// The index of interface `name` in our network namespace (if_nametoindex asks a socket
/// of ours, so our namespace answers; /sys may show another namespace's devices).
fn interface_index(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: if_nametoindex reads the NUL-terminated name we own.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()),
        n => Ok(n),
    }
}

/// `tool args` (found in the sbin directories too); its output, or why it failed.
fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let path = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{tool}"))
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or_else(|| tool.to_owned());
    let out = Command::new(path)
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{tool} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn set_up(firewall: &str) -> Result<(), String> {
    for cmd in [
        "link set lo up",
        "addr add 10.231.7.7/32 dev lo",
        "link add nv0 type veth peer name nv1",
        "link set nv0 mtu 1400",
        "addr add 10.231.0.1/24 dev nv0",
        "link set nv0 up",
        "link set nv1 up",
        "addr add fe80:4567::1/64 nodad dev nv0",
        "route add 10.232.0.0/16 via 10.231.0.2 dev nv0",
        "rule add from 10.231.7.7 lookup 77 priority 777",
    ] {
        run("ip", &cmd.split(' ').collect::<Vec<_>>())?;
    }
    for (path, value) in [
        ("/proc/sys/net/unix/max_dgram_qlen", "313"),
        ("/proc/sys/net/ipv4/conf/nv0/rp_filter", "2"),
        // The same on loopback and as the default: lo predates any default written.
        ("/proc/sys/net/ipv4/conf/default/route_localnet", "1"),
        ("/proc/sys/net/ipv4/conf/lo/route_localnet", "1"),
    ] {
        std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))?;
    }
    match firewall {
        "nft" => {
            run("nft", &["add", "table", "inet", "tpnetns"])?;
            run(
                "nft",
                &["add chain inet tpnetns input { type filter hook input priority 0; }"],
            )?;
            run(
                "nft",
                &[
                    "add", "rule", "inet", "tpnetns", "input", "tcp", "dport", "9", "drop",
                ],
            )?;
            // Tracked connections: the namespace has a conntrack table to carry.
            run(
                "nft",
                &["add rule inet tpnetns input ct state established,related accept"],
            )?;
        }
        "iptables" => {
            run(
                "iptables-legacy",
                &[
                    "-w", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP",
                ],
            )?;
        }
        _ => {}
    }
    Ok(())
}

/// What the namespace holds, one fact per line.
fn facts(firewall: &str) -> Result<String, String> {
    let mut out = String::new();
    // Without the link state: a veth's carrier may take a moment to come back.
    for line in run("ip", &["-o", "link"])?.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mtu = words.iter().position(|w| *w == "mtu").map(|i| words[i + 1]);
        let ether = words
            .iter()
            .position(|w| *w == "link/ether")
            .map(|i| words[i + 1]);
        let flags = words[2].replace(",LOWER_UP", "");
        out += &format!("link {} {flags} mtu {mtu:?} ether {ether:?}\n", words[1]);
    }
    out += &run("ip", &["-o", "-4", "addr"])?;
    out += &run("ip", &["-4", "route"])?;
    out += &run("ip", &["rule"])?;
    match firewall {
        "nft" => out += &run("nft", &["list", "table", "inet", "tpnetns"])?,
        "iptables" => out += &run("iptables-legacy", &["-w", "-S", "INPUT"])?,
        _ => {}
    }
    for path in [
        "/proc/sys/net/unix/max_dgram_qlen",
        "/proc/sys/net/ipv4/conf/nv0/rp_filter",
        "/proc/sys/net/ipv4/conf/default/route_localnet",
        "/proc/sys/net/ipv4/conf/lo/route_localnet",
    ] {
        let value = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
        out += &format!("{path} {value}");
    }
    Ok(out)
}

fn exchange(a: &mut TcpStream, b: &mut TcpStream, byte: u8) -> std::io::Result<()> {
    for s in [&mut *a, &mut *b] {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
    }
    a.write_all(&[byte; 1000])?;
    b.write_all(&[byte.wrapping_add(1); 1000])?;
    let mut buf = [0u8; 1000];
    b.read_exact(&mut buf)?;
    if buf != [byte; 1000] {
        return Err(std::io::Error::other("client to server: wrong bytes"));
    }
    a.read_exact(&mut buf)?;
    if buf != [byte.wrapping_add(1); 1000] {
        return Err(std::io::Error::other("server to client: wrong bytes"));
    }
    Ok(())
}

fn main() {
    let mut program = Program::start(
        "tp-netns",
        &[(
            "--firewall nft|iptables|none",
            "the rule set up (default nft)",
        )],
    );
    let firewall: String = program.opt_or("--firewall", "nft".to_owned());
    // SAFETY: unshare(2) of the network namespace only, while single-threaded.
    program.must(cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) }), "unshare");
    program.must(set_up(&firewall), "set up the namespace");
    let listener = program.must(TcpListener::bind(ADDRESS), "listen");
    let mut client = program.must(TcpStream::connect(ADDRESS), "connect");
    let (mut server, _) = program.must(listener.accept(), "accept");
    program.must(exchange(&mut client, &mut server, 1), "first exchange");
    let nv0 = program.must(interface_index("nv0"), "find nv0");
    let local = std::net::SocketAddrV6::new(LINK_LOCAL, 0, 0, nv0);
    let link_local = program.must(std::net::UdpSocket::bind(local), "bind to fe80:4567::1%nv0");
    let bound = program.must(link_local.local_addr(), "read the link-local address");
    let before = program.must(facts(&firewall), "read the namespace");
    let written = write_atomic(&program.companion(".netns"), before.as_bytes());
    program.must(written, "write the facts");
    program.ready();
    program.work_until_check(Duration::from_millis(50), || {});

    let mut report = Report::new();
    if let Some(after) = report.ok_or_fail(facts(&firewall), "read the namespace again") {
        report.check_eq("the namespace", after, before);
    }
    report.ok_or_fail(exchange(&mut client, &mut server, 7), "exchange after");
    let fresh = TcpStream::connect(ADDRESS).and_then(|mut c| {
        let (mut s, _) = listener.accept()?;
        exchange(&mut c, &mut s, 11)
    });
    report.ok_or_fail(fresh, "a new connection");
    let now = link_local.local_addr().ok();
    report.check_eq("the link-local socket's address", now, Some(bound));
    report.check_eq(
        "nv0's index, which the address names",
        interface_index("nv0").ok(),
        Some(nv0),
    );
    let echoed = std::net::UdpSocket::bind(std::net::SocketAddrV6::new(LINK_LOCAL, 0, 0, nv0))
        .and_then(|sender| sender.send_to(b"scoped", bound))
        .and_then(|_| {
            link_local.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut buf = [0u8; 16];
            let (n, _) = link_local.recv_from(&mut buf)?;
            Ok(buf[..n].to_vec())
        });
    if let Some(got) = report.ok_or_fail(echoed, "a datagram to the link-local socket") {
        report.check_eq("the datagram", got, b"scoped".to_vec());
    }
    program.finish(&report);
}
