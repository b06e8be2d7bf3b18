//! Sockets: creating, binding, connecting, options, filters, and reading queues without taking them.

use super::*;

/// socket(2) with `SOCK_CLOEXEC`.
pub fn socket(domain: libc::c_int, ty: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd =
        check(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) } as libc::c_long)?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// send(2) of one buffer; returns the bytes sent.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel reads at most buf.len() bytes from buf, which we borrow.
    let n = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// recv(2) into one buffer; returns the bytes received.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into buf, which we borrow mutably.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// getsockopt(2) into `buf`; returns the option length the kernel reported (which may
/// exceed `buf.len()` for options that say how much room they need).
pub fn getsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` (= buf.len()) bytes into buf and updates len.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    } as libc::c_long)?;
    Ok(len as usize)
}

/// getsockopt(2) of an int-valued option.
pub fn getsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<i32> {
    let mut buf = [0u8; 4];
    getsockopt_bytes(fd, level, name, &mut buf)?;
    Ok(i32::from_ne_bytes(buf))
}

/// setsockopt(2) of an int-valued option.
pub fn setsockopt_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: i32,
) -> io::Result<()> {
    // SAFETY: the kernel reads one int from `value`, which lives across the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// The classic BPF program attached to a socket (`SO_GET_FILTER`), one raw
/// `struct sock_filter` (code u16, jt u8, jf u8, k u32) per element; empty when none.
pub fn socket_filter(fd: BorrowedFd<'_>) -> io::Result<Vec<[u8; 8]>> {
    const SO_GET_FILTER: libc::c_int = 26;
    // For this option the length is counted in instructions, not bytes: a first call
    // with length 0 asks how many there are.
    let mut count: libc::socklen_t = 0;
    // SAFETY: with a zero length the kernel only writes `count`; the null buffer is unused.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            std::ptr::null_mut(),
            &mut count,
        )
    } as libc::c_long)?;
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut prog = vec![[0u8; 8]; count as usize];
    // SAFETY: `prog` holds `count` 8-byte instructions, the most the kernel copies for
    // this length; it fails with EINVAL rather than overflow if the filter grew meanwhile.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_GET_FILTER,
            prog.as_mut_ptr().cast(),
            &mut count,
        )
    } as libc::c_long)?;
    prog.truncate(count as usize);
    Ok(prog)
}

/// getsockname(2) (`peer` false) or getpeername(2) (`peer` true): the raw address bytes.
pub fn socket_address(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain bytes; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut addr as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into `addr` and updates len.
    let ret = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), ptr, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), ptr, &mut len)
        }
    };
    check(ret as libc::c_long)?;
    let len = (len as usize).min(size_of::<libc::sockaddr_storage>());
    // SAFETY: `addr` is a live, initialised sockaddr_storage of at least `len` bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&addr as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    Ok(bytes.to_vec())
}

/// What one `recv_peek` returned.
#[derive(Debug)]
pub struct Peeked {
    /// Bytes copied into the buffer (0 at end of stream).
    pub len: usize,
    /// The message's whole length when `trunc` was asked (datagrams); else `len`.
    pub full_len: usize,
    /// The control data did not fit (`MSG_CTRUNC`).
    pub control_truncated: bool,
    /// Descriptors that came with the message (`SCM_RIGHTS`), in order: peeking
    /// installs copies in this process; they close when dropped. (A pidfd the kernel
    /// adds for `SO_PASSPIDFD` is closed at once; its message is in `cmsgs`.)
    pub fds: Vec<OwnedFd>,
    /// (level, type) of every control message.
    pub cmsgs: Vec<(i32, i32)>,
}

/// recvmsg(2) with `MSG_PEEK | MSG_DONTWAIT`: copies the next queued message (or stream
/// bytes) without dequeuing it. With `SO_PEEK_OFF` set, each call moves on past what it
/// returned. `trunc` adds `MSG_TRUNC` so a datagram's real length is reported (never
/// use it on stream sockets, where it means "discard"). `Ok(None)` when the queue is
/// empty (EAGAIN).
pub fn recv_peek(fd: BorrowedFd<'_>, buf: &mut [u8], trunc: bool) -> io::Result<Option<Peeked>> {
    // 2 KiB, 8-aligned as cmsghdr needs: room for SCM_MAX_FD descriptors and the
    // credentials or pidfd a socket may add.
    let mut control = [0u64; 256];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    let mut flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    if trunc {
        flags |= libc::MSG_TRUNC;
    }
    // SAFETY: iov covers `buf` and msg_control covers `control`, both borrowed mutably for
    // the call; the kernel writes no more than their lengths.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(err)
        };
    }
    let mut out = Peeked {
        len: (n as usize).min(buf.len()),
        full_len: n as usize,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds: Vec::new(),
        cmsgs: Vec::new(),
    };
    const SCM_PIDFD: libc::c_int = 0x04;
    // SAFETY: msg was filled by the kernel; the CMSG_* helpers stay within
    // msg_control/msg_controllen, which describe our `control` buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR returned a header lying inside `control`.
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        out.cmsgs.push((level, kind));
        let rights = kind == libc::SCM_RIGHTS;
        if level == libc::SOL_SOCKET && (rights || kind == SCM_PIDFD) {
            // SAFETY: CMSG_LEN(0) is a pure computation.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = len.saturating_sub(header) / size_of::<RawFd>();
            // SAFETY: the header is inside `control` and its data holds `count` ints.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: i < count, so the read stays inside this control message; the
                // value may be unaligned, hence read_unaligned.
                let raw = unsafe { data.add(i).read_unaligned() };
                if raw >= 0 {
                    // SAFETY: the kernel installed this fd in our table for us alone.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    if rights {
                        out.fds.push(fd);
                    }
                }
            }
        }
        // SAFETY: as above; returns null after the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Some(out))
}

/// Most descriptors one `SCM_RIGHTS` message carries (the kernel's `SCM_MAX_FD`).
pub const SCM_MAX_FD: usize = 253;

/// sendmsg(2) of one buffer with `fds` attached as one `SCM_RIGHTS` message (none when
/// `fds` is empty), to the raw socket address `to` when given (see [`bind_raw`]);
/// returns the bytes sent.
pub fn send_with_fds(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    fds: &[BorrowedFd<'_>],
    flags: libc::c_int,
    to: Option<&[u8]>,
) -> io::Result<usize> {
    if fds.len() > SCM_MAX_FD {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // Room for one header and SCM_MAX_FD ints, 8-aligned as cmsghdr needs.
    let mut control = [0u64; 2 + SCM_MAX_FD.div_ceil(2)];
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(addr) = to {
        msg.msg_name = addr.as_ptr() as *mut libc::c_void;
        msg.msg_namelen = addr.len() as libc::socklen_t;
    }
    if !fds.is_empty() {
        let data_len = (fds.len() * size_of::<RawFd>()) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len) } as usize;
        // SAFETY: msg_control covers `control`, which holds a header and SCM_MAX_FD ints
        // (checked above); CMSG_FIRSTHDR points into it and CMSG_DATA at room for
        // `fds.len()` ints, written unaligned.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
            let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for (i, f) in fds.iter().enumerate() {
                data.add(i).write_unaligned(f.as_raw_fd());
            }
        }
    }
    // SAFETY: msg points at `iov` (over `buf`), `control` and `to`, all alive for the
    // call; the kernel only reads them.
    let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// The index of interface `name` in the network namespace of socket `sock`
/// (`SIOCGIFINDEX`). Unlike /sys/class/net, which shows the namespace the sysfs mount
/// was made in, this asks the socket's own namespace.
pub fn if_index(sock: BorrowedFd<'_>, name: &str) -> io::Result<u32> {
    let mut req = ifreq_named(name)?;
    // SAFETY: SIOCGIFINDEX reads the name and writes the index of `req`, which we own.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut req) } as libc::c_long)?;
    // SAFETY: ifru_ifindex is the union member SIOCGIFINDEX just filled.
    Ok(unsafe { req.ifr_ifru.ifru_ifindex } as u32)
}

/// An all-zero `ifreq` naming interface `name` (NUL-terminated, as ioctls want it).
fn ifreq_named(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.as_bytes().contains(&0) {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Ok(req)
}

/// Brings the loopback interface of our network namespace up (`SIOCSIFFLAGS` on `lo`).
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: socket(2) with integer arguments.
    let raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) }
            as libc::c_long,
    )?;
    // SAFETY: the kernel just returned this new fd to us; nobody else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
    let mut req = ifreq_named("lo")?;
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } as libc::c_long)?;
    // SAFETY: ifru_flags is the union member SIOCGIFFLAGS just filled.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } as libc::c_long)
        .map(drop)
}

/// socketpair(2) of `AF_UNIX` sockets of type `ty`, with `SOCK_CLOEXEC`.
pub fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    let ty = ty | libc::SOCK_CLOEXEC;
    // SAFETY: fds is a valid out array of two ints.
    let ret = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
    check(ret as libc::c_long)?;
    // SAFETY: the kernel returned two new fds that only we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// bind(2) to a raw socket address (a `sockaddr_un`, `sockaddr_in` or `sockaddr_in6`
/// laid out in bytes, exactly as long as the kernel should read).
pub fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: the kernel copies `addr.len()` bytes from `addr`, which we borrow; it does
    // not need the buffer aligned (it copies it into its own sockaddr_storage).
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// connect(2) to a raw socket address (see [`bind_raw`]).
pub fn connect_raw(fd: BorrowedFd<'_>, addr: &[u8]) -> io::Result<()> {
    // SAFETY: as in bind_raw: the kernel copies `addr.len()` bytes from `addr`.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// sendto(2) of one buffer to a raw socket address (see [`bind_raw`]).
pub fn sendto_raw(
    fd: BorrowedFd<'_>,
    buf: &[u8],
    flags: libc::c_int,
    addr: &[u8],
) -> io::Result<usize> {
    // SAFETY: the kernel reads buf.len() bytes from `buf` and addr.len() bytes from
    // `addr`, both borrowed for the call.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            flags,
            addr.as_ptr().cast(),
            addr.len() as libc::socklen_t,
        )
    };
    check(n as libc::c_long).map(|n| n as usize)
}

/// listen(2).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) } as libc::c_long).map(drop)
}

/// shutdown(2) with `SHUT_RD`, `SHUT_WR` or `SHUT_RDWR`.
pub fn shutdown(fd: BorrowedFd<'_>, how: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall on a borrowed fd.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), how) } as libc::c_long).map(drop)
}

/// setsockopt(2) of an option given as raw bytes (`struct linger`, `struct timeval`,
/// an interface name...).
pub fn setsockopt_bytes(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: the kernel reads value.len() bytes from `value`, borrowed for the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// `SO_ATTACH_FILTER`: attaches a classic BPF program, one raw `struct sock_filter`
/// (code u16, jt u8, jf u8, k u32) per element.
pub fn attach_socket_filter(fd: BorrowedFd<'_>, prog: &[[u8; 8]]) -> io::Result<()> {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const [u8; 8],
    }
    let len = libc::c_ushort::try_from(prog.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fprog = SockFprog {
        len,
        filter: prog.as_ptr(),
    };
    // SAFETY: the kernel reads one struct sock_fprog from `fprog` and `len` 8-byte
    // instructions from `prog`, which outlives the call.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&fprog as *const SockFprog).cast(),
            size_of::<SockFprog>() as libc::socklen_t,
        )
    } as libc::c_long)
    .map(drop)
}

/// The name of network interface `index` in the caller's network namespace
/// (if_indextoname(3)).
pub fn interface_name(index: u32) -> io::Result<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes (the name and its NUL)
    // into `buf`, which is that long and ours for the call.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if ret.is_null() {
        return Err(io::Error::last_os_error());
    }
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
}
