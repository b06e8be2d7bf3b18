//! The service socket: one `criu_req` per packet in, one `criu_resp` per packet out,
//! and the NOTIFY round trips in between.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use criu_core::images::pb::{CriuNotify, CriuReq, CriuReqType, CriuResp};
use criu_core::interrupt::Interrupt;
use criu_core::notify::Event;
use criu_core::sys;
use prost::Message;

/// The largest request taken: far above any real one (runc's are a few KiB), and small
/// enough that a bogus length cannot make us allocate much.
const MAX_REQUEST: usize = 4 << 20;

/// How often a wait for the caller looks whether a stop signal came (below a second).
const WAKE_UP: std::time::Duration = std::time::Duration::from_millis(100);

/// What came instead of a request.
#[derive(Debug)]
pub enum RecvError {
    /// The caller closed its end (or sent an empty packet, which CRIU takes alike).
    HungUp,
    /// A packet that is no `criu_req`.
    Garbled(String),
    /// The socket failed.
    Io(std::io::Error),
}

impl std::fmt::Display for RecvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecvError::HungUp => f.write_str("the caller hung up"),
            RecvError::Garbled(why) => write!(f, "the request is no criu_req: {why}"),
            RecvError::Io(e) => write!(f, "reading the request: {e}"),
        }
    }
}

/// Our end of the caller's SOCK_SEQPACKET socket. Clones share it.
#[derive(Clone)]
pub struct Channel {
    sock: Arc<OwnedFd>,
}

impl Channel {
    /// Takes the socket fd our caller passed us (`swrk FD`), after checking it is one
    /// of the right kind.
    pub fn take(fd: i32) -> Result<Channel, String> {
        let sock = sys::take_inherited_fd(fd).map_err(|e| format!("swrk {fd}: {e}"))?;
        let ty = sys::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, libc::SO_TYPE)
            .map_err(|e| format!("swrk {fd}: not a socket: {e}"))?;
        if ty != libc::SOCK_SEQPACKET {
            return Err(format!(
                "swrk {fd}: a SOCK_SEQPACKET socket is expected (type {ty})"
            ));
        }
        // Reads wake up now and then, so that a stop signal can end a wait for a
        // caller that does not answer (struct timeval: seconds, microseconds).
        let mut timeout = [0u8; 16];
        timeout[8..].copy_from_slice(&(WAKE_UP.as_micros() as i64).to_ne_bytes());
        sys::setsockopt_bytes(sock.as_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(|e| format!("swrk {fd}: setting a receive timeout: {e}"))?;
        Ok(Channel {
            sock: Arc::new(sock),
        })
    }

    /// The pid of the process at the other end (SO_PEERCRED), whose fds the requests
    /// name.
    pub fn peer_pid(&self) -> Result<i32, String> {
        // struct ucred: pid, uid, gid, three ints.
        let mut cred = [0u8; 12];
        sys::getsockopt_bytes(
            self.sock.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred,
        )
        .map_err(|e| format!("reading the caller's credentials: {e}"))?;
        Ok(i32::from_ne_bytes([cred[0], cred[1], cred[2], cred[3]]))
    }

    /// The next request, whole: its length is peeked first, so nothing is cut off.
    pub fn recv(&self) -> Result<CriuReq, RecvError> {
        self.recv_unless(None)
    }

    /// As `recv`; with `interrupt`, the wait also ends when it is raised (a stop
    /// signal during a dump or a restore, whose caller does not answer).
    fn recv_unless(&self, interrupt: Option<&Interrupt>) -> Result<CriuReq, RecvError> {
        let fd = self.sock.as_fd();
        // Reads time out every WAKE_UP (see `take`) to look at the interrupt.
        let len = loop {
            match sys::recv(fd, &mut [], libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(len) => break len,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RecvError::Io(e)),
            }
            if let Some(sig) = interrupt.and_then(Interrupt::signal) {
                return Err(RecvError::Io(std::io::Error::other(format!(
                    "{} received while waiting for the caller",
                    criu_core::interrupt::signal_name(sig)
                ))));
            }
        };
        if len == 0 {
            // Take the empty packet off the queue, if it was one.
            let _ = sys::recv(fd, &mut [], libc::MSG_DONTWAIT);
            return Err(RecvError::HungUp);
        }
        if len > MAX_REQUEST {
            let _ = sys::recv(fd, &mut [], libc::MSG_TRUNC);
            return Err(RecvError::Garbled(format!(
                "{len} bytes, more than the {MAX_REQUEST} taken"
            )));
        }
        let mut buf = vec![0u8; len];
        let got = sys::recv(fd, &mut buf, 0).map_err(RecvError::Io)?;
        buf.truncate(got);
        CriuReq::decode(buf.as_slice()).map_err(|e| RecvError::Garbled(e.to_string()))
    }

    /// Sends one response. A caller that is gone makes this fail (never SIGPIPE).
    pub fn send(&self, resp: &CriuResp) -> std::io::Result<()> {
        let buf = resp.encode_to_vec();
        let sent = sys::send(self.sock.as_fd(), &buf, libc::MSG_NOSIGNAL)?;
        if sent != buf.len() {
            return Err(std::io::Error::other(format!(
                "response cut to {sent} of {} bytes",
                buf.len()
            )));
        }
        Ok(())
    }

    /// Sends one response with our fd `fd` attached (SCM_RIGHTS), as CRIU sends the
    /// master of an orphan pty.
    fn send_with_fd(&self, resp: &CriuResp, fd: std::os::fd::RawFd) -> std::io::Result<()> {
        // Our own copy: the engine keeps `fd` open until the caller has answered.
        let copy = sys::dup_fd(fd)?;
        let buf = resp.encode_to_vec();
        let sent = sys::send_with_fds(
            self.sock.as_fd(),
            &buf,
            &[copy.as_fd()],
            libc::MSG_NOSIGNAL,
            None,
        )?;
        if sent != buf.len() {
            return Err(std::io::Error::other("notification cut short"));
        }
        Ok(())
    }

    /// Tells the caller `event` is reached and waits for its answer: a NOTIFY request
    /// with `notify_success` set goes on; anything else stops the work.
    pub fn notify(&self, event: Event, interrupt: &Interrupt) -> Result<(), String> {
        let resp = CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify {
                script: Some(event.script_name().to_owned()),
                pid: event.pid().map(|p| p.0),
            }),
            ..Default::default()
        };
        match event.fd() {
            None => self.send(&resp),
            Some(fd) => self.send_with_fd(&resp, fd),
        }
        .map_err(|e| format!("sending the notification: {e}"))?;
        let answer = self
            .recv_unless(Some(interrupt))
            .map_err(|e| e.to_string())?;
        if answer.r#type != CriuReqType::Notify as i32 {
            return Err(format!(
                "the caller answered with a {} request instead of NOTIFY",
                req_type_name(answer.r#type)
            ));
        }
        if answer.notify_success != Some(true) {
            return Err("the caller reported a failure".into());
        }
        Ok(())
    }
}

/// A request type's name in rpc.proto, or its number.
pub fn req_type_name(raw: i32) -> String {
    CriuReqType::try_from(raw)
        .map(|t| t.as_str_name().to_owned())
        .unwrap_or_else(|_| format!("type {raw}"))
}
