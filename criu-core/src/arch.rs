//! x86-64 register state in CRIU's image form: general registers from `NT_PRSTATUS` and
//! the FPU/SSE/AVX/AVX-512 state from the xsave area (`NT_X86_XSTATE`), both ways.
//!
//! The xsave area ptrace hands out uses the standard (non-compacted) layout: the 512-byte
//! FXSAVE legacy region, the 64-byte xsave header, then each extended component at the
//! offset CPUID leaf 0xD gives for it on this CPU.

use criu_images::pb;

use crate::sys;

/// Xsave component numbers and the image fields that hold them.
const YMM: u32 = 2;
const BNDREGS: u32 = 3;
const BNDCSR: u32 = 4;
const OPMASK: u32 = 5;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;
const PKRU: u32 = 9;

/// x86-64's `syscall` instruction.
pub const SYSCALL_INSTRUCTION: [u8; 2] = [0x0f, 0x05];

/// Whether the code of `pid` at `at` is a `syscall` instruction (unreadable code is not).
pub fn syscall_instruction_at(pid: sys::Pid, at: u64) -> bool {
    let mut code = [0u8; 2];
    sys::process_vm_readv(pid, &mut code, &[(at, 2)]).is_ok_and(|n| n == 2)
        && code == SYSCALL_INSTRUCTION
}

const LEGACY_SIZE: usize = 512;
const HEADER_SIZE: usize = 64;

pub fn regs_to_image(r: &libc::user_regs_struct) -> pb::UserX86RegsEntry {
    pb::UserX86RegsEntry {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        bp: r.rbp,
        bx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        ax: r.rax,
        cx: r.rcx,
        dx: r.rdx,
        si: r.rsi,
        di: r.rdi,
        orig_ax: r.orig_rax,
        ip: r.rip,
        cs: r.cs,
        flags: r.eflags,
        sp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
        mode: Some(pb::UserX86RegsMode::Native as i32),
    }
}

pub fn regs_from_image(e: &pb::UserX86RegsEntry) -> libc::user_regs_struct {
    libc::user_regs_struct {
        r15: e.r15,
        r14: e.r14,
        r13: e.r13,
        r12: e.r12,
        rbp: e.bp,
        rbx: e.bx,
        r11: e.r11,
        r10: e.r10,
        r9: e.r9,
        r8: e.r8,
        rax: e.ax,
        rcx: e.cx,
        rdx: e.dx,
        rsi: e.si,
        rdi: e.di,
        orig_rax: e.orig_ax,
        rip: e.ip,
        cs: e.cs,
        eflags: e.flags,
        rsp: e.sp,
        ss: e.ss,
        fs_base: e.fs_base,
        gs_base: e.gs_base,
        ds: e.ds,
        es: e.es,
        fs: e.fs,
        gs: e.gs,
    }
}

/// What becomes of a syscall the kernel would continue through restart_syscall(2)
/// (-ERESTART_RESTARTBLOCK), whose restart block lives in the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartBlock {
    /// The same task goes on: continue through restart_syscall(2).
    Continue,
    /// The task will be rebuilt and the block is lost: the call returns -EINTR.
    Interrupt,
}

/// The kernel's syscall-restart handling, applied by hand to the registers of a thread
/// stopped in a syscall: -ERESTARTSYS/-ERESTARTNOINTR/-ERESTARTNOHAND run the call again
/// (`ax = orig_ax`, `ip` back over the 2-byte `syscall` instruction); a restart-block call
/// goes as `block` says.
pub fn restart_interrupted_syscall(
    regs: &libc::user_regs_struct,
    block: RestartBlock,
) -> libc::user_regs_struct {
    let mut out = *regs;
    if (regs.orig_rax as i64) >= 0 {
        match (regs.rax as i64, block) {
            (-514..=-512, _) => {
                out.rax = regs.orig_rax;
                out.rip -= 2;
            }
            // A call that does the very same when made again from its start is made
            // again, as for -ERESTARTNOHAND, instead of failing with EINTR (and instead
            // of restart_syscall(2) when the task goes on: so it still shows as that
            // call, and a later dump knows it again).
            (-516, _) if reissues_identically(regs) => {
                out.rax = regs.orig_rax;
                out.rip -= 2;
            }
            (-516, RestartBlock::Continue) => {
                out.rax = libc::SYS_restart_syscall as u64;
                out.rip -= 2;
            }
            (-516, RestartBlock::Interrupt) => out.rax = (-libc::EINTR) as u64,
            _ => {}
        }
    }
    out
}

/// The kernel's restart codes (include/linux/errno.h), as a syscall returns them.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;

/// Registers that leave the restart of an interrupted call to the kernel, for a thread
/// put back in a ptrace stop: the kernel then restarts it as it leaves the stop (a
/// detach marks it for signal handling), unless a signal with a handler comes first, in
/// which case the call ends as the original would have (EINTR, or a restart when the
/// handler has SA_RESTART and the call allows it).
///
/// Restarting by hand instead (`restart_interrupted_syscall`: ip back at the `syscall`
/// instruction, no syscall context left) makes such a signal run its handler first and
/// the call start again, the signal lost to it: a `pause()` or `poll()` loop waiting for
/// it waits on (a signal sent during a dump or a restore always arrives so).
///
/// `regs` are those of the stop (a `-ERESTART*` code in ax). Restart-block calls are
/// restarted by hand (`block`), as our injected calls may have replaced the task's
/// restart block, except poll(2) without a timeout, which is left to the kernel as the
/// plain restart of the same call.
pub fn kernel_restart(
    regs: &libc::user_regs_struct,
    block: RestartBlock,
) -> libc::user_regs_struct {
    if (regs.orig_rax as i64) < 0 {
        return *regs;
    }
    match regs.rax as i64 {
        -514..=-512 => *regs,
        -516 if reissues_identically(regs) => libc::user_regs_struct {
            rax: (-ERESTARTNOHAND) as u64,
            ..*regs
        },
        _ => {
            let mut out = restart_interrupted_syscall(regs, block);
            out.orig_rax = u64::MAX;
            out
        }
    }
}

/// [`kernel_restart`] for registers as an image holds them (a call to be made again: ip
/// at its `syscall` instruction, ax its number), the original restart code lost: the
/// call is put back as interrupted, with the code the kernel gives that call when a
/// signal interrupts its wait (`restart_code_of`). `at_syscall` says whether the code at
/// ip is a `syscall` instruction; registers elsewhere are left with no syscall context.
pub fn kernel_restart_from_image(
    regs: &libc::user_regs_struct,
    at_syscall: bool,
) -> libc::user_regs_struct {
    let mut out = *regs;
    out.orig_rax = u64::MAX;
    if !at_syscall || (regs.rax as i64) < 0 {
        return out;
    }
    out.orig_rax = regs.rax;
    out.rax = (-restart_code_of(regs.rax as i64)) as u64;
    out.rip = regs.rip + SYSCALL_INSTRUCTION.len() as u64;
    out
}

/// The restart code call `nr` returns when a signal ends its wait: -ERESTARTNOHAND for
/// the waits that end on any handled signal, -ERESTARTSYS for blocking reads, accepts,
/// waits for children, futexes and locks (a restart under SA_RESTART, EINTR otherwise).
/// Any other call gets -ERESTARTNOINTR, made again whatever comes first: the image
/// cannot tell a call that was interrupted from one the thread was about to make, and
/// writes, exits or rt_sigreturn must not turn into EINTR without having run.
fn restart_code_of(nr: i64) -> i64 {
    match nr {
        libc::SYS_pause
        | libc::SYS_rt_sigsuspend
        | libc::SYS_poll
        | libc::SYS_ppoll
        | libc::SYS_select
        | libc::SYS_pselect6
        | libc::SYS_msgrcv
        | libc::SYS_msgsnd => ERESTARTNOHAND,
        libc::SYS_read
        | libc::SYS_readv
        | libc::SYS_pread64
        | libc::SYS_preadv
        | libc::SYS_recvfrom
        | libc::SYS_recvmsg
        | libc::SYS_accept
        | libc::SYS_accept4
        | libc::SYS_connect
        | libc::SYS_wait4
        | libc::SYS_waitid
        | libc::SYS_futex
        | libc::SYS_flock
        | libc::SYS_fcntl
        | libc::SYS_mq_timedreceive => ERESTARTSYS,
        _ => ERESTARTNOINTR,
    }
}

/// Whether the interrupted restart-block call in `regs` does exactly the same when it is
/// made again from the start, its arguments being still in their registers: poll(2)
/// without a timeout. poll returns -ERESTART_RESTARTBLOCK even without one (its restart
/// block then holds only the arguments), and programs such as `tail -F` die on the EINTR
/// a lost block would become. Calls with a relative timeout left are not made again:
/// that would restart their whole timeout. A poll already continued through
/// restart_syscall(2) (after a SIGSTOP/SIGCONT, or another tracer) shows only that
/// call's number, so its restore returns EINTR.
fn reissues_identically(regs: &libc::user_regs_struct) -> bool {
    // poll(fds, nfds, timeout): timeout (an int, in edx) below 0 waits for ever.
    regs.orig_rax == libc::SYS_poll as u64 && (regs.rdx as u32 as i32) < 0
}

/// The registers as they go into the image: a restore rebuilds the task, so a
/// restart-block call returns -EINTR (the program sees an interrupted sleep).
pub fn regs_for_image(regs: &libc::user_regs_struct) -> libc::user_regs_struct {
    restart_interrupted_syscall(regs, RestartBlock::Interrupt)
}

/// Bytes of the kernel's x86_64 `struct rt_sigframe` up to its siginfo: `pretcode`, then
/// the ucontext (flags, link, `stack_t`, the 256-byte `sigcontext`, the sigset), then the
/// 128-byte siginfo, which rt_sigreturn(2) does not read.
pub const SIGFRAME_SIZE: usize = 8 + 8 + 8 + 24 + 256 + 8 + 128;

/// Where `sigcontext` starts in the frame.
const SIGCONTEXT_AT: usize = 48;

/// ucontext flags: the fpstate pointer holds an xsave area (UC_FP_XSTATE), `ss` is
/// saved (UC_SIGCONTEXT_SS) and restored as given (UC_STRICT_RESTORE_SS).
const UC_FLAGS: u64 = 0x1 | 0x2 | 0x4;

/// The software-reserved words of a signal frame's xsave area (`struct _fpx_sw_bytes`,
/// at byte 464 of the legacy region) say it is a full xsave image; its end carries a
/// second magic word.
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
const SW_RESERVED_AT: usize = 464;

/// A `stack_t` whose `ss_flags` no kernel accepts: rt_sigreturn(2) then leaves the
/// thread's alternate stack as it is (its error is ignored), which is what a thread put
/// back into its own context needs (the frame is built before its altstack is read).
const SS_FLAGS_KEEP: u32 = 0x1234;

/// A signal frame that rt_sigreturn(2) turns into exactly `regs`, signal mask `sigmask`
/// and FPU/vector state `xstate` (the NT_X86_XSTATE regset, standard layout): the frame
/// (`SIGFRAME_SIZE` bytes, for address `frame_at`, the thread's `sp` being `frame_at + 8`
/// at the call) and, for `fpstate_at` (64-byte aligned), the xsave area with the words
/// the kernel checks. `xfeatures` are the components this kernel saves (XCR0).
pub fn sigreturn_frame(
    regs: &libc::user_regs_struct,
    sigmask: u64,
    xstate: &[u8],
    fpstate_at: u64,
    xfeatures: u64,
) -> (Vec<u8>, Vec<u8>) {
    let mut frame = vec![0u8; SIGFRAME_SIZE];
    put_u64s(&mut frame, 8, &[UC_FLAGS]);
    // uc_stack: ss_sp, ss_flags (an int), ss_size.
    frame[32..36].copy_from_slice(&SS_FLAGS_KEEP.to_le_bytes());
    let r = regs;
    put_u64s(
        &mut frame,
        SIGCONTEXT_AT,
        &[
            r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx,
            r.rdx, r.rax, r.rcx, r.rsp, r.rip, r.eflags,
        ],
    );
    // cs, gs, fs, ss as 16-bit words.
    for (i, seg) in [r.cs, r.gs, r.fs, r.ss].into_iter().enumerate() {
        let at = SIGCONTEXT_AT + 144 + 2 * i;
        frame[at..at + 2].copy_from_slice(&(seg as u16).to_le_bytes());
    }
    // err, trapno, oldmask, cr2 stay 0; then the fpstate pointer.
    put_u64s(&mut frame, SIGCONTEXT_AT + 184, &[fpstate_at]);
    put_u64s(&mut frame, SIGCONTEXT_AT + 256, &[sigmask]);

    let mut fp = xstate.to_vec();
    fp.resize(xstate.len().max(LEGACY_SIZE + HEADER_SIZE), 0);
    let size = fp.len() as u32;
    put_u32s(&mut fp, SW_RESERVED_AT, &[FP_XSTATE_MAGIC1, size + 4]);
    put_u64s(&mut fp, SW_RESERVED_AT + 8, &[xfeatures]);
    put_u32s(&mut fp, SW_RESERVED_AT + 16, &[size]);
    fp.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    (frame, fp)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
}

fn u32s(b: &[u8], off: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| u32_at(b, off + 4 * i)).collect()
}

fn u64s(b: &[u8], off: usize, n: usize) -> Vec<u64> {
    (0..n).map(|i| u64_at(b, off + 8 * i)).collect()
}

/// Offset and size of xsave component `c`, if the CPU supports it and `len` holds it.
fn component(c: u32, len: usize) -> Option<(usize, usize)> {
    if sys::xsave_features() & (1 << c) == 0 {
        return None;
    }
    let (size, offset) = sys::xsave_component(c);
    let (size, offset) = (size as usize, offset as usize);
    (size > 0 && offset + size <= len).then_some((offset, size))
}

/// Converts a raw xsave area into the image's FPU entry.
pub fn fpregs_to_image(x: &[u8]) -> pb::UserX86FpregsEntry {
    let mut xsave = pb::UserX86XsaveEntry {
        xstate_bv: u64_at(x, LEGACY_SIZE),
        ..Default::default()
    };
    if let Some((off, _)) = component(YMM, x.len()) {
        xsave.ymmh_space = u32s(x, off, 64);
    }
    if let Some((off, _)) = component(BNDREGS, x.len()) {
        xsave.bndreg_state = u64s(x, off, 8);
    }
    if let Some((off, _)) = component(BNDCSR, x.len()) {
        xsave.bndcsr_state = u64s(x, off, 2);
    }
    if let Some((off, _)) = component(OPMASK, x.len()) {
        xsave.opmask_reg = u64s(x, off, 8);
    }
    if let Some((off, _)) = component(ZMM_HI256, x.len()) {
        xsave.zmm_upper = u64s(x, off, 64);
    }
    if let Some((off, _)) = component(HI16_ZMM, x.len()) {
        xsave.hi16_zmm = u64s(x, off, 128);
    }
    if let Some((off, _)) = component(PKRU, x.len()) {
        xsave.pkru = u32s(x, off, 2);
    }
    pb::UserX86FpregsEntry {
        cwd: u32::from(u16_at(x, 0)),
        swd: u32::from(u16_at(x, 2)),
        twd: u32::from(u16_at(x, 4)),
        fop: u32::from(u16_at(x, 6)),
        rip: u64_at(x, 8),
        rdp: u64_at(x, 16),
        mxcsr: u32_at(x, 24),
        mxcsr_mask: u32_at(x, 28),
        st_space: u32s(x, 32, 32),
        xmm_space: u32s(x, 160, 64),
        padding: Vec::new(),
        xsave: (x.len() > LEGACY_SIZE).then_some(xsave),
    }
}

fn put_u32s(x: &mut [u8], off: usize, vals: &[u32]) {
    for (i, v) in vals.iter().enumerate() {
        if let Some(s) = x.get_mut(off + 4 * i..off + 4 * i + 4) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_u64s(x: &mut [u8], off: usize, vals: &[u64]) {
    for (i, v) in vals.iter().enumerate() {
        if let Some(s) = x.get_mut(off + 8 * i..off + 8 * i + 8) {
            s.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Builds an xsave area of `len` bytes (the size the kernel reports) from the image.
/// Components this CPU lacks are dropped from `xstate_bv`, so the kernel accepts it: a
/// restore refuses such images first (`xfeatures_needed`) unless told `--cpu-cap=none`.
pub fn fpregs_from_image(e: &pb::UserX86FpregsEntry, len: usize) -> Vec<u8> {
    let mut x = vec![0u8; len.max(LEGACY_SIZE)];
    x[0..2].copy_from_slice(&(e.cwd as u16).to_le_bytes());
    x[2..4].copy_from_slice(&(e.swd as u16).to_le_bytes());
    x[4..6].copy_from_slice(&(e.twd as u16).to_le_bytes());
    x[6..8].copy_from_slice(&(e.fop as u16).to_le_bytes());
    put_u64s(&mut x, 8, &[e.rip, e.rdp]);
    put_u32s(&mut x, 24, &[e.mxcsr, e.mxcsr_mask]);
    put_u32s(&mut x, 32, &e.st_space);
    put_u32s(&mut x, 160, &e.xmm_space);
    if let (Some(xs), true) = (&e.xsave, len >= LEGACY_SIZE + HEADER_SIZE) {
        // x87 and SSE (bits 0, 1) always live in the legacy region.
        let mut bv = xs.xstate_bv & 0b11;
        let mut place = |c: u32, f: &dyn Fn(&mut [u8], usize)| {
            if let Some((off, _)) = component(c, len) {
                f(&mut x, off);
                bv |= xs.xstate_bv & (1 << c);
            }
        };
        place(YMM, &|x, off| put_u32s(x, off, &xs.ymmh_space));
        place(BNDREGS, &|x, off| put_u64s(x, off, &xs.bndreg_state));
        place(BNDCSR, &|x, off| put_u64s(x, off, &xs.bndcsr_state));
        place(OPMASK, &|x, off| put_u64s(x, off, &xs.opmask_reg));
        place(ZMM_HI256, &|x, off| put_u64s(x, off, &xs.zmm_upper));
        place(HI16_ZMM, &|x, off| put_u64s(x, off, &xs.hi16_zmm));
        place(PKRU, &|x, off| put_u32s(x, off, &xs.pkru));
        put_u64s(&mut x, LEGACY_SIZE, &[bv]);
    }
    x
}

/// CRIU's `--cpu-cap`: what a restore requires of this CPU compared with the dumping one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuCap {
    /// `fpu`: every xsave component the images hold or use is one this CPU has.
    pub fpu: bool,
    /// `ins`: every instruction set the dumping CPU offered (needs a cpuinfo image).
    pub ins: bool,
    /// `cpu`: the very same CPU features (needs a cpuinfo image).
    pub cpu: bool,
}

impl CpuCap {
    /// `none`: no check at all.
    pub const NONE: CpuCap = CpuCap {
        fpu: false,
        ins: false,
        cpu: false,
    };
    /// `fpu`, the default.
    pub const FPU: CpuCap = CpuCap {
        fpu: true,
        ins: false,
        cpu: false,
    };

    /// Parses CRIU's syntax: comma-separated `fpu`, `ins`, `cpu`, `all`, `none`, each
    /// optionally negated with `^`, applied in order to the default (`fpu`). An empty
    /// value (a bare `--cpu-cap`) means `all`, as in CRIU.
    pub fn parse(value: &str) -> Result<CpuCap, String> {
        if value.is_empty() {
            return Ok(CpuCap {
                fpu: true,
                ins: true,
                cpu: true,
            });
        }
        let mut cap = CpuCap::FPU;
        for item in value.split(',') {
            let (on, name) = match item.strip_prefix('^') {
                Some(name) => (false, name),
                None => (true, item),
            };
            match name {
                "fpu" => cap.fpu = on,
                "ins" => cap.ins = on,
                "cpu" => cap.cpu = on,
                "all" => {
                    cap = CpuCap {
                        fpu: on,
                        ins: on,
                        cpu: on,
                    }
                }
                "none" if on => cap = CpuCap::NONE,
                "none" => {
                    cap = CpuCap {
                        fpu: true,
                        ins: true,
                        cpu: true,
                    }
                }
                other => {
                    return Err(format!(
                        "unknown CPU capability `{other}` (expected fpu, ins, cpu, all or none)"
                    ))
                }
            }
        }
        Ok(cap)
    }
}

impl Default for CpuCap {
    fn default() -> Self {
        CpuCap::FPU
    }
}

/// The user xsave components by number, as error messages name them.
const XFEATURE_NAMES: &[(u32, &str)] = &[
    (0, "x87"),
    (1, "SSE"),
    (YMM, "AVX"),
    (BNDREGS, "MPX bound registers"),
    (BNDCSR, "MPX bound configuration"),
    (OPMASK, "AVX-512 opmask"),
    (ZMM_HI256, "AVX-512 ZMM_Hi256"),
    (HI16_ZMM, "AVX-512 Hi16_ZMM"),
    (PKRU, "PKRU (protection keys)"),
    (11, "CET user state"),
    (17, "AMX tile configuration"),
    (18, "AMX tile data"),
    (19, "APX"),
];

/// `NAME (xfeatures bit N)` for every bit of `bits`, lowest first.
pub fn describe_xfeatures(bits: u64) -> String {
    (0..64u32)
        .filter(|b| bits & (1 << b) != 0)
        .map(|b| {
            let name = XFEATURE_NAMES
                .iter()
                .find(|(n, _)| *n == b)
                .map_or("unnamed", |(_, name)| name);
            format!("{name} (xfeatures bit {b})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The xsave components a thread's FPU image needs on the CPU it is restored on: those
/// it uses (`xstate_bv`) and those whose registers it holds at all, since the dumping
/// CPU had them and the program may have chosen its code by them (glibc picks its string
/// functions by CPU features once, at start).
pub fn xfeatures_needed(fp: &pb::UserX86FpregsEntry) -> u64 {
    let Some(xs) = &fp.xsave else {
        return 0;
    };
    let held = [
        (YMM, !xs.ymmh_space.is_empty()),
        (BNDREGS, !xs.bndreg_state.is_empty()),
        (BNDCSR, !xs.bndcsr_state.is_empty()),
        (OPMASK, !xs.opmask_reg.is_empty()),
        (ZMM_HI256, !xs.zmm_upper.is_empty()),
        (HI16_ZMM, !xs.hi16_zmm.is_empty()),
        (PKRU, !xs.pkru.is_empty()),
    ];
    held.iter()
        .filter(|(_, held)| *held)
        .fold(xs.xstate_bv, |bits, (c, _)| bits | 1 << c)
}

/// The xsave components the image format holds: x87 and SSE (legacy region), AVX, MPX,
/// AVX-512 and PKRU. Others (AMX tiles, APX...) have no place in CRIU's images.
const XFEATURES_SAVED: u64 = 0b11
    | 1 << YMM
    | 1 << BNDREGS
    | 1 << BNDCSR
    | 1 << OPMASK
    | 1 << ZMM_HI256
    | 1 << HI16_ZMM
    | 1 << PKRU;

/// The components a raw xsave area has in use that its image would lose.
pub fn xfeatures_unsaved(x: &[u8]) -> u64 {
    if x.len() < LEGACY_SIZE + HEADER_SIZE {
        return 0;
    }
    u64_at(x, LEGACY_SIZE) & !XFEATURES_SAVED
}

/// The xsave components this CPU and kernel let user space use (XCR0).
pub fn xfeatures_here() -> u64 {
    sys::xcr0()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_cap_parses_criu_syntax() {
        assert_eq!(CpuCap::parse("fpu"), Ok(CpuCap::FPU));
        assert_eq!(CpuCap::parse("none"), Ok(CpuCap::NONE));
        assert_eq!(CpuCap::parse("^fpu"), Ok(CpuCap::NONE));
        let all = CpuCap::parse("all").unwrap();
        assert!(all.fpu && all.ins && all.cpu);
        assert_eq!(CpuCap::parse(""), Ok(all));
        assert_eq!(CpuCap::parse("none,fpu"), Ok(CpuCap::FPU));
        let ins = CpuCap::parse("ins").unwrap();
        assert!(ins.fpu && ins.ins && !ins.cpu, "added to the default");
        assert!(CpuCap::parse("gpu").unwrap_err().contains("`gpu`"));
    }

    #[test]
    fn needed_xfeatures_are_the_used_and_the_held_ones() {
        let mut fp = pb::UserX86FpregsEntry::default();
        assert_eq!(xfeatures_needed(&fp), 0, "no xsave: legacy FPU only");
        fp.xsave = Some(pb::UserX86XsaveEntry {
            xstate_bv: 0b11 | 1 << 9,
            ymmh_space: vec![0; 64],
            opmask_reg: vec![0; 8],
            ..Default::default()
        });
        assert_eq!(xfeatures_needed(&fp), 0b11 | 1 << 2 | 1 << 5 | 1 << 9);
        assert_eq!(
            describe_xfeatures(1 << 5 | 1 << 9 | 1 << 40),
            "AVX-512 opmask (xfeatures bit 5), PKRU (protection keys) (xfeatures bit 9), \
             unnamed (xfeatures bit 40)"
        );
    }

    #[test]
    fn state_the_image_cannot_hold_is_found() {
        let mut x = vec![0u8; 4096];
        x[512] = 0b1110_0111; // x87, SSE, AVX, AVX-512: all held
        assert_eq!(xfeatures_unsaved(&x), 0);
        x[514] = 0b110; // AMX tile configuration and data (bits 17, 18)
        assert_eq!(xfeatures_unsaved(&x), 0b11 << 17);
        assert!(describe_xfeatures(xfeatures_unsaved(&x)).contains("AMX tile data"));
        assert_eq!(xfeatures_unsaved(&x[..512]), 0, "legacy area only");
    }

    #[test]
    fn this_cpu_has_what_it_dumps() {
        let leaf0 = std::arch::x86_64::__cpuid_count(0xd, 0);
        let len = leaf0.ebx as usize;
        let mut x = vec![0u8; len];
        x[512] = 0b11;
        let image = fpregs_to_image(&x);
        let missing = xfeatures_needed(&image) & !xfeatures_here();
        assert_eq!(missing, 0, "{}", describe_xfeatures(missing));
    }

    #[test]
    fn restart_codes_are_rewritten() {
        let mut r = sys::zeroed_regs();
        r.orig_rax = 35; // nanosleep
        r.rip = 0x1002;
        r.rax = (-516i64) as u64;
        assert_eq!(regs_for_image(&r).rax as i64, -i64::from(libc::EINTR));
        r.rax = (-512i64) as u64;
        let fixed = regs_for_image(&r);
        assert_eq!((fixed.rax, fixed.rip), (35, 0x1000));
        // poll(2) without a timeout is made again; with one it returns EINTR.
        r.orig_rax = libc::SYS_poll as u64;
        r.rax = (-516i64) as u64;
        r.rdx = 0xffff_ffff;
        let fixed = regs_for_image(&r);
        assert_eq!((fixed.rax, fixed.rip), (libc::SYS_poll as u64, 0x1000));
        r.rdx = 1000;
        assert_eq!(regs_for_image(&r).rax as i64, -i64::from(libc::EINTR));
        r.orig_rax = u64::MAX;
        assert_eq!(
            regs_for_image(&r).rip,
            0x1002,
            "not in a syscall: unchanged"
        );
    }

    #[test]
    fn restarts_are_left_to_the_kernel_where_it_can_do_them() {
        let mut r = sys::zeroed_regs();
        r.orig_rax = libc::SYS_read as u64;
        r.rip = 0x1002;
        r.rax = (-512i64) as u64;
        let put = kernel_restart(&r, RestartBlock::Continue);
        assert_eq!(
            (put.orig_rax, put.rax, put.rip),
            (r.orig_rax, r.rax, 0x1002)
        );
        // poll(2) without a timeout: the plain restart of the same call.
        r.orig_rax = libc::SYS_poll as u64;
        r.rax = (-516i64) as u64;
        r.rdx = 0xffff_ffff;
        let put = kernel_restart(&r, RestartBlock::Continue);
        assert_eq!((put.orig_rax, put.rax as i64, put.rip), (7, -514, 0x1002));
        // Other restart-block calls: by hand, through restart_syscall(2).
        r.orig_rax = libc::SYS_nanosleep as u64;
        let put = kernel_restart(&r, RestartBlock::Continue);
        assert_eq!(
            (put.orig_rax, put.rax, put.rip),
            (u64::MAX, libc::SYS_restart_syscall as u64, 0x1000)
        );
        // A finished call, and no call: no syscall context for the kernel to act on.
        r.rax = 0;
        assert_eq!(
            kernel_restart(&r, RestartBlock::Continue).orig_rax,
            u64::MAX
        );
        r.orig_rax = u64::MAX;
        assert_eq!(kernel_restart(&r, RestartBlock::Continue).rip, 0x1002);
    }

    #[test]
    fn calls_an_image_makes_again_are_put_back_as_interrupted() {
        let mut r = sys::zeroed_regs();
        r.rip = 0x1000;
        for (nr, code) in [
            (libc::SYS_pause, -514),
            (libc::SYS_poll, -514),
            (libc::SYS_rt_sigsuspend, -514),
            (libc::SYS_read, -512),
            (libc::SYS_wait4, -512),
            (libc::SYS_write, -513),
            (libc::SYS_rt_sigreturn, -513),
        ] {
            r.rax = nr as u64;
            let put = kernel_restart_from_image(&r, true);
            assert_eq!(
                (put.orig_rax, put.rax as i64, put.rip),
                (nr as u64, code, 0x1002)
            );
        }
        let put = kernel_restart_from_image(&r, false);
        assert_eq!((put.orig_rax, put.rax, put.rip), (u64::MAX, r.rax, 0x1000));
        r.rax = (-4i64) as u64;
        assert_eq!(kernel_restart_from_image(&r, true).orig_rax, u64::MAX);
    }

    #[test]
    fn regs_round_trip() {
        let mut r = sys::zeroed_regs();
        r.rip = 1;
        r.fs_base = 2;
        r.r15 = 3;
        r.eflags = 0x202;
        let back = regs_from_image(&regs_to_image(&r));
        assert_eq!(
            (back.rip, back.fs_base, back.r15, back.eflags),
            (1, 2, 3, 0x202)
        );
    }

    #[test]
    fn xsave_round_trip_of_own_layout() {
        let leaf0 = std::arch::x86_64::__cpuid_count(0xd, 0);
        let len = leaf0.ebx as usize; // size for the features enabled in XCR0
        let mut x: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // A valid header: only x87 | SSE | YMM marked in use, no compaction, reserved zero.
        x[512..576].fill(0);
        x[512] = 0b111;
        // The legacy region's reserved tail is not part of the image.
        x[416..512].fill(0);
        let image = fpregs_to_image(&x);
        let back = fpregs_from_image(&image, len);
        assert_eq!(back[..416], x[..416]);
        if let Some((off, size)) = component(YMM, len) {
            assert_eq!(back[off..off + size], x[off..off + size]);
        }
        assert_eq!(back[512], 0b111);
    }
}
