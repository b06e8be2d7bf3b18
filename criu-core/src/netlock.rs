//! The network lock: from the moment a TCP connection of the tree is checkpointed until
//! the restored tree runs, no packet of it may reach the kernel's TCP stack. Otherwise
//! the kernel answers the peer's next segment with a reset (the socket is gone once the
//! tree is killed, or it is not yet rebuilt) and the connection is lost; and a socket in
//! repair mode must not see its queues move under it while they are read or written.
//!
//! It is CRIU's lock, rule for rule, so that a lock either tool leaves behind after a
//! dump is lifted by the other's restore (the images say which method was used, and the
//! run id that names the lock, in `inventory.img`):
//! - nftables (our default): a table `inet CRIU-<run id>` ([`table_name`]: CRIU cuts
//!   the id to 21 characters) with an input and an output
//!   chain. For a tree that shares our network namespace, each connection is locked on
//!   its own: two sets (`conns4`, `conns6`) of (source, port, destination, port) tuples
//!   whose packets are dropped, both directions of each connection. For a tree in a
//!   network namespace of its own, the chains are made inside it and drop everything.
//! - iptables: per connection a DROP rule in INPUT and one in OUTPUT of the filter table
//!   (ip6tables for IPv6), or for a namespace of its own a `CRIU` chain that drops all.
//! - skip: nothing (the caller takes care of the network, or accepts the risk).
//!
//! Packets marked [`REPAIR_MARK`] pass: the restore sends a FIN or ACK of its own to
//! rebuild half-closed connections.
//!
//! The tools run as child processes (`nft -f -`, `iptables -w`), inside the tree's
//! network namespace through `nsenter` where it has its own.
//!
//! [`NetworkLock`] is the guard: dropping it lifts what it set, unless the dump that
//! made it killed its tree ([`NetworkLock::keep`]): then the lock stays for the restore,
//! which lifts it once the tree runs again ([`NetworkLock::left_by_dump`]).

use std::fmt;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The mark of packets the lock lets through (CRIU's `SOCCR_MARK`).
pub const REPAIR_MARK: u32 = 0xC114;

/// How the network is locked (`--network-lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMethod {
    Iptables,
    #[default]
    Nftables,
    Skip,
}

impl LockMethod {
    /// The `--network-lock` argument.
    pub fn parse(name: &str) -> Option<LockMethod> {
        match name {
            "iptables" => Some(LockMethod::Iptables),
            "nftables" => Some(LockMethod::Nftables),
            "skip" => Some(LockMethod::Skip),
            _ => None,
        }
    }

    /// The number `inventory.img` keeps (CRIU's `NETWORK_LOCK_*`).
    pub fn image_value(self) -> u32 {
        match self {
            LockMethod::Iptables => 0,
            LockMethod::Nftables => 1,
            LockMethod::Skip => 2,
        }
    }

    /// The method of the images; one without the field is iptables, as CRIU reads it
    /// (images from before CRIU had a choice). `None` for a number we do not know.
    pub fn from_image(value: Option<u32>) -> Option<LockMethod> {
        match value {
            None | Some(0) => Some(LockMethod::Iptables),
            Some(1) => Some(LockMethod::Nftables),
            Some(2) => Some(LockMethod::Skip),
            Some(_) => None,
        }
    }

    /// The tool it runs, if any.
    pub fn tool(self) -> Option<&'static str> {
        match self {
            LockMethod::Iptables => Some("iptables"),
            LockMethod::Nftables => Some("nft"),
            LockMethod::Skip => None,
        }
    }
}

impl fmt::Display for LockMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockMethod::Iptables => "iptables",
            LockMethod::Nftables => "nftables",
            LockMethod::Skip => "skip",
        })
    }
}

/// One TCP connection as its socket sees it (local end first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
}

impl Connection {
    /// The addresses its packets carry: an IPv6 socket talking to an IPv4 peer holds
    /// IPv4-mapped addresses (`::ffff:a.b.c.d`), but its packets are IPv4.
    pub fn on_the_wire(self) -> Connection {
        let unmap = |a: IpAddr| match a {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
            v4 => v4,
        };
        match (unmap(self.local), unmap(self.remote)) {
            (l @ IpAddr::V4(_), r @ IpAddr::V4(_)) => Connection {
                local: l,
                remote: r,
                ..self
            },
            _ => self,
        }
    }

    fn is_v4(&self) -> bool {
        self.local.is_ipv4()
    }
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |a: IpAddr, p: u16| match a {
            IpAddr::V6(v6) => format!("[{v6}]:{p}"),
            IpAddr::V4(v4) => format!("{v4}:{p}"),
        };
        write!(
            f,
            "{} -> {}",
            show(self.local, self.local_port),
            show(self.remote, self.remote_port)
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("network lock ({method}): cannot run {tool}: {source}")]
    Spawn {
        method: LockMethod,
        tool: String,
        #[source]
        source: io::Error,
    },
    #[error("network lock ({method}): `{command}` failed ({status}): {stderr}")]
    Failed {
        method: LockMethod,
        command: String,
        status: String,
        stderr: String,
    },
}

/// What the lock covers.
#[derive(Debug, Clone)]
enum Scope {
    /// Each connection on its own, in our network namespace.
    Connections,
    /// Everything in this network namespace (an nsfs path such as /proc/PID/ns/net):
    /// the tree's own.
    Namespace(PathBuf),
}

/// The network lock of one dump or restore; lifted when dropped unless kept.
#[derive(Debug)]
pub struct NetworkLock {
    method: LockMethod,
    /// `CRIU-<run id>`: the nftables table.
    table: String,
    scope: Scope,
    /// Whether our table (nftables) or chain (iptables, namespace scope) may exist.
    made: bool,
    /// The connections locked by rules of their own (iptables, connection scope).
    rules: Vec<Connection>,
    /// Left in place when dropped.
    kept: bool,
}

/// The nftables table of the lock named by `run_id`, as CRIU names it: CRIU writes
/// `inet CRIU-<run id>` into a 32-byte buffer, which keeps 21 characters of the id (a
/// UUID is 36). Either tool's restore must find the other's table.
pub fn table_name(run_id: &str) -> String {
    const KEPT: usize = 31 - "inet CRIU-".len();
    let id: String = run_id.chars().take(KEPT).collect();
    format!("CRIU-{id}")
}

impl NetworkLock {
    /// A lock of connections in our network namespace, named by `run_id`; nothing is
    /// locked until [`NetworkLock::lock`].
    pub fn connections(method: LockMethod, run_id: &str) -> NetworkLock {
        NetworkLock {
            method,
            table: table_name(run_id),
            scope: Scope::Connections,
            made: false,
            rules: Vec::new(),
            kept: false,
        }
    }

    /// Locks the whole network namespace `netns` (an nsfs path), as CRIU does for a
    /// tree with a network namespace of its own.
    pub fn namespace(
        method: LockMethod,
        run_id: &str,
        netns: PathBuf,
    ) -> Result<NetworkLock, LockError> {
        let mut lock = NetworkLock::connections(method, run_id);
        lock.scope = Scope::Namespace(netns);
        // From here the drop lifts whatever part of it was made.
        lock.made = true;
        match method {
            LockMethod::Nftables => lock
                .nft(&format!(
                    "table inet {t} {{\n\
                 chain output {{ type filter hook output priority 0; policy drop; \
                 meta mark {REPAIR_MARK:#x} accept; }}\n\
                 chain input {{ type filter hook input priority 0; policy drop; \
                 meta mark {REPAIR_MARK:#x} accept; }}\n\
                 }}\n",
                    t = lock.table
                ))
                .map(drop)?,
            LockMethod::Iptables => {
                let conf = format!(
                    "*filter\n:CRIU - [0:0]\n-I INPUT -j CRIU\n-I OUTPUT -j CRIU\n\
                     -A CRIU -m mark --mark {REPAIR_MARK:#X} -j ACCEPT\n-A CRIU -j DROP\nCOMMIT\n"
                );
                for tool in ["iptables-restore", "ip6tables-restore"] {
                    lock.run(tool, &["-w", "--noflush"], Some(&conf))?;
                }
            }
            LockMethod::Skip => lock.made = false,
        }
        Ok(lock)
    }

    /// The lock a dump left for the restore (`run_id` and `method` from its
    /// inventory; `conns` the connections of the images, which the iptables rules
    /// name; `netns` the tree's own network namespace, when it has one): lifted when
    /// dropped, or by [`NetworkLock::unlock`]. What is not there (a dump that left the
    /// tree running lifted it already) is skipped.
    pub fn left_by_dump(
        method: LockMethod,
        run_id: &str,
        conns: Vec<Connection>,
        netns: Option<PathBuf>,
    ) -> NetworkLock {
        let scope = match netns {
            Some(path) => Scope::Namespace(path),
            None => Scope::Connections,
        };
        let rules = match (&scope, method) {
            (Scope::Connections, LockMethod::Iptables) => conns,
            _ => Vec::new(),
        };
        NetworkLock {
            method,
            table: table_name(run_id),
            scope,
            made: method != LockMethod::Skip,
            rules,
            kept: false,
        }
    }

    pub fn method(&self) -> LockMethod {
        self.method
    }

    /// Whether it locks a whole namespace (then connections need no lock of their own).
    pub fn whole_namespace(&self) -> bool {
        matches!(self.scope, Scope::Namespace(_))
    }

    /// Drops every packet of `conn`, both ways (except those marked [`REPAIR_MARK`]).
    pub fn lock(&mut self, conn: Connection) -> Result<(), LockError> {
        if self.whole_namespace() {
            return Ok(());
        }
        let conn = conn.on_the_wire();
        match self.method {
            LockMethod::Skip => Ok(()),
            LockMethod::Nftables => {
                let mut script = String::new();
                if !self.made {
                    script.push_str(&self.nft_connection_table());
                }
                let (set, l, r) = if conn.is_v4() {
                    ("conns4", conn.local, conn.remote)
                } else {
                    ("conns6", conn.local, conn.remote)
                };
                // Both directions: what the socket sends and what it receives.
                script.push_str(&format!(
                    "add element inet {t} {set} {{ {l} . {lp} . {r} . {rp}, {r} . {rp} . {l} . {lp} }}\n",
                    t = self.table,
                    lp = conn.local_port,
                    rp = conn.remote_port,
                ));
                // The table exists once `nft` ran, even if the elements failed: the
                // drop deletes it.
                let was_made = self.made;
                self.made = true;
                let result = self.nft(&script).map(drop);
                if result.is_err() && !was_made {
                    // `nft -f` is atomic: nothing of the script was applied.
                    self.made = false;
                }
                result
            }
            LockMethod::Iptables => {
                self.iptables_rules("-I", conn)?;
                self.rules.push(conn);
                Ok(())
            }
        }
    }

    /// The commands (absolute program path first) that lift what [`NetworkLock::lock`]
    /// sets for `conn` (and the lock's table, when it makes it then): for a watchdog to
    /// run when the dumper dies. Empty for a whole-namespace lock (see
    /// [`NetworkLock::namespace_undo_commands`]) and when there is nothing to lift.
    pub fn undo_commands(&self, conn: Connection) -> Vec<Vec<String>> {
        match (self.method, &self.scope) {
            (_, Scope::Namespace(_)) | (LockMethod::Skip, _) => Vec::new(),
            (LockMethod::Nftables, _) if self.made => Vec::new(),
            (LockMethod::Nftables, _) => vec![vec![
                tool_path("nft"),
                "delete".into(),
                "table".into(),
                "inet".into(),
                self.table.clone(),
            ]],
            (LockMethod::Iptables, Scope::Connections) => {
                let c = conn.on_the_wire();
                let tool = tool_path(if c.is_v4() { "iptables" } else { "ip6tables" });
                [
                    ("INPUT", c.remote, c.remote_port, c.local, c.local_port),
                    ("OUTPUT", c.local, c.local_port, c.remote, c.remote_port),
                ]
                .into_iter()
                .map(|(chain, src, sport, dst, dport)| {
                    let mut argv = vec![tool.clone()];
                    argv.extend(iptables_rule("-D", chain, src, sport, dst, dport));
                    argv
                })
                .collect()
            }
        }
    }

    /// The commands that lift the lock [`NetworkLock::namespace`] makes, run inside the
    /// namespace `netns` names (a path that outlives the dumper, such as
    /// `/proc/<a task of the tree>/ns/net`).
    pub fn namespace_undo_commands(
        method: LockMethod,
        run_id: &str,
        netns: &Path,
    ) -> Vec<Vec<String>> {
        let in_ns = |args: &[&str], tool: &str| {
            let mut argv = vec![
                tool_path("nsenter"),
                format!("--net={}", netns.display()),
                "--".into(),
                tool_path(tool),
            ];
            argv.extend(args.iter().map(|a| a.to_string()));
            argv
        };
        match method {
            LockMethod::Skip => Vec::new(),
            LockMethod::Nftables => vec![in_ns(
                &["delete", "table", "inet", &table_name(run_id)],
                "nft",
            )],
            LockMethod::Iptables => {
                let mut out = Vec::new();
                for tool in ["iptables", "ip6tables"] {
                    for args in [
                        &["-w", "-D", "INPUT", "-j", "CRIU"][..],
                        &["-w", "-D", "OUTPUT", "-j", "CRIU"],
                        &["-w", "-F", "CRIU"],
                        &["-w", "-X", "CRIU"],
                    ] {
                        out.push(in_ns(args, tool));
                    }
                }
                out
            }
        }
    }

    /// Leaves the lock in place when dropped: the dump killed its tree, and the
    /// restore lifts it.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Lifts the lock; whatever is already gone is skipped. Done at most once: a
    /// second call (or the drop) finds nothing left.
    pub fn unlock(&mut self) -> Result<(), LockError> {
        let mut first_err = None;
        match self.method {
            LockMethod::Skip => {}
            LockMethod::Nftables => {
                if std::mem::take(&mut self.made) {
                    if let Err(e) = self.delete_nft_table() {
                        first_err.get_or_insert(e);
                    }
                }
            }
            LockMethod::Iptables => {
                for conn in std::mem::take(&mut self.rules) {
                    if let Err(e) = self.iptables_rules("-D", conn) {
                        first_err.get_or_insert(e);
                    }
                }
                if std::mem::take(&mut self.made) && self.whole_namespace() {
                    if let Err(e) = self.delete_iptables_chain() {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The table of a connection lock, as CRIU makes it.
    fn nft_connection_table(&self) -> String {
        let t = &self.table;
        let m = format!("{REPAIR_MARK:#x}");
        format!(
            "table inet {t} {{\n\
             set conns4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}\n\
             set conns6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}\n\
             chain output {{ type filter hook output priority 0; meta mark {m} accept; \
             ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; \
             ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop; }}\n\
             chain input {{ type filter hook input priority 0; meta mark {m} accept; \
             ip saddr . tcp sport . ip daddr . tcp dport @conns4 drop; \
             ip6 saddr . tcp sport . ip6 daddr . tcp dport @conns6 drop; }}\n\
             }}\n"
        )
    }

    /// Deletes our table if it is there.
    fn delete_nft_table(&self) -> Result<(), LockError> {
        let listing = self.run("nft", &["list", "tables"], None)?;
        let wanted = format!("table inet {}", self.table);
        if !listing.lines().any(|l| l.trim() == wanted) {
            return Ok(());
        }
        self.nft(&format!("delete table inet {}\n", self.table))
            .map(drop)
    }

    /// Inserts (`-I`) or deletes (`-D`) the two DROP rules of `conn`, written as CRIU
    /// writes them (so either tool's restore deletes the other's). A rule to delete
    /// that is not there is skipped.
    fn iptables_rules(&self, op: &str, conn: Connection) -> Result<(), LockError> {
        let tool = if conn.is_v4() {
            "iptables"
        } else {
            "ip6tables"
        };
        let c = conn;
        // What comes in from the peer, and what goes out to it.
        let rules = [
            ("INPUT", c.remote, c.remote_port, c.local, c.local_port),
            ("OUTPUT", c.local, c.local_port, c.remote, c.remote_port),
        ];
        for (chain, src, sport, dst, dport) in rules {
            let args = |op: &str| iptables_rule(op, chain, src, sport, dst, dport);
            let run = |args: Vec<String>| {
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                self.run(tool, &argv, None)
            };
            // `-C` fails when the rule is not there: nothing to delete then.
            if op == "-D" && run(args("-C")).is_err() {
                continue;
            }
            run(args(op))?;
        }
        Ok(())
    }

    /// Removes the `CRIU` chain of a namespace lock (and the jumps to it), both families.
    fn delete_iptables_chain(&self) -> Result<(), LockError> {
        let jumps = "*filter\n:CRIU - [0:0]\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\nCOMMIT\n";
        let chain = "*filter\n:CRIU - [0:0]\n-X CRIU\nCOMMIT\n";
        for tool in ["iptables-restore", "ip6tables-restore"] {
            // The jumps may be gone already; the chain then goes on its own.
            let _ = self.run(tool, &["-w", "--noflush"], Some(jumps));
            self.run(tool, &["-w", "--noflush"], Some(chain))?;
        }
        Ok(())
    }

    fn nft(&self, script: &str) -> Result<String, LockError> {
        self.run("nft", &["-f", "-"], Some(script))
    }

    /// Runs `tool args` (in the locked namespace), with `input` on stdin; its stdout.
    fn run(&self, tool: &str, args: &[&str], input: Option<&str>) -> Result<String, LockError> {
        let mut cmd = match &self.scope {
            Scope::Namespace(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg("--").arg(tool);
                c
            }
            Scope::Connections => Command::new(tool),
        };
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let command = format!("{tool} {}", args.join(" "));
        tracing::debug!(%command, input = input.unwrap_or(""), "network lock");
        let spawn_err = |source| LockError::Spawn {
            method: self.method,
            tool: tool.to_owned(),
            source,
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            // A tool that died early closed its end: its status says why.
            let _ = stdin.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        if !out.status.success() {
            return Err(LockError::Failed {
                method: self.method,
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for NetworkLock {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = self.unlock() {
            tracing::error!("lifting the network lock: {e}");
        }
    }
}

/// The arguments of one of CRIU's per-connection DROP rules (`op`: `-I`, `-D`, `-C`).
fn iptables_rule(
    op: &str,
    chain: &str,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
) -> Vec<String> {
    [
        "-w",
        "-t",
        "filter",
        op,
        chain,
        "--protocol",
        "tcp",
        "-m",
        "mark",
        "!",
        "--mark",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("{REPAIR_MARK:#X}"),
        "--source".into(),
        src.to_string(),
        "--sport".into(),
        sport.to_string(),
        "--destination".into(),
        dst.to_string(),
        "--dport".into(),
        dport.to_string(),
        "-j".into(),
        "DROP".into(),
    ])
    .collect()
}

/// Where `tool` is installed: along PATH, then the sbin and bin directories, which
/// root's PATH has but a test runner's may not.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// Where `tool` is ([`find_tool`]); the name itself if nowhere.
fn tool_path(tool: &str) -> String {
    find_tool(tool).map_or_else(|| tool.to_owned(), |p| p.display().to_string())
}

/// Whether the tool a method runs is installed ([`find_tool`]).
pub fn tool_available(method: LockMethod) -> bool {
    method.tool().is_none_or(|tool| find_tool(tool).is_some())
}

/// An IPv4 address from an image's first address word (network order in memory).
pub fn ipv4_from_word(word: u32) -> Ipv4Addr {
    Ipv4Addr::from(word.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(l: &str, lp: u16, r: &str, rp: u16) -> Connection {
        Connection {
            local: l.parse().unwrap(),
            local_port: lp,
            remote: r.parse().unwrap(),
            remote_port: rp,
        }
    }

    #[test]
    fn methods_read_as_criu_numbers_them() {
        for m in [LockMethod::Iptables, LockMethod::Nftables, LockMethod::Skip] {
            assert_eq!(LockMethod::from_image(Some(m.image_value())), Some(m));
            assert_eq!(LockMethod::parse(&m.to_string()), Some(m));
        }
        assert_eq!(LockMethod::from_image(None), Some(LockMethod::Iptables));
        assert_eq!(LockMethod::from_image(Some(9)), None);
        assert_eq!(LockMethod::parse("pf"), None);
    }

    #[test]
    fn mapped_addresses_lock_as_ipv4() {
        let c = conn("::ffff:127.0.0.1", 80, "::ffff:10.0.0.2", 4000).on_the_wire();
        assert_eq!(c, conn("127.0.0.1", 80, "10.0.0.2", 4000));
        let v6 = conn("::1", 80, "::ffff:10.0.0.2", 4000);
        assert_eq!(v6.on_the_wire(), v6, "a mixed pair stays as it is");
        assert_eq!(v6.to_string(), "[::1]:80 -> [::ffff:10.0.0.2]:4000");
    }

    #[test]
    fn the_table_is_criu_s() {
        // As CRIU 4.2 named the table of a dump with this run id.
        assert_eq!(
            table_name("44457f58-4340-441e-9263-a2e7d409ba81"),
            "CRIU-44457f58-4340-441e-92"
        );
        assert_eq!(table_name("42"), "CRIU-42");
        let lock = NetworkLock::connections(LockMethod::Nftables, "abc");
        let t = lock.nft_connection_table();
        assert!(t.starts_with("table inet CRIU-abc {"), "{t}");
        assert!(t.contains("meta mark 0xc114 accept"), "{t}");
        assert!(
            t.contains("@conns4 drop") && t.contains("@conns6 drop"),
            "{t}"
        );
        let mut lock = lock;
        lock.keep();
    }
}
