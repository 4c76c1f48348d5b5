//! Counting TCP sockets by walking the kernel's TCP hash tables from a
//! BPF program run on demand (`BPF_PROG_TYPE_SYSCALL`, Linux 6.1 and
//! later), without taking a lock or a reference on any socket.
//!
//! The iterator (the parent module) makes the kernel lock each hash
//! bucket, take a reference on each of its sockets and lock each socket
//! around the counting program: about 0.4 us of kernel time per socket, of
//! which the program is a few percent. Here one program walks the tables
//! itself. It starts from the agent's own task (`bpf_get_current_task`)
//! and follows `task_struct.nsproxy -> nsproxy.net_ns -> net.ipv4
//! .tcp_death_row.hashinfo` to the namespace's `inet_hashinfo` (its own
//! established table when `net.ipv4.tcp_child_ehash_entries` made one,
//! else the host's), then reads every bucket of the listening table
//! (`lhash2`) and then of the established table (`ehash`: established,
//! TIME_WAIT and request sockets). Every read of kernel memory goes
//! through `bpf_probe_read_kernel`, which returns an error instead of
//! faulting, and the bucket heads are read some hundreds at a time.
//! Each socket's family, state, local port and namespace (`skc_net`: the
//! tables may be shared by every namespace; only the agent's is counted)
//! are read at the offsets the kernel's BTF gives.
//!
//! Why reading without locks is exact enough: TCP sockets are freed into
//! slab caches that reuse memory only for sockets of the same kind
//! (`SLAB_TYPESAFE_BY_RCU`), and every chain ends in a "nulls" marker
//! that names its bucket. A socket freed and reused in another bucket
//! while the walk is on it leads the walk into that other chain, which
//! then ends in the wrong marker: the bucket's counts, kept aside until
//! the marker is checked, are thrown away and the bucket is walked again
//! (up to `MAX_RETRIES` times; a bucket still not walked cleanly, or
//! with a chain longer than `MAX_CHAIN` sockets, is given up and the pass
//! is reported incomplete, so that its counts are never handed out). A
//! read that fails is treated the same way. What is counted is then what
//! one walk of the table sees, as with the iterator or netlink: a socket
//! opened or closed during the walk may or may not be in it.
//!
//! The counts go into the parent's two maps, in the same form as the
//! iterator's (per family and state, the LISTEN bitmap, ESTABLISHED per
//! listening port), so that everything after the pass is shared. The
//! listening table is walked first, so that the LISTEN bitmap is whole
//! before any ESTABLISHED socket is matched to its port.
//!
//! The program loops with the helper `bpf_loop`, one step per call of a
//! callback subprogram; the kernel accepts a callback only from a program
//! that describes its functions in BTF, so a minimal BTF blob (two
//! function prototypes) is loaded with it.
//!
//! This module must never write to kernel memory (it only reads, through
//! the fault-safe helper), follow a chain without a bound on its steps,
//! read any socket field other than the five named above, or hand out
//! counts from a pass that gave a bucket up.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{
    Assembler, Attr, BPF_ALU64, BPF_B, BPF_DW, BPF_H, BPF_JA, BPF_JEQ, BPF_JNE, BPF_K, BPF_MEM,
    BPF_W, BPF_X, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_INT, BTF_KIND_PTR, BTF_KIND_STRUCT,
    BTF_KIND_UNION, BpfError, Btf, BtfType, HELPER_MAP_LOOKUP_ELEM, Insn, LICENSE, LISTEN_BITMAP,
    LOG_BYTES, R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10, Reg, STATES_PER_FAMILY, SockFields,
    bpf_fd, log_tail,
};

/// Where the walk finds the tables and what it reads of each socket:
/// byte offsets and sizes from the kernel's BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkTarget {
    /// `task_struct.nsproxy`.
    pub task_nsproxy: u32,
    /// `nsproxy.net_ns`.
    pub nsproxy_net: u32,
    /// `net.ipv4.tcp_death_row.hashinfo`.
    pub net_hashinfo: u32,
    /// `inet_hashinfo.ehash`.
    pub ehash: u32,
    /// `inet_hashinfo.ehash_mask` (u32).
    pub ehash_mask: u32,
    /// `inet_hashinfo.lhash2`.
    pub lhash2: u32,
    /// `inet_hashinfo.lhash2_mask` (u32).
    pub lhash2_mask: u32,
    /// Size of `struct inet_ehash_bucket`, and where its `chain` is.
    pub ehash_bucket: (u32, u32),
    /// Size of `struct inet_listen_hashbucket`, and where its
    /// `nulls_head` is.
    pub lhash2_bucket: (u32, u32),
    /// `sock_common`'s family, state and local port.
    pub fields: SockFields,
    /// `sock_common.skc_net.net`.
    pub net: u16,
    /// `sock_common.skc_nulls_node` (its `next` pointer first).
    pub nulls_node: u16,
}

/// Byte offset of the member at `path` inside struct `name`, with the
/// member's type (behind typedefs and qualifiers).
fn offset_of(btf: &Btf<'_>, name: &str, path: &[&str]) -> Result<(u64, BtfType), String> {
    let (_, mut t) = btf
        .find(BTF_KIND_STRUCT, name)
        .ok_or_else(|| format!("no struct {name}"))?;
    let mut bits = 0;
    let mut at = name.to_string();
    for member in path {
        if !matches!(t.kind, BTF_KIND_STRUCT | BTF_KIND_UNION) {
            return Err(format!("{at} is not a struct (BTF kind {})", t.kind));
        }
        let (found, type_id) = btf
            .member_bits(&t, member, 0, 0)?
            .ok_or_else(|| format!("{at} has no member {member}"))?;
        if found + 8 > u64::from(t.size_or_type) * 8 {
            return Err(format!("{at}.{member} lies outside the struct"));
        }
        bits += found;
        at = format!("{at}.{member}");
        t = btf.resolve(type_id)?;
    }
    Ok((bits / 8, t))
}

/// As [`offset_of`], for a member that must be a pointer to struct
/// `pointee` (or, with `None`, to anything).
fn pointer_at(
    btf: &Btf<'_>,
    name: &str,
    path: &[&str],
    pointee: Option<&str>,
) -> Result<u32, String> {
    let (offset, t) = offset_of(btf, name, path)?;
    let at = format!("{name}.{}", path.join("."));
    if t.kind != BTF_KIND_PTR {
        return Err(format!("{at} is not a pointer (BTF kind {})", t.kind));
    }
    if let Some(pointee) = pointee {
        let target = btf.resolve(t.size_or_type)?;
        if target.kind != BTF_KIND_STRUCT || btf.name(target.name_off) != pointee.as_bytes() {
            return Err(format!("{at} does not point to a struct {pointee}"));
        }
    }
    u32::try_from(offset).map_err(|_| format!("{at} is too far in"))
}

/// As [`offset_of`], for a u32 member.
fn u32_member_at(btf: &Btf<'_>, name: &str, path: &[&str]) -> Result<u32, String> {
    let (offset, t) = offset_of(btf, name, path)?;
    let at = format!("{name}.{}", path.join("."));
    if t.kind != BTF_KIND_INT || t.size_or_type != 4 {
        return Err(format!("{at} is not a 4-byte integer"));
    }
    u32::try_from(offset).map_err(|_| format!("{at} is too far in"))
}

/// As [`offset_of`], for a member that is struct `kind` (embedded).
fn struct_at(btf: &Btf<'_>, name: &str, path: &[&str], kind: &str) -> Result<u32, String> {
    let (offset, t) = offset_of(btf, name, path)?;
    let at = format!("{name}.{}", path.join("."));
    if t.kind != BTF_KIND_STRUCT || btf.name(t.name_off) != kind.as_bytes() {
        return Err(format!("{at} is not a struct {kind}"));
    }
    u32::try_from(offset).map_err(|_| format!("{at} is too far in"))
}

/// Size of struct `name`.
fn struct_size(btf: &Btf<'_>, name: &str) -> Result<u32, String> {
    let (_, t) = btf
        .find(BTF_KIND_STRUCT, name)
        .ok_or_else(|| format!("no struct {name}"))?;
    Ok(t.size_or_type)
}

/// Finds in the kernel's BTF where the walk's way to the tables and the
/// socket fields are; refuses a layout it does not know.
pub fn parse_walk_target(data: &[u8], fields: SockFields) -> Result<WalkTarget, String> {
    let btf = Btf::parse(data)?;
    // The chain heads and links: a pointer first, bit 0 set at the end.
    if pointer_at(
        &btf,
        "hlist_nulls_head",
        &["first"],
        Some("hlist_nulls_node"),
    )? != 0
        || pointer_at(
            &btf,
            "hlist_nulls_node",
            &["next"],
            Some("hlist_nulls_node"),
        )? != 0
    {
        return Err("hlist_nulls_head.first or hlist_nulls_node.next is not first".into());
    }
    let death_row = struct_at(
        &btf,
        "netns_ipv4",
        &["tcp_death_row"],
        "inet_timewait_death_row",
    )
    .map_err(|e| format!("{e} (a kernel older than 6.1)"))?;
    let ipv4 = struct_at(&btf, "net", &["ipv4"], "netns_ipv4")?;
    let hashinfo = pointer_at(
        &btf,
        "inet_timewait_death_row",
        &["hashinfo"],
        Some("inet_hashinfo"),
    )?;
    let bucket = |name: &str, head: &str| -> Result<(u32, u32), String> {
        let size = struct_size(&btf, name)?;
        let at = struct_at(&btf, name, &[head], "hlist_nulls_head")?;
        if size == 0 || size % 8 != 0 || size > 64 || at % 8 != 0 || at + 8 > size {
            return Err(format!(
                "struct {name} is {size} bytes with {head} at {at}: not a layout the walk knows"
            ));
        }
        Ok((size, at))
    };
    let sock = |path: &[&str]| -> Result<u16, String> {
        let (offset, _) = offset_of(&btf, "sock_common", path)?;
        u16::try_from(offset).map_err(|_| format!("sock_common.{} is too far in", path.join(".")))
    };
    let net = sock(&["skc_net", "net"])?;
    pointer_at(&btf, "sock_common", &["skc_net", "net"], Some("net"))?;
    let nulls_node = sock(&["skc_nulls_node"])?;
    struct_at(&btf, "sock_common", &["skc_nulls_node"], "hlist_nulls_node")?;
    Ok(WalkTarget {
        task_nsproxy: pointer_at(&btf, "task_struct", &["nsproxy"], Some("nsproxy"))?,
        nsproxy_net: pointer_at(&btf, "nsproxy", &["net_ns"], Some("net"))?,
        net_hashinfo: ipv4 + death_row + hashinfo,
        ehash: pointer_at(&btf, "inet_hashinfo", &["ehash"], Some("inet_ehash_bucket"))?,
        ehash_mask: u32_member_at(&btf, "inet_hashinfo", &["ehash_mask"])?,
        lhash2: pointer_at(
            &btf,
            "inet_hashinfo",
            &["lhash2"],
            Some("inet_listen_hashbucket"),
        )?,
        lhash2_mask: u32_member_at(&btf, "inet_hashinfo", &["lhash2_mask"])?,
        ehash_bucket: bucket("inet_ehash_bucket", "chain")?,
        lhash2_bucket: bucket("inet_listen_hashbucket", "nulls_head")
            .map_err(|e| format!("{e} (the listening table is not a nulls list)"))?,
        fields,
        net,
        nulls_node,
    })
}

// ---------------------------------------------------------------------------
// The program.

/// The chain of listening bucket `i` ends in marker `i + LISTENING_NULLS`
/// (Linux's `LISTENING_NULLS_BASE`), that of established bucket `i` in
/// `i`.
const LISTENING_NULLS: i32 = 1 << 29;
/// Bytes of bucket memory read at once.
const BUF_BYTES: usize = 4096;
/// Sockets of one chain kept aside until its end marker is checked.
pub const MAX_CHAIN: usize = 1024;
/// Walks of one bucket before it is given up.
pub const MAX_RETRIES: i32 = 8;
/// Steps of one pass at most (`bpf_loop`'s own limit, 1 << 23): one per
/// bucket, one per socket and one per socket counted.
const MAX_STEPS: i32 = 1 << 23;

// The walk's state, in the one value of the scratch map: u64 fields.
const S_MODE: i16 = 0;
const S_NODE: i16 = 8;
const S_BUCKET: i16 = 16;
const S_NBUCKETS: i16 = 24;
const S_TABLE: i16 = 32;
const S_STRIDE: i16 = 40;
const S_HEAD_OFF: i16 = 48;
const S_NULLS_BASE: i16 = 56;
const S_PHASE: i16 = 64;
const S_RETRIES: i16 = 72;
const S_GIVEN_UP: i16 = 80;
const S_BUF_START: i16 = 88;
const S_BUF_COUNT: i16 = 96;
const S_NET: i16 = 104;
const S_NREC: i16 = 112;
const S_K: i16 = 120;
const S_EHASH: i16 = 128;
const S_EHASH_N: i16 = 136;
const S_BUF_CAP: i16 = 144;
const S_TMP: i16 = 152;
/// The socket's bytes read, up to 256.
const S_SOCK: i16 = 256;
const SOCK_BYTES: u16 = 256;
/// The chain's sockets kept aside, u32 each.
const S_REC: i16 = 512;
/// Bucket memory.
const S_BUF: i16 = S_REC + (MAX_CHAIN * 4) as i16;
/// Size of the scratch map's value.
pub const SCRATCH_BYTES: usize = S_BUF as usize + BUF_BYTES;

// Modes: walking a chain or committing its sockets.
const MODE_COMMIT: i32 = 1;
// Phases.
const PHASE_LISTEN: i32 = 0;
const PHASE_DONE: i32 = 2;
const PHASE_FAILED: i32 = 3;

/// The program's return value when the tables could not be reached.
pub const RET_NO_TABLES: u32 = u32::MAX - 1;
/// The program's return value when the walk did not reach its end.
pub const RET_INCOMPLETE: u32 = u32::MAX;

const HELPER_GET_CURRENT_TASK: i32 = 35;
const HELPER_PROBE_READ_KERNEL: i32 = 113;
const HELPER_LOOP: i32 = 181;

const BPF_ST: u8 = 0x02;
const BPF_SUB: u8 = 0x10;
const BPF_MUL: u8 = 0x20;
const BPF_JGT: u8 = 0x20;
const BPF_JGE: u8 = 0x30;
const BPF_JSET: u8 = 0x40;
const BPF_JLT: u8 = 0xa0;
const BPF_OR: u8 = 0x40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Fail,
    Callback,
    Abort,
    Clamped,
    // In the callback:
    Ret0,
    Commit,
    NextBucket,
    ChainEnd,
    Mismatch,
    GiveUp,
    Advance,
    StartChain,
    FamilyKnown,
    InBuffer,
    TableDone,
    AllDone,
    CountDone,
    Established,
    NotListening,
}

fn st_imm(a: &mut Assembler<Step>, off: i16, imm: i32) {
    a.push(Insn::new(BPF_ST | BPF_MEM | BPF_DW, R9, R0, off, imm));
}

fn ld(a: &mut Assembler<Step>, dst: Reg, off: i16) {
    a.push(Insn::load(BPF_DW, dst, R9, off));
}

fn st(a: &mut Assembler<Step>, off: i16, src: Reg) {
    a.push(Insn::store(BPF_DW, R9, off, src));
}

fn alu_reg(op: u8, dst: Reg, src: Reg) -> Insn {
    Insn::new(BPF_ALU64 | op | BPF_X, dst, src, 0, 0)
}

fn alu_imm(op: u8, dst: Reg, imm: i32) -> Insn {
    Insn::new(BPF_ALU64 | op | BPF_K, dst, R0, 0, imm)
}

/// `probe_read_kernel(scratch + at, size, r3)`; r0 the result.
fn probe_read(a: &mut Assembler<Step>, at: i16, size: i32) {
    a.push(Insn::mov_reg(R1, R9));
    a.push(Insn::add_imm(R1, i32::from(at)));
    a.push(Insn::mov_imm(R2, size));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL));
}

/// The program and the index of its callback's first instruction.
pub fn walk_program(
    t: &WalkTarget,
    scratch_fd: RawFd,
    counts_fd: RawFd,
    established_fd: RawFd,
) -> Result<(Vec<Insn>, usize), String> {
    let off = |o: u32| i32::try_from(o).map_err(|_| format!("offset {o} too large"));
    let f = t.fields;
    let read_start = [f.family, f.state, f.num, t.net, t.nulls_node]
        .into_iter()
        .min()
        .unwrap_or(0)
        & !7;
    let read_end = [
        f.family + 2,
        f.state + 1,
        f.num + 2,
        t.net + 8,
        t.nulls_node + 8,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    if read_end - read_start > SOCK_BYTES {
        return Err(format!(
            "sock_common's fields span {} bytes, more than {SOCK_BYTES}",
            read_end - read_start
        ));
    }
    let in_sock = |o: u16| S_SOCK + (o - read_start) as i16;
    let mut a = Assembler::<Step>::default();

    // Main program: find the namespace and its tables.
    for insn in Insn::map_value(R9, scratch_fd, 0) {
        a.push(insn);
    }
    a.push(Insn::call(HELPER_GET_CURRENT_TASK));
    a.push(Insn::mov_reg(R3, R0));
    a.push(Insn::add_imm(R3, off(t.task_nsproxy)?));
    probe_read(&mut a, S_TMP, 8);
    a.jump(BPF_JNE, R0, 0, Step::Fail);
    ld(&mut a, R3, S_TMP);
    a.jump(BPF_JEQ, R3, 0, Step::Fail);
    a.push(Insn::add_imm(R3, off(t.nsproxy_net)?));
    probe_read(&mut a, S_TMP, 8);
    a.jump(BPF_JNE, R0, 0, Step::Fail);
    ld(&mut a, R3, S_TMP);
    a.jump(BPF_JEQ, R3, 0, Step::Fail);
    st(&mut a, S_NET, R3);
    a.push(Insn::add_imm(R3, off(t.net_hashinfo)?));
    probe_read(&mut a, S_TMP, 8);
    a.jump(BPF_JNE, R0, 0, Step::Fail);
    ld(&mut a, R6, S_TMP);
    a.jump(BPF_JEQ, R6, 0, Step::Fail);
    for (field, size, to) in [
        (t.ehash, 8, S_EHASH),
        (t.ehash_mask, 4, S_EHASH_N),
        (t.lhash2, 8, S_TABLE),
        (t.lhash2_mask, 4, S_NBUCKETS),
    ] {
        st_imm(&mut a, S_TMP, 0);
        a.push(Insn::mov_reg(R3, R6));
        a.push(Insn::add_imm(R3, off(field)?));
        probe_read(&mut a, S_TMP, size);
        a.jump(BPF_JNE, R0, 0, Step::Fail);
        ld(&mut a, R1, S_TMP);
        if size == 4 {
            // A mask: the table has mask + 1 buckets.
            a.push(Insn::add_imm(R1, 1));
        } else {
            a.jump(BPF_JEQ, R1, 0, Step::Fail);
        }
        st(&mut a, to, R1);
    }
    let (lstride, lhead) = t.lhash2_bucket;
    for (at, v) in [
        (S_MODE, 0),
        (S_NODE, 0),
        (S_BUCKET, 0),
        (S_STRIDE, off(lstride)?),
        (S_HEAD_OFF, off(lhead)?),
        (S_NULLS_BASE, LISTENING_NULLS),
        (S_PHASE, PHASE_LISTEN),
        (S_RETRIES, 0),
        (S_GIVEN_UP, 0),
        (S_BUF_START, 0),
        (S_BUF_COUNT, 0),
        (S_NREC, 0),
        (S_K, 0),
        (S_BUF_CAP, (BUF_BYTES as u32 / lstride) as i32),
    ] {
        st_imm(&mut a, at, v);
    }
    a.push(Insn::mov_imm(R1, MAX_STEPS));
    a.func_ref(R2, Step::Callback);
    a.push(Insn::mov_imm(R3, 0));
    a.push(Insn::mov_imm(R4, 0));
    a.push(Insn::call(HELPER_LOOP));
    ld(&mut a, R1, S_PHASE);
    a.push(Insn::mov_imm(R0, RET_INCOMPLETE as i32));
    a.jump(BPF_JNE, R1, PHASE_DONE, Step::Ret0);
    ld(&mut a, R0, S_GIVEN_UP);
    a.place(Step::Ret0);
    a.push(Insn::exit());
    a.place(Step::Fail);
    a.push(Insn::mov_imm(R0, RET_NO_TABLES as i32));
    a.push(Insn::exit());

    // The callback: one step of the walk. r9 the state throughout.
    let callback = a.insns.len();
    a.place(Step::Callback);
    for insn in Insn::map_value(R9, scratch_fd, 0) {
        a.push(insn);
    }
    ld(&mut a, R1, S_MODE);
    a.jump(BPF_JEQ, R1, MODE_COMMIT, Step::Commit);
    ld(&mut a, R6, S_NODE);
    a.jump(BPF_JEQ, R6, 0, Step::NextBucket);
    a.jump(BPF_JSET, R6, 1, Step::ChainEnd);

    // A socket: read its fields and the next link.
    a.push(Insn::mov_reg(R3, R6));
    a.push(Insn::add_imm(
        R3,
        i32::from(read_start) - i32::from(t.nulls_node),
    ));
    probe_read(&mut a, S_SOCK, i32::from(read_end - read_start));
    a.jump(BPF_JNE, R0, 0, Step::Mismatch);
    ld(&mut a, R6, in_sock(t.nulls_node));
    st(&mut a, S_NODE, R6);
    ld(&mut a, R1, in_sock(t.net));
    ld(&mut a, R2, S_NET);
    a.jump_reg(BPF_JNE, R1, R2, Step::CountDone);
    a.push(Insn::load(BPF_H, R2, R9, in_sock(f.family)));
    a.push(Insn::load(BPF_B, R3, R9, in_sock(f.state)));
    a.push(Insn::load(BPF_H, R4, R9, in_sock(f.num)));
    a.push(Insn::mov_imm(R5, 0));
    a.jump(BPF_JEQ, R2, libc::AF_INET, Step::FamilyKnown);
    a.jump(BPF_JNE, R2, libc::AF_INET6, Step::CountDone);
    a.push(Insn::mov_imm(R5, 1));
    a.place(Step::FamilyKnown);
    ld(&mut a, R1, S_NREC);
    a.jump(BPF_JGE, R1, MAX_CHAIN as i32, Step::GiveUp);
    // record = family << 24 | (state & 15) << 16 | port
    a.push(Insn::lsh_imm(R5, 24));
    a.push(Insn::and_imm(R3, 15));
    a.push(Insn::lsh_imm(R3, 16));
    a.push(Insn::or_reg(R5, R3));
    a.push(Insn::and_imm(R4, 0xffff));
    a.push(Insn::or_reg(R5, R4));
    a.push(Insn::mov_reg(R2, R1));
    a.push(Insn::and_imm(R2, MAX_CHAIN as i32 - 1));
    a.push(Insn::lsh_imm(R2, 2));
    a.push(Insn::mov_reg(R3, R9));
    a.push(Insn::add_reg(R3, R2));
    a.push(Insn::store(BPF_W, R3, S_REC, R5));
    a.push(Insn::add_imm(R1, 1));
    st(&mut a, S_NREC, R1);
    a.place(Step::CountDone);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());

    // The chain's end: its marker must name this bucket.
    a.place(Step::ChainEnd);
    ld(&mut a, R1, S_BUCKET);
    ld(&mut a, R2, S_NULLS_BASE);
    a.push(Insn::add_reg(R1, R2));
    a.push(Insn::lsh_imm(R1, 1));
    a.push(alu_imm(BPF_OR, R1, 1));
    a.jump_reg(BPF_JNE, R6, R1, Step::Mismatch);
    st_imm(&mut a, S_MODE, MODE_COMMIT);
    st_imm(&mut a, S_K, 0);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());

    // Another bucket's marker, or a read refused: walk the bucket again
    // from its head as it is now, or give it up.
    a.place(Step::Mismatch);
    ld(&mut a, R1, S_RETRIES);
    a.push(Insn::add_imm(R1, 1));
    st(&mut a, S_RETRIES, R1);
    a.jump(BPF_JGT, R1, MAX_RETRIES, Step::GiveUp);
    ld(&mut a, R3, S_BUCKET);
    ld(&mut a, R2, S_STRIDE);
    a.push(alu_reg(BPF_MUL, R3, R2));
    ld(&mut a, R2, S_HEAD_OFF);
    a.push(Insn::add_reg(R3, R2));
    ld(&mut a, R2, S_TABLE);
    a.push(Insn::add_reg(R3, R2));
    probe_read(&mut a, S_TMP, 8);
    a.jump(BPF_JNE, R0, 0, Step::GiveUp);
    ld(&mut a, R1, S_TMP);
    a.jump(BPF_JEQ, R1, 0, Step::GiveUp);
    a.place(Step::StartChain);
    st(&mut a, S_NODE, R1);
    st_imm(&mut a, S_NREC, 0);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());

    a.place(Step::GiveUp);
    ld(&mut a, R1, S_GIVEN_UP);
    a.push(Insn::add_imm(R1, 1));
    st(&mut a, S_GIVEN_UP, R1);
    a.place(Step::Advance);
    ld(&mut a, R1, S_BUCKET);
    a.push(Insn::add_imm(R1, 1));
    st(&mut a, S_BUCKET, R1);
    st_imm(&mut a, S_NODE, 0);
    st_imm(&mut a, S_RETRIES, 0);
    st_imm(&mut a, S_MODE, 0);
    st_imm(&mut a, S_NREC, 0);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());

    // The next bucket: its head from the buffer, refilled as needed.
    a.place(Step::NextBucket);
    ld(&mut a, R6, S_BUCKET);
    ld(&mut a, R1, S_NBUCKETS);
    a.jump_reg(BPF_JGE, R6, R1, Step::TableDone);
    ld(&mut a, R2, S_BUF_START);
    a.push(Insn::mov_reg(R7, R6));
    a.push(alu_reg(BPF_SUB, R7, R2));
    ld(&mut a, R2, S_BUF_COUNT);
    a.jump_reg(BPF_JLT, R7, R2, Step::InBuffer);
    st(&mut a, S_BUF_START, R6);
    a.push(alu_reg(BPF_SUB, R1, R6));
    ld(&mut a, R2, S_BUF_CAP);
    a.jump_reg(BPF_JGE, R2, R1, Step::Clamped);
    a.push(Insn::mov_reg(R1, R2));
    a.place(Step::Clamped);
    st(&mut a, S_BUF_COUNT, R1);
    ld(&mut a, R2, S_STRIDE);
    a.push(alu_reg(BPF_MUL, R1, R2));
    a.jump(BPF_JGT, R1, BUF_BYTES as i32, Step::Abort);
    a.push(Insn::mov_reg(R3, R6));
    a.push(alu_reg(BPF_MUL, R3, R2));
    ld(&mut a, R2, S_TABLE);
    a.push(Insn::add_reg(R3, R2));
    a.push(Insn::mov_reg(R2, R1));
    a.push(Insn::mov_reg(R1, R9));
    a.push(Insn::add_imm(R1, i32::from(S_BUF)));
    a.push(Insn::call(HELPER_PROBE_READ_KERNEL));
    a.jump(BPF_JNE, R0, 0, Step::Abort);
    a.push(Insn::mov_imm(R7, 0));
    a.place(Step::InBuffer);
    ld(&mut a, R2, S_STRIDE);
    a.push(alu_reg(BPF_MUL, R7, R2));
    ld(&mut a, R2, S_HEAD_OFF);
    a.push(Insn::add_reg(R7, R2));
    a.push(Insn::and_imm(R7, (BUF_BYTES - 8) as i32));
    a.push(Insn::mov_reg(R2, R9));
    a.push(Insn::add_reg(R2, R7));
    a.push(Insn::load(BPF_DW, R1, R2, S_BUF));
    a.jump(BPF_JSET, R1, 1, Step::Advance);
    st_imm(&mut a, S_RETRIES, 0);
    a.jump(BPF_JA, R0, 0, Step::StartChain);

    // The end of a table: the listening one leads to the established one.
    a.place(Step::TableDone);
    ld(&mut a, R1, S_PHASE);
    a.jump(BPF_JNE, R1, PHASE_LISTEN, Step::AllDone);
    let (estride, ehead) = t.ehash_bucket;
    st_imm(&mut a, S_PHASE, 1);
    ld(&mut a, R1, S_EHASH);
    st(&mut a, S_TABLE, R1);
    ld(&mut a, R1, S_EHASH_N);
    st(&mut a, S_NBUCKETS, R1);
    for (at, v) in [
        (S_BUCKET, 0),
        (S_NODE, 0),
        (S_BUF_START, 0),
        (S_BUF_COUNT, 0),
        (S_STRIDE, off(estride)?),
        (S_HEAD_OFF, off(ehead)?),
        (S_NULLS_BASE, 0),
        (S_BUF_CAP, (BUF_BYTES as u32 / estride) as i32),
    ] {
        st_imm(&mut a, at, v);
    }
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());
    a.place(Step::AllDone);
    st_imm(&mut a, S_PHASE, PHASE_DONE);
    a.push(Insn::mov_imm(R0, 1));
    a.push(Insn::exit());
    a.place(Step::Abort);
    st_imm(&mut a, S_PHASE, PHASE_FAILED);
    a.push(Insn::mov_imm(R0, 1));
    a.push(Insn::exit());

    // Committing the chain's sockets, one a step.
    a.place(Step::Commit);
    ld(&mut a, R1, S_K);
    ld(&mut a, R2, S_NREC);
    a.jump_reg(BPF_JGE, R1, R2, Step::Advance);
    a.push(Insn::mov_reg(R2, R1));
    a.push(Insn::add_imm(R2, 1));
    st(&mut a, S_K, R2);
    a.push(Insn::and_imm(R1, MAX_CHAIN as i32 - 1));
    a.push(Insn::lsh_imm(R1, 2));
    a.push(Insn::mov_reg(R3, R9));
    a.push(Insn::add_reg(R3, R1));
    a.push(Insn::load(BPF_W, R4, R3, S_REC));
    // r3: state, r5: the family's counters (byte offset), r4: port.
    a.push(Insn::mov_reg(R3, R4));
    a.push(Insn::rsh_imm(R3, 16));
    a.push(Insn::and_imm(R3, 15));
    a.push(Insn::mov_reg(R5, R4));
    a.push(Insn::rsh_imm(R5, 24));
    a.push(Insn::and_imm(R5, 1));
    a.push(Insn::lsh_imm(
        R5,
        (STATES_PER_FAMILY * 4).trailing_zeros() as i32,
    ));
    a.push(Insn::and_imm(R4, 0xffff));
    for insn in Insn::map_value(R8, counts_fd, 0) {
        a.push(insn);
    }
    a.push(Insn::mov_reg(R7, R3));
    a.push(Insn::lsh_imm(R7, 2));
    a.push(Insn::add_reg(R7, R5));
    a.push(Insn::add_reg(R7, R8));
    a.push(Insn::load(BPF_W, R0, R7, 0));
    a.push(Insn::add_imm(R0, 1));
    a.push(Insn::store(BPF_W, R7, 0, R0));
    // r7: the port's byte of the LISTEN bitmap, r5: its bit, r6: the
    // byte's value.
    a.push(Insn::mov_reg(R7, R4));
    a.push(Insn::rsh_imm(R7, 3));
    a.push(Insn::add_imm(R7, LISTEN_BITMAP as i32));
    a.push(Insn::add_reg(R7, R8));
    a.push(Insn::mov_reg(R2, R4));
    a.push(Insn::and_imm(R2, 7));
    a.push(Insn::mov_imm(R5, 1));
    a.push(Insn::lsh_reg(R5, R2));
    a.push(Insn::load(BPF_B, R6, R7, 0));
    a.jump(BPF_JEQ, R3, 1, Step::Established);
    a.jump(BPF_JNE, R3, 10, Step::NotListening);
    a.push(Insn::or_reg(R6, R5));
    a.push(Insn::store(BPF_B, R7, 0, R6));
    a.place(Step::NotListening);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());
    a.place(Step::Established);
    a.push(Insn::and_reg(R6, R5));
    a.jump(BPF_JEQ, R6, 0, Step::NotListening);
    a.push(Insn::store(BPF_W, R10, -4, R4));
    for insn in Insn::map_fd(R1, established_fd) {
        a.push(insn);
    }
    a.push(Insn::mov_reg(R2, R10));
    a.push(Insn::add_imm(R2, -4));
    a.push(Insn::call(HELPER_MAP_LOOKUP_ELEM));
    a.jump(BPF_JEQ, R0, 0, Step::NotListening);
    a.push(Insn::load(BPF_W, R1, R0, 0));
    a.push(Insn::add_imm(R1, 1));
    a.push(Insn::store(BPF_W, R0, 0, R1));
    a.jump(BPF_JA, R0, 0, Step::NotListening);
    Ok((a.finish()?, callback))
}

// ---------------------------------------------------------------------------
// Loading and running.

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_PROG_TYPE_SYSCALL: u32 = 31;
const BPF_F_SLEEPABLE: u32 = 1 << 4;
const BTF_INT_SIGNED: u32 = 1 << 24;

/// The BTF the kernel needs to accept a callback: the two functions
/// (the main program, global, and its callback, static) and their
/// prototypes.
fn functions_btf() -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut name = |s: &str| {
        let at = strings.len() as u32;
        strings.extend_from_slice(s.as_bytes());
        strings.push(0);
        at
    };
    let info = |kind: u32, vlen: u32| (kind << 24) | vlen;
    let types: Vec<Vec<u32>> = vec![
        // 1: int
        vec![name("int"), info(BTF_KIND_INT, 0), 4, BTF_INT_SIGNED | 32],
        // 2: void *
        vec![0, info(BTF_KIND_PTR, 0), 0],
        // 3: int (void *ctx)
        vec![0, info(BTF_KIND_FUNC_PROTO, 1), 1, name("ctx"), 2],
        // 4: the main program, global
        vec![name("nines_tcp_walk"), info(BTF_KIND_FUNC, 1), 3],
        // 5: long
        vec![name("long"), info(BTF_KIND_INT, 0), 8, BTF_INT_SIGNED | 64],
        // 6: long (long index, void *ctx)
        vec![
            0,
            info(BTF_KIND_FUNC_PROTO, 2),
            5,
            name("index"),
            5,
            name("ctx"),
            2,
        ],
        // 7: the callback, static
        vec![name("nines_tcp_walk_step"), info(BTF_KIND_FUNC, 0), 6],
    ];
    let type_bytes: Vec<u8> = types
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let mut data = vec![0x9f, 0xeb, 1, 0];
    for v in [
        24u32,
        0,
        type_bytes.len() as u32,
        type_bytes.len() as u32,
        strings.len() as u32,
    ] {
        data.extend_from_slice(&v.to_ne_bytes());
    }
    data.extend_from_slice(&type_bytes);
    data.extend_from_slice(&strings);
    data
}

/// The loaded walk program and its scratch map.
pub struct TableWalk {
    _scratch: OwnedFd,
    _btf: OwnedFd,
    prog: OwnedFd,
}

impl std::fmt::Debug for TableWalk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableWalk").finish_non_exhaustive()
    }
}

/// How one walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalkEnd {
    /// Every bucket was walked and counted.
    Complete,
    /// This many buckets were given up (see the module docs).
    GaveUp(u32),
    /// The walk ran out of steps before the end of the tables.
    Incomplete,
    /// The namespace's tables, or a table's buckets, could not be read.
    NoTables,
}

impl std::fmt::Display for WalkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WalkEnd::Complete => write!(f, "complete"),
            WalkEnd::GaveUp(n) => write!(
                f,
                "{n} hash buckets given up (changing too fast, or a chain of more than {MAX_CHAIN} sockets)"
            ),
            WalkEnd::Incomplete => write!(f, "out of steps before the end of the tables"),
            WalkEnd::NoTables => write!(f, "the namespace's TCP tables could not be read"),
        }
    }
}

impl TableWalk {
    /// Loads the walk program, counting into `counts_fd` and
    /// `established_fd` (the parent's maps).
    pub fn load(
        target: &WalkTarget,
        counts_fd: RawFd,
        established_fd: RawFd,
    ) -> Result<Self, BpfError> {
        let scratch = bpf_fd(
            super::BPF_MAP_CREATE,
            &mut Attr::new()
                .u32(0, super::BPF_MAP_TYPE_ARRAY)
                .u32(4, 4)
                .u32(8, SCRATCH_BYTES as u32)
                .u32(12, 1)
                .name(28, b"nines_tcp_walk"),
        )
        .map_err(|error| BpfError::Syscall {
            what: "map create",
            error,
        })?;
        let (program, callback) =
            walk_program(target, scratch.as_raw_fd(), counts_fd, established_fd).map_err(
                |reason| BpfError::Btf {
                    path: super::VMLINUX_BTF.to_string(),
                    reason,
                },
            )?;
        let btf_blob = functions_btf();
        let mut btf_log = vec![0u8; 4096];
        let btf = bpf_fd(
            BPF_BTF_LOAD,
            &mut Attr::new()
                .u64(0, btf_blob.as_ptr() as u64)
                .u64(8, btf_log.as_mut_ptr() as u64)
                .u32(16, btf_blob.len() as u32)
                .u32(20, btf_log.len() as u32)
                .u32(24, 1),
        )
        .map_err(|error| BpfError::Verifier {
            error,
            log: log_tail(&btf_log),
        })?;
        let func_info: [u32; 4] = [0, 4, callback as u32, 7];
        let prog_attr = |log: Option<&mut [u8]>| {
            let attr = Attr::new()
                .u32(0, BPF_PROG_TYPE_SYSCALL)
                .u32(4, program.len() as u32)
                .u64(8, program.as_ptr() as u64)
                .u64(16, LICENSE.as_ptr() as u64)
                .u32(44, BPF_F_SLEEPABLE)
                .name(48, b"nines_tcp_walk")
                .u32(72, btf.as_raw_fd() as u32)
                .u32(76, 8)
                .u64(80, func_info.as_ptr() as u64)
                .u32(88, 2);
            match log {
                Some(log) => attr
                    .u32(24, 1)
                    .u32(28, log.len() as u32)
                    .u64(32, log.as_mut_ptr() as u64),
                None => attr,
            }
        };
        let prog = match bpf_fd(super::BPF_PROG_LOAD, &mut prog_attr(None)) {
            Ok(prog) => prog,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
                return Err(BpfError::Syscall {
                    what: "program load",
                    error: e,
                });
            }
            Err(_) => {
                let mut log = vec![0u8; LOG_BYTES];
                match bpf_fd(super::BPF_PROG_LOAD, &mut prog_attr(Some(&mut log))) {
                    Ok(prog) => prog,
                    Err(error) => {
                        return Err(BpfError::Verifier {
                            error,
                            log: log_tail(&log),
                        });
                    }
                }
            }
        };
        Ok(TableWalk {
            _scratch: scratch,
            _btf: btf,
            prog,
        })
    }

    /// Runs one walk; the counts are in the parent's maps.
    pub fn run(&self) -> io::Result<WalkEnd> {
        let mut attr = Attr::new().u32(0, self.prog.as_raw_fd() as u32);
        super::bpf_cmd(BPF_PROG_TEST_RUN, &mut attr)?;
        let retval = u32::from_ne_bytes([attr.0[4], attr.0[5], attr.0[6], attr.0[7]]);
        Ok(match retval {
            0 => WalkEnd::Complete,
            RET_NO_TABLES => WalkEnd::NoTables,
            RET_INCOMPLETE => WalkEnd::Incomplete,
            n => WalkEnd::GaveUp(n),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BpfSocketCounter, Way, must_load_here};

    #[test]
    fn spike_walk_counts_as_the_iterator() {
        let mut c = match BpfSocketCounter::load() {
            Ok(c) => c,
            Err(e) if !must_load_here() => {
                eprintln!("skipping: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        eprintln!("walk refused: {:?}", c.walk_refused());
        assert_eq!(c.way(), Way::Walk);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _k: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap())
            .collect();
        let t = std::time::Instant::now();
        let w = c.count().map(|p| {
            (
                p.states(0).to_vec(),
                p.states(1).to_vec(),
                p.listeners().to_vec(),
            )
        });
        eprintln!(
            "walk {:?} {:?} fallbacks {}",
            t.elapsed(),
            w,
            c.walk_fallbacks()
        );
        c.set_way(Way::Iterator);
        let t = std::time::Instant::now();
        let i = c.count().map(|p| {
            (
                p.states(0).to_vec(),
                p.states(1).to_vec(),
                p.listeners().to_vec(),
            )
        });
        eprintln!("iter {:?} {:?}", t.elapsed(), i);
        assert_eq!(w.unwrap(), i.unwrap());
    }
}
