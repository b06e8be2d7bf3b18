//! Configuration files under the RPC, in CRIU's order: the default files (read by
//! `criu swrk` as by any CRIU command), then the request's own options over them, then
//! the file the request names in `config_file` (runc names `/etc/criu/runc.conf`) over
//! both. An option of a file is mapped onto the `criu_opts` field it sets; one with no
//! RPC counterpart is refused by name and place.

use prost::Message;

use criu_core::images::pb::{self, CriuCgMode, CriuNetworkLockMethod, CriuOpts};

use super::RpcError;
use crate::config::{self, ConfigOption};

/// The options a request is served with: the default files', the request's, then its
/// `config_file`'s (a missing one is skipped, as CRIU skips it).
pub fn effective(request: &CriuOpts) -> Result<CriuOpts, RpcError> {
    let mut opts = CriuOpts::default();
    for file in config::default_files() {
        apply_file(&mut opts, &file)?;
    }
    if let Some(env) = std::env::var_os("CRIU_CONFIG_FILE") {
        apply_file(&mut opts, std::path::Path::new(&env))?;
    }
    // Decoding over what the files set: the request's set fields win, its lists add.
    opts.merge(request.encode_to_vec().as_slice())
        .map_err(|e| RpcError::invalid(format!("re-reading the request's options: {e}")))?;
    if let Some(file) = request.config_file.clone() {
        apply_file(&mut opts, std::path::Path::new(&file))?;
    }
    Ok(opts)
}

fn apply_file(opts: &mut CriuOpts, file: &std::path::Path) -> Result<(), RpcError> {
    let Some(options) = config::read(file).map_err(RpcError::invalid)? else {
        return Ok(());
    };
    for o in &options {
        apply(opts, o)?;
        tracing::info!(option = %o.name, value = ?o.value, place = %o.place(), "from a configuration file");
    }
    Ok(())
}

/// Sets the field of `opts` that option `o` stands for.
fn apply(opts: &mut CriuOpts, o: &ConfigOption) -> Result<(), RpcError> {
    let bad = |why: String| RpcError::invalid(format!("{}: option {}: {why}", o.place(), o.name));
    let flag = |field: &mut Option<bool>| -> Result<(), RpcError> {
        match &o.value {
            None => {
                *field = Some(true);
                Ok(())
            }
            Some(v) => Err(bad(format!("takes no value, the file gives it {v:?}"))),
        }
    };
    let value = || o.value.clone().ok_or_else(|| bad("needs a value".into()));
    let number = || -> Result<u32, RpcError> {
        let v = value()?;
        v.parse().map_err(|_| bad(format!("{v:?} is not a number")))
    };
    match o.name.as_str() {
        "tcp-established" => flag(&mut opts.tcp_established)?,
        "tcp-close" => flag(&mut opts.tcp_close)?,
        "skip-in-flight" | "tcp-skip-in-flight" => flag(&mut opts.tcp_skip_in_flight)?,
        "file-locks" => flag(&mut opts.file_locks)?,
        "link-remap" => flag(&mut opts.link_remap)?,
        "ext-unix-sk" => flag(&mut opts.ext_unix_sk)?,
        "shell-job" => flag(&mut opts.shell_job)?,
        "leave-running" => flag(&mut opts.leave_running)?,
        "leave-stopped" => flag(&mut opts.leave_stopped)?,
        "evasive-devices" => flag(&mut opts.evasive_devices)?,
        "auto-dedup" => flag(&mut opts.auto_dedup)?,
        "display-stats" => flag(&mut opts.display_stats)?,
        "orphan-pts-master" => flag(&mut opts.orphan_pts_master)?,
        "force-irmap" => flag(&mut opts.force_irmap)?,
        "restore-sibling" => flag(&mut opts.rst_sibling)?,
        "weak-sysctls" => flag(&mut opts.weak_sysctls)?,
        "skip-file-rwx-check" => flag(&mut opts.skip_file_rwx_check)?,
        "log-file" => opts.log_file = Some(value()?),
        "verbosity" | "v" => {
            opts.log_level = Some(match &o.value {
                None => 4,
                Some(_) => number()?.min(4) as i32,
            })
        }
        "root" => opts.root = Some(value()?),
        "freeze-cgroup" => opts.freeze_cgroup = Some(value()?),
        "lsm-profile" => opts.lsm_profile = Some(value()?),
        "ghost-limit" => opts.ghost_limit = Some(number()?),
        "timeout" => opts.timeout = Some(number()?),
        "external" => opts.external.push(value()?),
        "irmap-scan-path" => opts.irmap_scan_paths.push(value()?),
        "cgroup-yard" => opts.cgroup_yard = Some(value()?),
        "cgroup-root" => {
            let v = value()?;
            let (ctrl, path) = match v.split_once(':') {
                Some((c, p)) => (Some(c.to_owned()), p.to_owned()),
                None => (None, v),
            };
            opts.cg_root.push(pb::CgroupRoot { ctrl, path });
        }
        "manage-cgroups" => {
            let mode = match o.value.as_deref() {
                None | Some("soft") => CriuCgMode::Soft,
                Some("full") => CriuCgMode::Full,
                Some("strict") => CriuCgMode::Strict,
                Some("props") => CriuCgMode::Props,
                Some("none") => CriuCgMode::CgNone,
                Some("ignore") => CriuCgMode::Ignore,
                Some(m) => return Err(bad(format!("{m:?} is not a cgroup mode"))),
            };
            opts.manage_cgroups = Some(true);
            opts.manage_cgroups_mode = Some(mode as i32);
        }
        "network-lock" => {
            let method = match value()?.as_str() {
                "iptables" => CriuNetworkLockMethod::Iptables,
                "nftables" => CriuNetworkLockMethod::Nftables,
                "skip" => CriuNetworkLockMethod::Skip,
                m => return Err(bad(format!("{m:?} is not a network lock method"))),
            };
            opts.network_lock = Some(method as i32);
        }
        other => {
            return Err(RpcError::unsupported(format!(
                "{}: option {other} is not supported in a configuration file under the RPC",
                o.place()
            )))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn apply_text(opts: &mut CriuOpts, text: &str) -> Result<(), RpcError> {
        for o in config::parse(text, Path::new("/etc/criu/runc.conf")).unwrap() {
            apply(opts, &o)?;
        }
        Ok(())
    }

    #[test]
    fn runc_conf_overrides_the_request() {
        let mut opts = CriuOpts {
            tcp_established: Some(false),
            log_file: Some("dump.log".into()),
            ..Default::default()
        };
        apply_text(
            &mut opts,
            "tcp-established\nlog-file mine.log\nmanage-cgroups full\nverbosity 4\n\
             external net[1]:x\n",
        )
        .unwrap();
        assert_eq!(opts.tcp_established, Some(true));
        assert_eq!(opts.log_file.as_deref(), Some("mine.log"));
        assert_eq!(opts.manage_cgroups_mode, Some(CriuCgMode::Full as i32));
        assert_eq!(opts.log_level, Some(4));
        assert_eq!(opts.external, ["net[1]:x"]);
    }

    #[test]
    fn an_option_without_rpc_meaning_is_refused_by_place() {
        let err = apply_text(&mut CriuOpts::default(), "tcp-close\npage-server\n").unwrap_err();
        assert!(
            err.msg
                .contains("/etc/criu/runc.conf:2: option page-server"),
            "{}",
            err.msg
        );
        let err = apply_text(&mut CriuOpts::default(), "timeout ten\n").unwrap_err();
        assert!(err.msg.contains("not a number"), "{}", err.msg);
    }

    #[test]
    fn the_request_wins_over_default_files() {
        let mut opts = CriuOpts::default();
        apply_text(&mut opts, "tcp-established\nghost-limit 5\n").unwrap();
        let request = CriuOpts {
            tcp_established: Some(false),
            images_dir_fd: 7,
            external: vec!["unix[3]".into()],
            ..Default::default()
        };
        opts.merge(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(opts.tcp_established, Some(false));
        assert_eq!(opts.ghost_limit, Some(5));
        assert_eq!(opts.images_dir_fd, 7);
        assert_eq!(opts.external, ["unix[3]"]);
    }
}
