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
//! Why reading without locks is safe and exact enough: the walk runs
//! inside an RCU read-side section (the kfuncs `bpf_rcu_read_lock` and
//! `bpf_rcu_read_unlock`), where TCP sockets, freed into slab caches
//! that reuse memory only for sockets of the same kind
//! (`SLAB_TYPESAFE_BY_RCU`), stay sockets; every read is fault-safe
//! anyway; and every chain ends in a "nulls" marker that names its
//! bucket. A socket freed and reused in another bucket
//! while the walk is on it leads the walk into that other chain, which
//! then ends in the wrong marker: the bucket's counts, kept aside until
//! the marker is checked, are thrown away and the bucket is walked again
//! (up to `MAX_RETRIES` times; a chain of more than `MAX_LINKS` links is
//! taken for one gone astray too; a bucket still not walked cleanly, or
//! with more than `MAX_CHAIN` sockets of the namespace, is given up and the pass
//! is reported incomplete, so that its counts are never handed out: the
//! parent counts that pass with the iterator). A read that fails is
//! treated the same way. Request sockets count with their own state
//! (`TCP_NEW_SYN_RECV`), as the iterator's, and the sampler reports them
//! as SYN_RECV, as netlink does. What is counted is then what
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
//! callback subprogram (a step reads one socket or counts one socket kept
//! aside, and where that ends a chain or a bucket goes on in the same
//! step: checking the marker, counting, finding the next bucket, refilling
//! the 4 KiB buffer of bucket heads and passing up to `SKIP_AT_ONCE`
//! empty ones; the verifier sees no loop inside a step); the kernel accepts a callback only
//! from a program that describes its functions in BTF, so a minimal BTF
//! blob (two functions and their prototypes) is loaded with it. The
//! program declares the parent's license string, for the parent's reason.
//!
//! This module must never write to kernel memory (it only reads, through
//! the fault-safe helper), follow a chain without a bound on its steps,
//! read any socket field other than the five named above, or hand out
//! counts from a pass that gave a bucket up.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::{
    Assembler, Attr, BPF_ALU64, BPF_B, BPF_CALL, BPF_DW, BPF_H, BPF_JA, BPF_JEQ, BPF_JMP, BPF_JNE,
    BPF_K, BPF_MEM, BPF_W, BPF_X, BTF_KIND_FUNC, BTF_KIND_FUNC_PROTO, BTF_KIND_INT, BTF_KIND_PTR,
    BTF_KIND_STRUCT, BTF_KIND_UNION, BpfError, Btf, BtfType, Insn, LICENSE, R0, R1, R2, R3, R4, R5,
    R6, R7, R8, R9, Reg, STATES_PER_FAMILY, SockFields, bpf_fd, log_tail,
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
    /// The end marker of listening bucket 0 (Linux's
    /// `LISTENING_NULLS_BASE`); bucket `i`'s is this plus `i`.
    pub listening_nulls: i32,
    /// BTF ids of the kfuncs `bpf_rcu_read_lock` and `bpf_rcu_read_unlock`.
    pub rcu_read_lock: u32,
    /// See `rcu_read_lock`.
    pub rcu_read_unlock: u32,
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
    let kfunc = |name: &str| {
        btf.find(BTF_KIND_FUNC, name)
            .map(|(id, _)| id)
            .ok_or_else(|| format!("no kernel function {name}"))
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
        listening_nulls: LISTENING_NULLS,
        rcu_read_lock: kfunc("bpf_rcu_read_lock")?,
        rcu_read_unlock: kfunc("bpf_rcu_read_unlock")?,
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
/// Links followed in one walk of a chain at most (sockets of every
/// namespace): past that, the chain cannot be a real one (the read went
/// astray in memory that changed under it), and the bucket is walked
/// again.
const MAX_LINKS: i32 = 1 << 14;
/// Empty buckets passed over in one step at most.
const SKIP_AT_ONCE: usize = 16;
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
const S_LINKS: i16 = 160;
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

/// The program's return value when the tables, or a run of a table's
/// buckets, could not be read.
pub const RET_NO_TABLES: u32 = u32::MAX - 1;
/// The program's return value when the walk did not reach its end.
pub const RET_INCOMPLETE: u32 = u32::MAX;

const HELPER_GET_CURRENT_TASK: i32 = 35;
const HELPER_PROBE_READ_KERNEL: i32 = 113;
const HELPER_LOOP: i32 = 181;

const BPF_ST: u8 = 0x02;
/// `src_reg` of a call to a kernel function (kfunc): imm is its BTF id.
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;
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
    Skipped,
    Found,
    TableDone,
    AllDone,
    CountDone,
    Established,
    NotListening,
}

/// `call kfunc` of the kernel's BTF id `id`.
fn kfunc_call(id: u32) -> Insn {
    Insn::new(
        BPF_JMP | BPF_CALL,
        R0,
        Reg(BPF_PSEUDO_KFUNC_CALL),
        0,
        id as i32,
    )
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
        (S_NULLS_BASE, t.listening_nulls),
        (S_PHASE, PHASE_LISTEN),
        (S_RETRIES, 0),
        (S_GIVEN_UP, 0),
        (S_BUF_START, 0),
        (S_BUF_COUNT, 0),
        (S_NREC, 0),
        (S_LINKS, 0),
        (S_K, 0),
        (S_BUF_CAP, (BUF_BYTES as u32 / lstride) as i32),
    ] {
        st_imm(&mut a, at, v);
    }
    // Sockets are freed into memory that stays theirs (type-safe) only
    // for readers inside an RCU read-side section.
    a.push(kfunc_call(t.rcu_read_lock));
    a.push(Insn::mov_imm(R1, MAX_STEPS));
    a.func_ref(R2, Step::Callback);
    a.push(Insn::mov_imm(R3, 0));
    a.push(Insn::mov_imm(R4, 0));
    a.push(Insn::call(HELPER_LOOP));
    a.push(kfunc_call(t.rcu_read_unlock));
    ld(&mut a, R1, S_PHASE);
    a.push(Insn::mov_imm(R0, RET_NO_TABLES as i32));
    a.jump(BPF_JEQ, R1, PHASE_FAILED, Step::Ret0);
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

    // A socket: read its fields and the next link, if the chain is not
    // longer than any chain can be.
    ld(&mut a, R1, S_LINKS);
    a.jump(BPF_JGE, R1, MAX_LINKS, Step::Mismatch);
    a.push(Insn::add_imm(R1, 1));
    st(&mut a, S_LINKS, R1);
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
    // The chain's end, met in this same step.
    a.place(Step::CountDone);
    a.jump(BPF_JSET, R6, 1, Step::ChainEnd);
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
    a.jump(BPF_JA, R0, 0, Step::Commit);

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
    st_imm(&mut a, S_LINKS, 0);
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
    a.jump(BPF_JA, R0, 0, Step::NextBucket);

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
    // Empty buckets (a head that is its own end marker) are passed over
    // up to SKIP_AT_ONCE a step: most buckets are empty.
    ld(&mut a, R8, S_BUF_COUNT);
    ld(&mut a, R4, S_STRIDE);
    ld(&mut a, R5, S_HEAD_OFF);
    for _ in 0..SKIP_AT_ONCE {
        a.push(Insn::mov_reg(R3, R7));
        a.push(alu_reg(BPF_MUL, R3, R4));
        a.push(Insn::add_reg(R3, R5));
        a.push(Insn::and_imm(R3, (BUF_BYTES - 8) as i32));
        a.push(Insn::mov_reg(R2, R9));
        a.push(Insn::add_reg(R2, R3));
        a.push(Insn::load(BPF_DW, R1, R2, S_BUF));
        a.push(Insn::mov_reg(R2, R1));
        a.push(Insn::and_imm(R2, 1));
        a.jump(BPF_JEQ, R2, 0, Step::Found);
        a.push(Insn::add_imm(R6, 1));
        a.push(Insn::add_imm(R7, 1));
        a.jump_reg(BPF_JGE, R7, R8, Step::Skipped);
    }
    a.place(Step::Skipped);
    st(&mut a, S_BUCKET, R6);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());
    a.place(Step::Found);
    st(&mut a, S_BUCKET, R6);
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

    // Counting the chain's sockets kept aside, one a step; the last goes
    // on to the next bucket.
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
    a.push(Insn::mov_reg(R5, R4));
    a.push(Insn::rsh_imm(R5, 24));
    a.push(Insn::and_imm(R5, 1));
    a.push(Insn::lsh_imm(
        R5,
        (STATES_PER_FAMILY * 4).trailing_zeros() as i32,
    ));
    for insn in Insn::map_value(R8, counts_fd, 0) {
        a.push(insn);
    }
    super::count_socket(
        &mut a,
        established_fd,
        Step::Established,
        Step::NotListening,
    );
    // After the chain's last socket, on to the next bucket in this step.
    a.place(Step::NotListening);
    ld(&mut a, R1, S_K);
    ld(&mut a, R2, S_NREC);
    a.jump_reg(BPF_JGE, R1, R2, Step::Advance);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());
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
    super::btf_blob(&types, &strings)
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
        let prog = super::load_program(
            Attr::new()
                .u32(0, BPF_PROG_TYPE_SYSCALL)
                .u32(4, program.len() as u32)
                .u64(8, program.as_ptr() as u64)
                .u64(16, LICENSE.as_ptr() as u64)
                .u32(44, BPF_F_SLEEPABLE)
                .name(48, b"nines_tcp_walk")
                .u32(72, btf.as_raw_fd() as u32)
                .u32(76, 8)
                .u64(80, func_info.as_ptr() as u64)
                .u32(88, 2),
        )?;
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
    use super::*;
    use crate::samplers::Samples;
    use crate::samplers::connections::ConnectionSampler;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    fn vmlinux() -> Option<Vec<u8>> {
        match std::fs::read(super::super::VMLINUX_BTF) {
            Ok(data) => Some(data),
            Err(e) => {
                eprintln!("skipping: the kernel's BTF cannot be read here ({e})");
                None
            }
        }
    }

    #[test]
    fn finds_the_tables_and_socket_links_in_the_running_kernel() {
        let Some(data) = vmlinux() else { return };
        let fields = super::super::parse_iter_target(&data)
            .expect("the kernel's BTF parses")
            .fields;
        let t = match parse_walk_target(&data, fields) {
            Ok(t) => t,
            Err(e) if !must_load_here() => {
                eprintln!("skipping: this kernel has no table walk ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // Linux 6.x: an established bucket is its chain head alone; a
        // listening bucket a lock and then its head.
        assert_eq!(t.ehash_bucket, (8, 0));
        assert_eq!(t.lhash2_bucket.0 % 8, 0);
        assert!(t.lhash2_bucket.1 >= 4 && t.lhash2_bucket.1 + 8 <= t.lhash2_bucket.0);
        // The mask follows its table's pointer in struct inet_hashinfo.
        assert!(t.ehash < t.ehash_mask && t.lhash2 != t.lhash2_mask);
        // skc_net and the link come after the port, family and state,
        // pointers aligned.
        assert!(t.net > fields.state && t.nulls_node > t.net, "{t:?}");
        assert_eq!((t.net % 8, t.nulls_node % 8), (0, 0));
        assert!(t.rcu_read_lock > 0 && t.rcu_read_unlock > 0);
        assert_ne!(t.rcu_read_lock, t.rcu_read_unlock);
    }

    /// Builds BTF blobs type by type, as the kernel lays BTF out.
    #[derive(Default)]
    struct BtfBuilder {
        types: Vec<u32>,
        strings: Vec<u8>,
        count: u32,
    }

    impl BtfBuilder {
        fn name(&mut self, s: &str) -> u32 {
            if self.strings.is_empty() {
                self.strings.push(0);
            }
            if s.is_empty() {
                return 0;
            }
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        fn add(&mut self, words: Vec<u32>) -> u32 {
            self.types.extend(words);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let n = self.name(name);
            self.add(vec![n, BTF_KIND_INT << 24, bytes, bytes * 8])
        }

        fn ptr(&mut self, to: u32) -> u32 {
            self.add(vec![0, BTF_KIND_PTR << 24, to])
        }

        fn fwd(&mut self, name: &str) -> u32 {
            let n = self.name(name);
            self.add(vec![n, super::super::BTF_KIND_FWD << 24, 0])
        }

        fn func(&mut self, name: &str) -> u32 {
            let proto = self.add(vec![0, BTF_KIND_FUNC_PROTO << 24, 0]);
            let n = self.name(name);
            self.add(vec![n, BTF_KIND_FUNC << 24, proto])
        }

        /// A struct (or union, `kind`) of `size` bytes with members
        /// (name, type, byte offset).
        fn record(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.name(name);
            let mut words = vec![n, (kind << 24) | members.len() as u32, size];
            for &(m, ty, at) in members {
                let m = self.name(m);
                words.extend([m, ty, at * 8]);
            }
            self.add(words)
        }

        fn build(mut self) -> Vec<u8> {
            self.name("");
            let types: Vec<u8> = self.types.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut data = vec![0x9f, 0xeb, 1, 0];
            for v in [
                24u32,
                0,
                types.len() as u32,
                types.len() as u32,
                self.strings.len() as u32,
            ] {
                data.extend_from_slice(&v.to_le_bytes());
            }
            data.extend_from_slice(&types);
            data.extend_from_slice(&self.strings);
            data
        }
    }

    /// The walk's structs laid out as Linux 6.18's; `death_row_pointer`
    /// makes `netns_ipv4.tcp_death_row` a pointer (as in Linux 6.0), and
    /// `listen_head` names the listening bucket's head.
    fn kernel_btf(death_row_pointer: bool, listen_head: &str) -> Vec<u8> {
        let mut b = BtfBuilder::default();
        let u32_t = b.int("unsigned int", 4);
        let u16_t = b.int("short unsigned int", 2);
        let u8_t = b.int("unsigned char", 1);
        let node_fwd = b.fwd("hlist_nulls_node");
        let node_ptr = b.ptr(node_fwd);
        // hlist_nulls_node's `next` must point to the struct itself: its
        // id is the next one but two (node, then the pointer to it).
        let node = b.record(
            BTF_KIND_STRUCT,
            "hlist_nulls_node",
            16,
            &[("next", b.count + 2, 0)],
        );
        let node_self = b.ptr(node);
        assert_eq!(node_self, node + 1);
        let _ = node_ptr;
        let head = b.record(
            BTF_KIND_STRUCT,
            "hlist_nulls_head",
            8,
            &[("first", node_self, 0)],
        );
        let ehb = b.record(
            BTF_KIND_STRUCT,
            "inet_ehash_bucket",
            8,
            &[("chain", head, 0)],
        );
        let lhb = b.record(
            BTF_KIND_STRUCT,
            "inet_listen_hashbucket",
            16,
            &[("lock", u32_t, 0), (listen_head, head, 8)],
        );
        let ehb_ptr = b.ptr(ehb);
        let lhb_ptr = b.ptr(lhb);
        let hashinfo = b.record(
            BTF_KIND_STRUCT,
            "inet_hashinfo",
            128,
            &[
                ("ehash", ehb_ptr, 0),
                ("ehash_mask", u32_t, 16),
                ("lhash2_mask", u32_t, 60),
                ("lhash2", lhb_ptr, 64),
            ],
        );
        let hashinfo_ptr = b.ptr(hashinfo);
        let dr = b.record(
            BTF_KIND_STRUCT,
            "inet_timewait_death_row",
            128,
            &[("hashinfo", hashinfo_ptr, 64)],
        );
        let dr_member = if death_row_pointer { b.ptr(dr) } else { dr };
        let ipv4 = b.record(
            BTF_KIND_STRUCT,
            "netns_ipv4",
            1024,
            &[("tcp_death_row", dr_member, 128)],
        );
        let net = b.record(BTF_KIND_STRUCT, "net", 4288, &[("ipv4", ipv4, 768)]);
        let net_ptr = b.ptr(net);
        let nsproxy = b.record(BTF_KIND_STRUCT, "nsproxy", 72, &[("net_ns", net_ptr, 40)]);
        let nsproxy_ptr = b.ptr(nsproxy);
        b.record(
            BTF_KIND_STRUCT,
            "task_struct",
            3264,
            &[("nsproxy", nsproxy_ptr, 1840)],
        );
        let possible_net = b.record(BTF_KIND_STRUCT, "", 8, &[("net", net_ptr, 0)]);
        let ports = b.record(
            BTF_KIND_STRUCT,
            "",
            4,
            &[("skc_dport", u16_t, 0), ("skc_num", u16_t, 2)],
        );
        let links = b.record(BTF_KIND_UNION, "", 16, &[("skc_nulls_node", node, 0)]);
        b.record(
            BTF_KIND_STRUCT,
            "sock_common",
            136,
            &[
                ("", ports, 12),
                ("skc_family", u16_t, 16),
                ("skc_state", u8_t, 18),
                ("skc_net", possible_net, 48),
                ("", links, 104),
            ],
        );
        b.func("bpf_rcu_read_lock");
        b.func("bpf_rcu_read_unlock");
        b.build()
    }

    const FIELDS: SockFields = SockFields {
        family: 16,
        state: 18,
        num: 14,
    };

    #[test]
    fn reads_the_walk_target_from_a_hand_built_kernel_layout() {
        let t = parse_walk_target(&kernel_btf(false, "nulls_head"), FIELDS).unwrap();
        assert_eq!(
            (t.task_nsproxy, t.nsproxy_net, t.net_hashinfo),
            (1840, 40, 768 + 128 + 64)
        );
        assert_eq!(
            (t.ehash, t.ehash_mask, t.lhash2, t.lhash2_mask),
            (0, 16, 64, 60)
        );
        assert_eq!((t.ehash_bucket, t.lhash2_bucket), ((8, 0), (16, 8)));
        assert_eq!((t.net, t.nulls_node), (48, 104));
        assert!(t.rcu_read_lock > 0 && t.rcu_read_unlock == t.rcu_read_lock + 2);
        // Its program assembles, with the callback after the main part.
        let (prog, callback) = walk_program(&t, 3, 4, 5).unwrap();
        assert!(callback > 0 && callback < prog.len());
        // The one reference to a subprogram names the callback; every
        // jump lands inside the part it is in (the kernel refuses a jump
        // from one function into another).
        let refs: Vec<usize> = (0..prog.len())
            .filter(|&i| prog[i].code == 0x18 && prog[i].regs >> 4 == 4)
            .collect();
        assert_eq!(refs.len(), 1);
        assert_eq!(
            refs[0] as i64 + 1 + i64::from(prog[refs[0]].imm),
            callback as i64
        );
        for (i, insn) in prog.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if class == BPF_JMP && op != 0x80 && op != 0x90 {
                let to = i as i64 + 1 + i64::from(insn.off);
                let part = |at: i64| at >= callback as i64;
                assert!((0..prog.len() as i64).contains(&to), "jump at {i}");
                assert_eq!(part(i as i64), part(to), "jump at {i} leaves its function");
            }
        }
        // Both parts end in an exit.
        assert_eq!(prog[callback - 1], Insn::exit());
        assert_eq!(prog[prog.len() - 1].code & 0x07, BPF_JMP);
    }

    #[test]
    fn refuses_layouts_it_does_not_know() {
        let e = parse_walk_target(&kernel_btf(true, "nulls_head"), FIELDS).unwrap_err();
        assert!(
            e.contains("tcp_death_row is not a struct") && e.contains("6.1"),
            "{e}"
        );
        let e = parse_walk_target(&kernel_btf(false, "head"), FIELDS).unwrap_err();
        assert!(
            e.contains("inet_listen_hashbucket has no member nulls_head"),
            "{e}"
        );
        let e = parse_walk_target(b"", FIELDS).unwrap_err();
        assert!(e.contains("header"), "{e}");
    }

    #[test]
    fn the_functions_btf_is_what_the_kernel_reads() {
        let data = functions_btf();
        let btf = Btf::parse(&data).unwrap();
        let (main, f) = btf.find(BTF_KIND_FUNC, "nines_tcp_walk").unwrap();
        assert_eq!((main, f.vlen), (4, 1), "the main program is global");
        let (step, f) = btf.find(BTF_KIND_FUNC, "nines_tcp_walk_step").unwrap();
        assert_eq!((step, f.vlen), (7, 0), "the callback is static");
        assert_eq!(btf.get(f.size_or_type).unwrap().kind, BTF_KIND_FUNC_PROTO);
    }

    /// A counter that counts by the table walk, or None (with a note)
    /// where it does not load; in CI as root it must.
    fn walking() -> Option<BpfSocketCounter> {
        match BpfSocketCounter::load() {
            Ok(c) if c.way() == Way::Walk => Some(c),
            Ok(c) if !must_load_here() => {
                eprintln!(
                    "skipping: the table walk does not load here ({:?})",
                    c.walk_refused()
                );
                None
            }
            Ok(c) => panic!("the table walk does not load: {:?}", c.walk_refused()),
            Err(e) if !must_load_here() => {
                eprintln!("skipping: BPF cannot load here ({e})");
                None
            }
            Err(e) => panic!("BPF does not load: {e}"),
        }
    }

    /// One pass's counts, owned: per family and state, and per
    /// listening port.
    type Pass = (Vec<u32>, Vec<u32>, Vec<(u16, u32)>);

    fn pass(c: &mut BpfSocketCounter) -> Pass {
        let p = c.count().expect("a pass");
        (
            p.states(0).to_vec(),
            p.states(1).to_vec(),
            p.listeners().to_vec(),
        )
    }

    fn on_port(p: &Pass, port: u16) -> Option<u32> {
        p.2.iter().find(|&&(q, _)| q == port).map(|&(_, n)| n)
    }

    /// `k` connections to a new listener on `addr`.
    fn connections(addr: &str, k: usize) -> Option<(TcpListener, Vec<(TcpStream, TcpStream)>)> {
        let l = TcpListener::bind(addr).ok()?;
        let to = l.local_addr().ok()?;
        let keep = (0..k)
            .map(|_| {
                let c = TcpStream::connect(to).expect("connect");
                (c, l.accept().expect("accept").0)
            })
            .collect();
        Some((l, keep))
    }

    /// A listener on 127.0.0.1 that defers accepting until data comes,
    /// and a client that sent none: the server's side stays a request
    /// socket (SYN_RECV) in the established table.
    fn syn_recv() -> (TcpListener, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let secs: libc::c_int = 30;
        // SAFETY: setting an int option on a socket we own.
        let r = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
        let c = TcpStream::connect(l.local_addr().expect("address")).expect("connect");
        (l, c)
    }

    /// One metric's values by one label's value.
    type Series = Vec<(String, f64)>;

    /// State counts and listening ports' counts as a sampler reports
    /// them.
    fn reported(out: &Samples) -> (Series, Series) {
        let series = |metric: &str, label: &str| {
            let mut v: Vec<(String, f64)> = out
                .observations
                .iter()
                .filter(|o| o.labels.metric_name() == Some(metric))
                .map(|o| (o.labels.get(label).unwrap_or_default().to_string(), o.value))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        (
            series("node_tcp_connection_states", "state"),
            series("nines_tcp_listen_port_connections", "port"),
        )
    }

    #[test]
    fn the_walk_counts_what_netlink_and_the_iterator_count() {
        const K: usize = 5;
        let Some(mut c) = walking() else { return };
        let (v4, _keep4) = connections("127.0.0.1:0", K).expect("IPv4 loopback");
        let v4_port = v4.local_addr().unwrap().port();
        let v6 = connections("[::1]:0", K + 1);
        let v6_port = v6.as_ref().map(|(l, _)| l.local_addr().unwrap().port());
        let (tw, tw_keep) = connections("127.0.0.1:0", K).expect("IPv4 loopback");
        drop(tw_keep);
        drop(tw);
        let (syn_l, _syn_c) = syn_recv();
        let syn_port = syn_l.local_addr().unwrap().port();

        // Per port, exactly, every pass.
        let p = pass(&mut c);
        assert_eq!(c.walk_fallbacks(), 0, "the walk finished");
        assert_eq!(on_port(&p, v4_port), Some(K as u32));
        assert_eq!(
            on_port(&p, syn_port),
            Some(0),
            "a request socket is not ESTABLISHED"
        );
        if let Some(port) = v6_port {
            assert_eq!(on_port(&p, port), Some(K as u32 + 1));
            assert!(p.1[1] >= 2 * (K as u32 + 1), "IPv6 ESTABLISHED: {:?}", p.1);
        }
        // Both ends of K connections, and the client of the request socket.
        assert!(p.0[1] > 2 * K as u32, "IPv4 ESTABLISHED: {:?}", p.0);
        assert!(p.0[6] >= K as u32, "IPv4 TIME_WAIT: {:?}", p.0);
        assert!(p.0[12] >= 1, "IPv4 request sockets: {:?}", p.0);

        // The whole table as the iterator and netlink see it: other
        // processes' sockets come and go, so equal in one of some passes.
        let mut iterated = BpfSocketCounter::load().expect("loads again");
        let iterator = iterated.set_way(Way::Iterator);
        let mut walk_sampler =
            ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16).with_bpf(c);
        let mut netlink =
            ConnectionSampler::with_max_ports(PathBuf::from("/"), 1 << 16).with_netlink(true);
        let mut seen = Vec::new();
        for _ in 0..20 {
            let (mut x, mut y) = (Samples::default(), Samples::default());
            let it = iterator.then(|| pass(&mut iterated));
            walk_sampler.sample(&mut x).expect("walk sample");
            let walked = iterator.then(|| {
                let mut again = BpfSocketCounter::load().expect("loads again");
                let counted = pass(&mut again);
                assert_eq!(again.walk_fallbacks(), 0, "the walk finished");
                counted
            });
            netlink.sample(&mut y).expect("netlink sample");
            assert_eq!(walk_sampler.last_method(), Some("bpf"));
            assert_eq!(netlink.last_method(), Some("netlink"));
            let (wx, ny) = (reported(&x), reported(&y));
            let syn = wx.0.iter().find(|(s, _)| s == "syn_recv").map(|&(_, n)| n);
            if wx == ny && it == walked && syn >= Some(1.0) {
                return;
            }
            seen.push((wx, ny));
        }
        panic!("the walk never agreed with netlink and the iterator: {seen:?}");
    }

    #[test]
    fn sockets_of_another_network_namespace_are_not_counted() {
        const K: usize = 3;
        let Some(mut c) = walking() else { return };
        let (here, _keep) = connections("127.0.0.1:0", K).expect("IPv4 loopback");
        let port = here.local_addr().unwrap().port();
        // A thread in a namespace of its own listens on the same port with
        // 2K connections, and on a port of its own; it counts too.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let setup = || -> Result<_, String> {
                // SAFETY: unshare affects this thread alone.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(format!("unshare: {}", io::Error::last_os_error()));
                }
                loopback_up()?;
                let same = connections(&format!("127.0.0.1:{port}"), 2 * K)
                    .ok_or("listen in the new namespace")?;
                let own = TcpListener::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
                let own_port = own.local_addr().map_err(|e| e.to_string())?.port();
                let counted = match BpfSocketCounter::load() {
                    Ok(mut c) if c.way() == Way::Walk => Some(pass(&mut c)),
                    _ => None,
                };
                Ok((same, own, own_port, counted))
            };
            match setup() {
                Ok((same, own, own_port, counted)) => {
                    let _ = ready_tx.send(Ok((own_port, counted)));
                    let _ = done_rx.recv();
                    drop((same, own));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        });
        let (own_port, counted) = match ready_rx.recv().expect("the thread answers") {
            Ok(r) => r,
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("skipping: no network namespace here ({e})");
                return;
            }
            Err(e) => panic!("no network namespace: {e}"),
        };
        let p = pass(&mut c);
        done_tx.send(()).expect("the thread waits");
        other.join().expect("the thread ends");
        assert_eq!(on_port(&p, port), Some(K as u32), "{:?}", p.2);
        assert_eq!(on_port(&p, own_port), None, "{:?}", p.2);
        // Counted from inside, the other namespace holds its own alone.
        let inside = counted.expect("the walk loads in the other namespace");
        let mut expected = vec![(port, 2 * K as u32), (own_port, 0)];
        expected.sort_unstable();
        assert_eq!(inside.2, expected);
        assert_eq!(inside.0[1], 4 * K as u32, "{:?}", inside.0);
    }

    /// Brings this thread's namespace's loopback up (127.0.0.1 comes
    /// with it).
    fn loopback_up() -> Result<(), String> {
        // SAFETY: a plain socket for the interface ioctls, closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", io::Error::last_os_error()));
        }
        // SAFETY: ifreq is plain data; the name fits with its NUL.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write ifr alone.
        let r = unsafe {
            if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
                -1
            } else {
                ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
            }
        };
        let e = io::Error::last_os_error();
        // SAFETY: closing the socket opened above, once.
        unsafe { libc::close(fd) };
        if r != 0 {
            return Err(format!("bringing lo up: {e}"));
        }
        Ok(())
    }

    #[test]
    fn a_pass_the_walk_gives_up_is_counted_by_the_iterator() {
        if walking().is_none() {
            return;
        }
        // With the wrong end marker expected, no listening bucket with a
        // socket ends in its own: each is walked again, then given up.
        let broken = |t: &mut WalkTarget| t.listening_nulls += 1;
        let path = std::path::Path::new(super::super::VMLINUX_BTF);
        let mut c = BpfSocketCounter::load_with(path, broken).expect("loads");
        assert_eq!(c.way(), Way::Walk);
        let (l, keep) = connections("127.0.0.1:0", 2).expect("IPv4 loopback");
        let port = l.local_addr().unwrap().port();
        let p = pass(&mut c);
        assert_eq!(c.walk_fallbacks(), 1, "the walk gave up");
        assert_eq!(on_port(&p, port), Some(2), "the iterator counted");
        for &(q, _) in &p.2 {
            assert_eq!(c.established_entry(q).unwrap(), 0, "port {q}");
        }
        // Without the iterator, the pass is an error, not the walk's
        // partial counts.
        c.iterator = None;
        let e = c.count().map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert_eq!(c.walk_fallbacks(), 2);
        drop((l, keep));
    }

    #[test]
    fn sockets_that_stay_are_counted_exactly_while_others_churn() {
        const K: usize = 8;
        let Some(mut c) = walking() else { return };
        let (l, keep) = connections("127.0.0.1:0", K).expect("IPv4 loopback");
        let port = l.local_addr().unwrap().port();
        // Another thread opens and resets connections as fast as it can:
        // sockets freed and their memory reused while the walk runs.
        let churn = TcpListener::bind("127.0.0.1:0").expect("bind");
        let to = churn.local_addr().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let churner = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(client) = TcpStream::connect(to) else {
                    continue;
                };
                let Ok((server, _)) = churn.accept() else {
                    continue;
                };
                // Closing with a reset leaves no TIME_WAIT behind.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                for s in [&client, &server] {
                    // SAFETY: setting SO_LINGER on a socket we own.
                    unsafe {
                        libc::setsockopt(
                            s.as_raw_fd(),
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&linger as *const libc::linger).cast(),
                            size_of::<libc::linger>() as libc::socklen_t,
                        )
                    };
                }
                drop((client, server));
                n += 1;
            }
            n
        });
        for _ in 0..50 {
            let p = pass(&mut c);
            assert_eq!(on_port(&p, port), Some(K as u32));
            assert!(p.0[10] >= 2, "both listeners: {:?}", p.0);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let churned = churner.join().expect("the churn thread ends");
        eprintln!(
            "{churned} connections churned; {} of 50 passes counted by the iterator",
            c.walk_fallbacks()
        );
        drop((l, keep));
    }

    #[test]
    fn passes_carry_nothing_over_either_way() {
        let Some(mut c) = walking() else { return };
        let (l, keep) = connections("127.0.0.1:0", 4).expect("IPv4 loopback");
        let port = l.local_addr().unwrap().port();
        for way in [Way::Walk, Way::Iterator, Way::Walk] {
            if !c.set_way(way) {
                continue;
            }
            for _ in 0..3 {
                let p = pass(&mut c);
                assert_eq!(on_port(&p, port), Some(4), "{way:?}");
                for &(q, _) in &p.2 {
                    assert_eq!(c.established_entry(q).unwrap(), 0, "{way:?} port {q}");
                }
            }
        }
        drop(keep);
        drop(l);
        let p = pass(&mut c);
        assert_eq!(on_port(&p, port), None, "a closed listener is gone");
    }
}
