//! The benchmark's own tiny programs, hand-assembled and loaded with raw `bpf(2)` calls: the
//! `XDP_PASS` baseline, `XDP_PASS` after one hash lookup (the yardstick for an
//! established flow), `XDP_PASS` after one insert (the kernel's share of a new flow), a TC
//! program that only passes (with `XDP_PASS`, attached as BPF links: what sg's hooks cost
//! with nothing in them), and the traffic generator (`bpf_redirect` to a veth, run with
//! BPF_PROG_TEST_RUN and `BPF_F_TEST_XDP_LIVE_FRAMES`).
//!
//! Why not aya: these programs are a few instructions each and must not depend on sg-ebpf
//! (the dataplane module stays the only code that loads sg). It owns no sg logic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result, bail};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// Link attach types: XDP, and TCX ingress/egress.
const BPF_XDP: u32 = 37;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// XDP link flag: the driver's native hook.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// TCX: pass the packet on (what sg returns for a packet it lets through).
const TCX_PASS: i32 = 0;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Frames a test run sends out for real (redirect, XDP_TX) instead of being discarded.
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_MAP_UPDATE_ELEM: i32 = 2;
const HELPER_GET_PRANDOM_U32: i32 = 7;
/// Map flags: elements allocated at insert time (sg's conntrack tables) instead of up front.
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Update flag: insert only.
const BPF_NOEXIST: i32 = 1;
const HELPER_REDIRECT: i32 = 23;

pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

/// Sizes of sg's conntrack key and value (sg_common::FlowKey/FlowVal), so the yardstick
/// lookup hashes as many bytes as sg's conntrack lookup does.
const LOOKUP_KEY: usize = size_of::<sg_common::FlowKey>();
const LOOKUP_VALUE: usize = size_of::<sg_common::FlowVal>();

/// One eBPF instruction as the kernel reads it.
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0xf),
            off,
            imm,
        }
    }
    /// `dst = imm` (64-bit).
    fn mov_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    /// `dst = src` (64-bit).
    fn mov_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    /// `dst += imm` (64-bit).
    fn add_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x07, dst, 0, 0, imm)
    }
    /// `*(u64 *)(dst + off) = imm`.
    fn st_dw(dst: u8, off: i16, imm: i32) -> Insn {
        Insn::new(0x7a, dst, 0, off, imm)
    }
    /// `*(u32 *)(dst + off) = imm`.
    fn st_w(dst: u8, off: i16, imm: i32) -> Insn {
        Insn::new(0x62, dst, 0, off, imm)
    }
    /// `*(u32 *)(dst + off) = src`.
    fn stx_w(dst: u8, off: i16, src: u8) -> Insn {
        Insn::new(0x63, dst, src, off, 0)
    }
    fn call(helper: i32) -> Insn {
        Insn::new(0x85, 0, 0, 0, helper)
    }
    fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
    /// `dst = map` (a 16-byte instruction: two slots).
    fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [
            Insn::new(0x18, dst, BPF_PSEUDO_MAP_FD, 0, fd),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }
    fn bytes(insns: &[Insn]) -> Vec<u8> {
        let mut v = Vec::with_capacity(insns.len() * 8);
        for i in insns {
            v.push(i.code);
            v.push(i.regs);
            v.extend_from_slice(&i.off.to_ne_bytes());
            v.extend_from_slice(&i.imm.to_ne_bytes());
        }
        v
    }
}

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zero-initialised buffer at least as large as the kernel's view of
    // `union bpf_attr` for this command; every pointer stored in it outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn put32(a: &mut [u8], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put64(a: &mut [u8], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn get32(a: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(a[off..off + 4].try_into().expect("4 bytes"))
}

fn put_name(a: &mut [u8], off: usize, name: &str) {
    let n = name.len().min(15);
    a[off..off + n].copy_from_slice(&name.as_bytes()[..n]);
}

/// A loaded XDP program (and the map it uses, if any); closed on drop.
pub struct Prog {
    fd: OwnedFd,
    _map: Option<OwnedFd>,
    pub name: &'static str,
}

impl Prog {
    /// `return XDP_PASS;`: what an empty filter costs.
    pub fn xdp_pass() -> Result<Prog> {
        load(
            "sgb_pass",
            &[Insn::mov_imm(0, XDP_PASS as i32), Insn::exit()],
            None,
        )
    }

    /// One lookup of a conntrack-sized key that hits, then `XDP_PASS`: the issue's
    /// yardstick for an established flow ("bare XDP_PASS + one hash lookup").
    pub fn xdp_pass_lookup() -> Result<Prog> {
        let map = map_create_hash(LOOKUP_KEY as u32, LOOKUP_VALUE as u32, 1024, 0)?;
        let key = [0u8; LOOKUP_KEY];
        let value = [0u8; LOOKUP_VALUE];
        map_update(&map, &key, &value)?;
        // The key lives at r10-48 (44 bytes, zero).
        let mut insns = vec![
            Insn::st_dw(10, -48, 0),
            Insn::st_dw(10, -40, 0),
            Insn::st_dw(10, -32, 0),
            Insn::st_dw(10, -24, 0),
            Insn::st_dw(10, -16, 0),
            Insn::st_w(10, -8, 0),
        ];
        insns.extend(Insn::ld_map_fd(1, map.as_raw_fd()));
        insns.extend([
            Insn::mov_reg(2, 10),
            Insn::add_imm(2, -48),
            Insn::call(HELPER_MAP_LOOKUP_ELEM),
            Insn::mov_imm(0, XDP_PASS as i32),
            Insn::exit(),
        ]);
        const _: () = assert!(LOOKUP_KEY == 44);
        load("sgb_lookup", &insns, Some(map))
    }

    /// One insert of a new conntrack-sized entry (a random key, a zero value, BPF_NOEXIST) into
    /// a hash map of `capacity` entries with `map_flags`, then `XDP_PASS`: the kernel's own
    /// share of a new flow, timed one run at a time like sg's new flows. A random 32-bit key
    /// word: among the ~10^5 inserts a measurement makes a handful collide, and those only
    /// fail faster.
    pub fn xdp_pass_insert(capacity: u32, map_flags: u32) -> Result<Prog> {
        let map = map_create_hash(LOOKUP_KEY as u32, LOOKUP_VALUE as u32, capacity, map_flags)?;
        // The key at r10-48 (44 bytes: a random first word, the rest zero), the value at
        // r10-120 (72 bytes, zero).
        let mut insns = vec![Insn::call(HELPER_GET_PRANDOM_U32), Insn::stx_w(10, -48, 0)];
        for off in [-44i16, -40, -36, -32, -28, -24, -20, -16, -12, -8] {
            insns.push(Insn::st_w(10, off, 0));
        }
        for off in (-120i16..-48).step_by(8) {
            insns.push(Insn::st_dw(10, off, 0));
        }
        insns.extend(Insn::ld_map_fd(1, map.as_raw_fd()));
        insns.extend([
            Insn::mov_reg(2, 10),
            Insn::add_imm(2, -48),
            Insn::mov_reg(3, 10),
            Insn::add_imm(3, -120),
            Insn::mov_imm(4, BPF_NOEXIST),
            Insn::call(HELPER_MAP_UPDATE_ELEM),
            Insn::mov_imm(0, XDP_PASS as i32),
            Insn::exit(),
        ]);
        const _: () = assert!(LOOKUP_KEY == 44 && LOOKUP_VALUE == 72);
        load("sgb_insert", &insns, Some(map))
    }

    /// `return bpf_redirect(ifindex, 0);`: run with live frames, every repetition transmits
    /// the frame on `ifindex` (a veth: its peer receives it).
    pub fn xdp_redirect(ifindex: u32) -> Result<Prog> {
        load(
            "sgb_redirect",
            &[
                Insn::mov_imm(1, ifindex as i32),
                Insn::mov_imm(2, 0),
                Insn::call(HELPER_REDIRECT),
                Insn::exit(),
            ],
            None,
        )
    }

    /// `return TCX_PASS;`: a TC program that lets everything through, to measure what a TC
    /// hook costs with nothing in it.
    pub fn tc_pass() -> Result<Prog> {
        load_typed(
            BPF_PROG_TYPE_SCHED_CLS,
            "sgb_tc_pass",
            &[Insn::mov_imm(0, TCX_PASS), Insn::exit()],
            None,
        )
    }

    /// Attaches this program to `ifindex` (in the calling thread's namespace) at `hook`;
    /// detached when the returned link is dropped.
    pub fn attach(&self, ifindex: u32, hook: PassHook) -> Result<Link> {
        let (attach_type, flags) = match hook {
            PassHook::XdpNative => (BPF_XDP, XDP_FLAGS_DRV_MODE),
            PassHook::TcIngress => (BPF_TCX_INGRESS, 0),
            PassHook::TcEgress => (BPF_TCX_EGRESS, 0),
        };
        let mut a = [0u8; 64];
        put32(&mut a, 0, self.fd.as_raw_fd() as u32);
        put32(&mut a, 4, ifindex);
        put32(&mut a, 8, attach_type);
        put32(&mut a, 12, flags);
        let fd = sys_bpf(BPF_LINK_CREATE, &mut a)
            .with_context(|| format!("attaching {} to ifindex {ifindex} ({hook:?})", self.name))?;
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(Link {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// BPF_PROG_TEST_RUN: `repeat` runs of `frame`; returns the program's return value and
    /// the kernel's mean time per run. `ifindex` names the receiving device (must exist in
    /// the calling thread's namespace; 1 = lo).
    pub fn test_run(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, Duration)> {
        self.run(frame, ifindex, repeat, 0, 0)
    }

    /// Live-frames run: `repeat` copies of `frame` really sent (the generator).
    pub fn send_live(&self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<u32> {
        let (ret, _) = self.run(frame, ifindex, repeat, BPF_F_TEST_XDP_LIVE_FRAMES, 64)?;
        Ok(ret)
    }

    fn run(
        &self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
        flags: u32,
        batch: u32,
    ) -> Result<(u32, Duration)> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut ctx = [0u8; 24];
        put32(&mut ctx, 4, frame.len() as u32);
        put32(&mut ctx, 12, ifindex);
        let mut a = [0u8; 80];
        put32(&mut a, 0, self.fd.as_raw_fd() as u32);
        put32(&mut a, 8, frame.len() as u32);
        put64(&mut a, 16, frame.as_ptr() as u64);
        put32(&mut a, 32, repeat);
        put32(&mut a, 40, ctx.len() as u32);
        put64(&mut a, 48, ctx.as_ptr() as u64);
        put32(&mut a, 64, flags);
        put32(&mut a, 72, batch);
        sys_bpf(BPF_PROG_TEST_RUN, &mut a)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {} (flags {flags:#x})", self.name))?;
        Ok((get32(&a, 4), Duration::from_nanos(u64::from(get32(&a, 36)))))
    }
}

/// Where [`Prog::attach`] puts a pass-only program.
#[derive(Clone, Copy, Debug)]
pub enum PassHook {
    XdpNative,
    TcIngress,
    TcEgress,
}

/// An attached program (a BPF link): detached on drop.
pub struct Link {
    /// Held for its drop: closing the link's descriptor detaches the program.
    _fd: OwnedFd,
}

fn load(name: &'static str, insns: &[Insn], map: Option<OwnedFd>) -> Result<Prog> {
    load_typed(BPF_PROG_TYPE_XDP, name, insns, map)
}

fn load_typed(
    prog_type: u32,
    name: &'static str,
    insns: &[Insn],
    map: Option<OwnedFd>,
) -> Result<Prog> {
    let code = Insn::bytes(insns);
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut a = [0u8; 128];
    put32(&mut a, 0, prog_type);
    put32(&mut a, 4, insns.len() as u32);
    put64(&mut a, 8, code.as_ptr() as u64);
    put64(&mut a, 16, license.as_ptr() as u64);
    put32(&mut a, 24, 1);
    put32(&mut a, 28, log.len() as u32);
    put64(&mut a, 32, log.as_mut_ptr() as u64);
    put_name(&mut a, 48, name);
    match sys_bpf(BPF_PROG_LOAD, &mut a) {
        // SAFETY: the kernel returned a new file descriptor that nothing else owns.
        Ok(fd) => Ok(Prog {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            _map: map,
            name,
        }),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "loading program {name}: {e}; verifier log: {}",
                String::from_utf8_lossy(&log[..end])
            )
        }
    }
}

fn map_create_hash(key: u32, value: u32, max: u32, flags: u32) -> Result<OwnedFd> {
    let mut a = [0u8; 72];
    put32(&mut a, 0, BPF_MAP_TYPE_HASH);
    put32(&mut a, 4, key);
    put32(&mut a, 8, value);
    put32(&mut a, 12, max);
    put32(&mut a, 16, flags);
    put_name(&mut a, 28, "sgb_lookup");
    let fd = sys_bpf(BPF_MAP_CREATE, &mut a).context("creating the yardstick hash map")?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn map_update(map: &OwnedFd, key: &[u8], value: &[u8]) -> Result<()> {
    let mut a = [0u8; 32];
    put32(&mut a, 0, map.as_raw_fd() as u32);
    put64(&mut a, 8, key.as_ptr() as u64);
    put64(&mut a, 16, value.as_ptr() as u64);
    sys_bpf(BPF_MAP_UPDATE_ELEM, &mut a).context("writing the yardstick map")?;
    Ok(())
}
