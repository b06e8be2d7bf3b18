//! `criu-rs swrk FD`: CRIU's RPC service on a socket our caller made (runc, libcriu and
//! go-criu run `criu swrk FD` this way). Each packet is one `criu_req` of CRIU's
//! `rpc.proto`; each answer one `criu_resp`; during a dump or a restore with
//! `notify_scripts`, NOTIFY round trips tell the caller where the work is.
//!
//! As CRIU 4.2, one request is served and the process exits, except VERSION and
//! FEATURE_CHECK with `keep_open`, after which the next request is read. A packet that
//! is no request gets an error response (type EMPTY), never a crash.

mod channel;
mod config;
mod opts;

use std::path::Path;

use clap::Args;
use criu_core::images::pb::{
    CriuDumpResp, CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp, CriuRestoreResp,
    CriuVersion,
};
use criu_core::notify::Notifier;

use crate::signals::Signals;
use channel::{req_type_name, Channel, RecvError};

#[derive(Args)]
pub struct SwrkArgs {
    /// The caller's end of a SOCK_SEQPACKET socket pair, inherited as this fd.
    #[arg(value_name = "FD")]
    fd: i32,
}

/// A failed request as CRIU reports it: `cr_errno` (when there is one) and `cr_errmsg`.
#[derive(Debug)]
pub struct RpcError {
    pub errno: Option<i32>,
    pub msg: String,
}

impl RpcError {
    /// A request that cannot be served as asked (bad or missing options).
    pub fn invalid(msg: impl Into<String>) -> Self {
        RpcError {
            errno: Some(libc::EINVAL),
            msg: msg.into(),
        }
    }

    /// A request, or an option of it, that criu-rs does not support.
    pub fn unsupported(msg: impl Into<String>) -> Self {
        RpcError {
            errno: Some(libc::ENOTSUP),
            msg: msg.into(),
        }
    }

    /// A failure of the engine, with the errno of the system call under it, if any.
    fn engine(what: &str, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut errno = None;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                errno = io.raw_os_error();
            }
            cause = e.source();
        }
        RpcError {
            errno,
            msg: format!("{what}: {err}"),
        }
    }

    /// The response saying so; the log gets the line runc looks for ("Error").
    fn response(self, ty: i32) -> CriuResp {
        tracing::error!("Error: {}", self.msg);
        CriuResp {
            r#type: ty,
            success: false,
            cr_errno: self.errno.filter(|&e| e != 0),
            cr_errmsg: Some(self.msg),
            ..Default::default()
        }
    }
}

/// Serves the requests on fd `args.fd`; the exit code is 0 when the last one
/// succeeded.
///
/// The stop signals keep their usual effect while we wait for a request: they are
/// taken over only for the time of a dump or a restore, which they stop cleanly (the
/// process has no other thread then, as `Signals::catch` needs).
pub fn run(args: SwrkArgs) -> Result<i32, String> {
    let channel = Channel::take(args.fd)?;
    let peer = channel.peer_pid()?;
    loop {
        let req = match channel.recv() {
            Ok(req) => req,
            Err(RecvError::HungUp) => return Ok(1),
            Err(e @ RecvError::Garbled(_)) => {
                let resp = RpcError::invalid(e.to_string()).response(CriuReqType::Empty as i32);
                let _ = channel.send(&resp);
                return Ok(1);
            }
            Err(RecvError::Io(e)) => return Err(format!("swrk: reading a request: {e}")),
        };
        let keep_open = req.keep_open == Some(true);
        let resp = if keep_open && !may_keep_open(req.r#type) {
            // As CRIU: only requests that leave nothing behind may keep the socket.
            RpcError::invalid(format!(
                "keep_open is not allowed with a {} request",
                req_type_name(req.r#type)
            ))
            .response(CriuReqType::Empty as i32)
        } else {
            serve(&channel, peer, req)
        };
        let ok = resp.success;
        if let Err(e) = channel.send(&resp) {
            // A dump is done by now, a restored tree runs: only the answer is lost.
            tracing::error!("Error: sending the response: {e}");
            return Ok(1);
        }
        // As CRIU's: after a PRE_DUMP the caller sends the next (pre-)dump on the same
        // socket.
        let goes_on = keep_open || resp.r#type == CriuReqType::PreDump as i32;
        if !(goes_on && ok) {
            return Ok(if ok { 0 } else { 1 });
        }
    }
}

fn may_keep_open(ty: i32) -> bool {
    ty == CriuReqType::Version as i32 || ty == CriuReqType::FeatureCheck as i32
}

/// One request, answered.
fn serve(channel: &Channel, peer: i32, req: CriuReq) -> CriuResp {
    let ty = req.r#type;
    let result = match CriuReqType::try_from(ty) {
        Ok(CriuReqType::Version) => Ok(version()),
        Ok(CriuReqType::FeatureCheck) => Ok(feature_check(&req)),
        Ok(CriuReqType::Check) => check(),
        Ok(CriuReqType::Dump) => dump(channel, peer, &req),
        Ok(CriuReqType::Restore) => restore(channel, peer, &req),
        Ok(CriuReqType::PreDump | CriuReqType::SinglePreDump) => pre_dump(peer, &req),
        Ok(
            t @ (CriuReqType::PageServer
            | CriuReqType::PageServerChld
            | CriuReqType::CpuinfoDump
            | CriuReqType::CpuinfoCheck
            | CriuReqType::WaitPid),
        ) => Err(RpcError::unsupported(format!(
            "{} requests are not supported by criu-rs",
            t.as_str_name()
        ))),
        Ok(CriuReqType::Empty | CriuReqType::Notify) | Err(_) => {
            return RpcError::invalid(format!("invalid request ({})", req_type_name(ty)))
                .response(CriuReqType::Empty as i32)
        }
    };
    match result {
        Ok(resp) => CriuResp {
            r#type: ty,
            success: true,
            ..resp
        },
        Err(e) => e.response(ty),
    }
}

/// CRIU 4.2's numbers, so that callers' minimum-version checks pass (go-criu and runc
/// compute major*10000 + minor*100 + sublevel, and add a minor when `gitid` is set, as
/// they do for CRIU itself); `gitid` and `name` say it is criu-rs.
fn version() -> CriuResp {
    CriuResp {
        version: Some(CriuVersion {
            major_number: 4,
            minor_number: 2,
            sublevel: Some(0),
            gitid: Some(crate::GIT_ID.to_owned()),
            name: Some("criu-rs".to_owned()),
            extra: None,
        }),
        ..Default::default()
    }
}

/// Each feature asked about, answered for this kernel and this engine; the ones not
/// asked about are false, as CRIU answers.
fn feature_check(req: &CriuReq) -> CriuResp {
    let asked = req.features.unwrap_or_default();
    let usable = |asked: Option<bool>, names: &[&str]| {
        asked == Some(true)
            && names
                .iter()
                .all(|n| criu_core::check::feature(n).is_some_and(|s| s.is_yes()))
    };
    CriuResp {
        features: Some(CriuFeatures {
            mem_track: Some(usable(asked.mem_track, &["mem_dirty_track"])),
            lazy_pages: Some(usable(asked.lazy_pages, &["uffd", "uffd-noncoop"])),
            pidfd_store: Some(usable(asked.pidfd_store, &["pidfd_store"])),
        }),
        ..Default::default()
    }
}

/// CRIU's basic `check`: success when this kernel has what criu-rs needs.
fn check() -> Result<CriuResp, RpcError> {
    let missing: Vec<String> = criu_core::check::basic()
        .into_iter()
        .filter_map(|(what, r)| r.err().map(|why| format!("{what}: {why}")))
        .collect();
    if missing.is_empty() {
        Ok(CriuResp::default())
    } else {
        Err(RpcError::unsupported(missing.join("; ")))
    }
}

/// The request's options, which dump and restore need, with the configuration files'
/// (see `config`).
fn options(req: &CriuReq) -> Result<CriuOpts, RpcError> {
    let opts = req
        .opts
        .as_ref()
        .ok_or_else(|| RpcError::invalid("the request has no opts"))?;
    config::effective(opts)
}

/// The log of a dump or a restore, as the options ask.
fn start_log(o: &CriuOpts, dirs: &opts::Dirs) -> Result<crate::logging::LogGuard, RpcError> {
    let (path, level) = opts::log_target(o, dirs)?;
    crate::logging::install(path.as_deref(), level).map_err(RpcError::invalid)
}

fn dump(channel: &Channel, peer: i32, req: &CriuReq) -> Result<CriuResp, RpcError> {
    let o = &options(req)?;
    let dirs = opts::dirs(o, peer)?;
    let _log = start_log(o, &dirs)?;
    // What the caller asked, as it asked it: the first thing to read when a runtime's
    // checkpoint goes wrong.
    tracing::debug!(options = ?o, "dump request");
    let mut dump_opts = opts::dump_options(o, peer, &dirs)?;
    let signals = Signals::catch();
    dump_opts.interrupt = signals.interrupt();
    if o.notify_scripts == Some(true) {
        let (channel, interrupt) = (channel.clone(), signals.interrupt());
        dump_opts.notify = Notifier::new(move |event| channel.notify(event, &interrupt));
    }
    tracing::info!(pid = dump_opts.pid.0, dir = %dirs.images.display(), "dump requested over RPC");
    let result = criu_core::dump::dump(&dump_opts);
    signals.finish(result.is_ok());
    let stats = result.map_err(|e| RpcError::engine("dump failed", &e))?;
    tracing::info!(?stats, "dump finished");
    Ok(CriuResp {
        dump: Some(CriuDumpResp {
            restored: Some(false),
        }),
        ..Default::default()
    })
}

/// A PRE_DUMP (or SINGLE_PRE_DUMP): the tree's memory, the tree running on (see
/// `criu_core::dump::predump`); the options of a dump that apply are taken.
fn pre_dump(peer: i32, req: &CriuReq) -> Result<CriuResp, RpcError> {
    let o = &options(req)?;
    let dirs = opts::dirs(o, peer)?;
    let _log = start_log(o, &dirs)?;
    tracing::debug!(options = ?o, "pre-dump request");
    let mut dump_opts = opts::dump_options(o, peer, &dirs)?;
    let signals = Signals::catch();
    dump_opts.interrupt = signals.interrupt();
    tracing::info!(pid = dump_opts.pid.0, dir = %dirs.images.display(), "pre-dump requested over RPC");
    let result = criu_core::dump::predump::pre_dump(&dump_opts);
    signals.finish(result.is_ok());
    let report = result.map_err(|e| RpcError::engine("pre-dump failed", &e))?;
    tracing::info!(stats = ?report.stats, tracker = ?report.tracker, "pre-dump finished");
    Ok(CriuResp::default())
}

fn restore(channel: &Channel, peer: i32, req: &CriuReq) -> Result<CriuResp, RpcError> {
    let o = &options(req)?;
    let dirs = opts::dirs(o, peer)?;
    let _log = start_log(o, &dirs)?;
    tracing::debug!(options = ?o, "restore request");
    let mut restore_opts = opts::restore_options(o, &dirs)?;
    let signals = Signals::catch();
    restore_opts.interrupt = signals.interrupt();
    if o.notify_scripts == Some(true) {
        let (channel, interrupt) = (channel.clone(), signals.interrupt());
        restore_opts.notify = Notifier::new(move |event| channel.notify(event, &interrupt));
    }
    tracing::info!(dir = %dirs.images.display(), "restore requested over RPC");
    let result = criu_core::restore::restore(&restore_opts);
    signals.finish(result.is_ok());
    let restored = result.map_err(|e| RpcError::engine("restore failed", &e))?;
    tracing::info!(pid = restored.pid.0, "restore finished");
    move_restore_stats(&dirs);
    // The tree runs on without us: it is handed to our parent's subreaper when we exit.
    Ok(CriuResp {
        restore: Some(CriuRestoreResp {
            pid: restored.pid.0,
        }),
        ..Default::default()
    })
}

/// The engine writes `stats-restore` with the images; CRIU's callers (podman's
/// `--print-stats`) read it in the work dir.
fn move_restore_stats(dirs: &opts::Dirs) {
    if dirs.work == dirs.images {
        return;
    }
    let from = dirs.images.join("stats-restore");
    let to = dirs.work.join("stats-restore");
    if Path::new(&from).exists() {
        if let Err(e) = std::fs::copy(&from, &to).and_then(|_| std::fs::remove_file(&from)) {
            tracing::warn!("moving stats-restore to the work dir: {e}");
        }
    }
}
