//! Counting TCP sockets in one pass inside the kernel, with BPF (CAP_BPF
//! with CAP_PERFMON, or root, and a kernel with BTF), two ways into the
//! same two maps: a program that walks the TCP hash tables itself
//! without locks ([`walk`], Linux 6.1 and later), tried first because it
//! costs about half as much, and a BPF iterator over the TCP socket table
//! (`bpf_iter_tcp`, Linux 5.9 and later), which counts where the walk does
//! not load and any pass the walk does not finish. This part of the
//! module is the iterator and what both ways share: the maps, the BTF
//! parser, the instruction assembler and reading the counts.
//!
//! Netlink sock_diag makes the kernel fill one message per socket, and that
//! is nearly all of a netlink round's cost. Here the kernel walks the same
//! table (listening sockets, then established, TIME_WAIT and request
//! sockets, of the agent's own network namespace) and runs, for each
//! socket, a program of a few dozen instructions that only counts, in two
//! maps. The first, one value of 8,320 bytes that the agent has mapped
//! into its memory (three pages), holds sockets per (address family,
//! state) and a LISTEN bitmap, one bit per local port. The second, an
//! array of 65,536 u32 that stays in the kernel, holds ESTABLISHED sockets
//! per local port, counted only where the port's LISTEN bit is set (the
//! program reaches it through the helper `bpf_map_lookup_elem`). No
//! message per socket, nothing copied but the counts.
//!
//! That bit is always set in time: the TCP iterator walks the listening
//! hash (`TCP_SEQ_STATE_LISTENING`, every bucket up to `lhash2_mask`)
//! before it moves to `TCP_SEQ_STATE_ESTABLISHED` and the established
//! hash, where ESTABLISHED sockets are (Linux's `bpf_iter_tcp_batch` and
//! `bpf_iter_tcp_resume` in net/ipv4/tcp_ipv4.c). A listener opened during
//! the walk, after its bucket was passed, is not in that pass, as in any
//! one walk of the table, and so its port is not reported. After the walk the agent reads the
//! bitmap and, for each listening port, reads that port's entry of the
//! second map and zeroes it if it is not zero already: only those
//! entries can be non-zero, so the second map is all zero again for the
//! next pass, whether the walk finished or not.
//!
//! Mapping the whole per-port table instead (512 KiB) would add as much to
//! the agent's resident memory: the kernel maps an array map's pages all
//! at once.
//!
//! The program is assembled here, instruction by instruction (no compiler,
//! no BPF library); the socket fields it reads (`skc_family`, `skc_state`,
//! `skc_num` of `struct sock_common`) are found at the offsets the running
//! kernel's own type information (/sys/kernel/btf/vmlinux) gives, so one
//! binary fits every kernel layout. Anything unexpected in that file, or a
//! refusal by the kernel (permissions, a verifier that rejects the
//! program, which is then quoted from its log), is an error: the sampler
//! then counts through netlink as before.
//!
//! The program is loaded with the license string "Dual MIT/GPL". The
//! kernel lets only programs that declare a GPL-compatible license read
//! kernel structures through BTF pointers: under "Apache-2.0" (the
//! project's license) Linux 6.18's verifier refuses it with "Cannot access
//! kernel 'struct sock_common' from non-GPL compatible program". "Dual
//! MIT/GPL" is one of the strings the kernel takes as GPL-compatible; it
//! states the terms of the in-kernel program alone (the few dozen
//! instructions assembled below), not of the agent.
//!
//! This module must never write to the system beyond creating its own maps,
//! programs, BTF and link (all closed when the counter is dropped), read
//! any socket field other than those three (and, in the walk, the
//! socket's namespace and link), keep anything per socket, or hand out
//! counts from a pass that did not finish.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

pub mod walk;

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The iterator target's function, whose BTF id the program attaches to.
const ITER_FUNC: &str = "bpf_iter_tcp";

/// Counters per address family: one per kernel state number (0..15).
pub const STATES_PER_FAMILY: usize = 16;
/// Families counted: IPv4 (index 0) and IPv6 (index 1).
const FAMILIES: usize = 2;
const PORTS: usize = 1 << 16;
/// Counters per (family, state) at the start of the counts map's one
/// value, all u32.
const STATE_TABLE: usize = 0;
const STATE_COUNTERS: usize = FAMILIES * STATES_PER_FAMILY;
/// Byte offset of the LISTEN bitmap in that value: one bit per local
/// port, bit `port & 7` of byte `port >> 3`.
const LISTEN_BITMAP: usize = STATE_TABLE + STATE_COUNTERS * 4;
/// Size of the counts map's one value (8,320 bytes).
const VALUE_BYTES: usize = LISTEN_BITMAP + PORTS / 8;

/// Why the BPF iterator cannot count here.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// The kernel's BTF could not be read.
    #[error("reading {path}: {error}")]
    ReadBtf {
        /// The file.
        path: String,
        /// The OS error.
        error: io::Error,
    },
    /// The kernel's BTF does not say what the program needs.
    #[error("{path}: {reason}")]
    Btf {
        /// The file.
        path: String,
        /// What was missing or unexpected.
        reason: String,
    },
    /// A bpf() call was refused.
    #[error("bpf {what}: {error}")]
    Syscall {
        /// Which call.
        what: &'static str,
        /// The OS error.
        error: io::Error,
    },
    /// The verifier refused the program.
    #[error("bpf program refused ({error}); verifier log ends: {log}")]
    Verifier {
        /// The OS error.
        error: io::Error,
        /// The last lines of the verifier's log.
        log: String,
    },
    /// Not tried: the process lacks the capabilities, or the kernel its
    /// BTF (see [`privileged_with_btf`]).
    #[error("needs CAP_BPF and CAP_PERFMON (or root) and {VMLINUX_BTF}")]
    Unprivileged,
}

// ---------------------------------------------------------------------------
// BTF: just enough of the format (Documentation/bpf/btf.rst) to find one
// function and three members of one struct.

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_KIND_INT: u32 = 1;
const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_ARRAY: u32 = 3;
const BTF_KIND_STRUCT: u32 = 4;
const BTF_KIND_UNION: u32 = 5;
const BTF_KIND_ENUM: u32 = 6;
const BTF_KIND_FWD: u32 = 7;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_VOLATILE: u32 = 9;
const BTF_KIND_CONST: u32 = 10;
const BTF_KIND_RESTRICT: u32 = 11;
const BTF_KIND_FUNC: u32 = 12;
const BTF_KIND_FUNC_PROTO: u32 = 13;
const BTF_KIND_VAR: u32 = 14;
const BTF_KIND_DATASEC: u32 = 15;
const BTF_KIND_FLOAT: u32 = 16;
const BTF_KIND_DECL_TAG: u32 = 17;
const BTF_KIND_TYPE_TAG: u32 = 18;
const BTF_KIND_ENUM64: u32 = 19;

/// Byte offsets, inside `struct sock_common`, of the fields the program
/// reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockFields {
    /// `skc_family` (u16).
    pub family: u16,
    /// `skc_state` (u8).
    pub state: u16,
    /// `skc_num`, the local port in host order (u16).
    pub num: u16,
}

/// What the program needs from the kernel's BTF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IterTarget {
    /// BTF id of the FUNC `bpf_iter_tcp`.
    pub func_id: u32,
    /// Where the socket fields are.
    pub fields: SockFields,
}

/// One type of the type section, as read.
#[derive(Clone, Copy)]
struct BtfType {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
    /// Where the kind's trailing data starts in the type section.
    extra: usize,
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Start of each type in `types`, by id (id 0, void, has none).
    offsets: Vec<usize>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self, String> {
        let magic = u16_at(data, 0).ok_or("shorter than a BTF header")?;
        if magic != BTF_MAGIC {
            return Err(format!(
                "not BTF of this byte order (magic {magic:#06x}, expected {BTF_MAGIC:#06x})"
            ));
        }
        if data.get(2) != Some(&1) {
            return Err(format!("BTF version {:?}, expected 1", data.get(2)));
        }
        let field = |at| u32_at(data, at).ok_or("shorter than a BTF header");
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| data.get(range))
                .ok_or_else(|| format!("{what} section runs past the end of the file"))
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        let mut btf = Btf {
            types,
            strings,
            offsets: vec![0],
        };
        let mut at = 0;
        while at < types.len() {
            let t = btf.type_at(at)?;
            btf.offsets.push(at);
            at = t.extra + Self::extra_len(&t)?;
        }
        Ok(btf)
    }

    fn type_at(&self, at: usize) -> Result<BtfType, String> {
        let short = || format!("type at byte {at} of the type section is cut short");
        let info = u32_at(self.types, at + 4).ok_or_else(short)?;
        Ok(BtfType {
            name_off: u32_at(self.types, at).ok_or_else(short)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(self.types, at + 8).ok_or_else(short)?,
            extra: at + 12,
        })
    }

    /// Bytes of kind-specific data after a type's 12-byte header.
    fn extra_len(t: &BtfType) -> Result<usize, String> {
        Ok(match t.kind {
            BTF_KIND_INT | BTF_KIND_VAR | BTF_KIND_DECL_TAG => 4,
            BTF_KIND_ARRAY => 12,
            BTF_KIND_STRUCT | BTF_KIND_UNION | BTF_KIND_DATASEC | BTF_KIND_ENUM64 => 12 * t.vlen,
            BTF_KIND_ENUM | BTF_KIND_FUNC_PROTO => 8 * t.vlen,
            BTF_KIND_PTR | BTF_KIND_FWD | BTF_KIND_TYPEDEF | BTF_KIND_VOLATILE | BTF_KIND_CONST
            | BTF_KIND_RESTRICT | BTF_KIND_FUNC | BTF_KIND_FLOAT | BTF_KIND_TYPE_TAG => 0,
            kind => return Err(format!("unknown BTF kind {kind}")),
        })
    }

    fn name(&self, name_off: u32) -> &'a [u8] {
        let rest = self.strings.get(name_off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Result<BtfType, String> {
        let at = self
            .offsets
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or_else(|| format!("type id {id} does not exist"))?;
        self.type_at(*at)
    }

    /// The first type of `kind` named `name`, with its id.
    fn find(&self, kind: u32, name: &str) -> Option<(u32, BtfType)> {
        (1..self.offsets.len()).find_map(|id| {
            let t = self.type_at(self.offsets[id]).ok()?;
            (t.kind == kind && self.name(t.name_off) == name.as_bytes())
                .then(|| (u32::try_from(id).ok(), t))
                .and_then(|(id, t)| Some((id?, t)))
        })
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<BtfType, String> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                BTF_KIND_TYPEDEF | BTF_KIND_VOLATILE | BTF_KIND_CONST | BTF_KIND_RESTRICT
                | BTF_KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Ok(t),
            }
        }
        Err(format!(
            "type id {id}: typedefs and qualifiers nest too deep"
        ))
    }

    /// Bit offset of member `name` of struct or union `t` (searched
    /// through anonymous struct and union members too), with its type id,
    /// refusing a bitfield; `base_bits` is where `t` starts.
    fn member_bits(
        &self,
        t: &BtfType,
        name: &str,
        base_bits: u64,
        depth: u32,
    ) -> Result<Option<(u64, u32)>, String> {
        if depth > 8 {
            return Err("anonymous members nest too deep".into());
        }
        for i in 0..t.vlen {
            let at = t.extra + 12 * i;
            let short = || format!("member {i} of a struct is cut short");
            let (name_off, type_id, offset) = (
                u32_at(self.types, at).ok_or_else(short)?,
                u32_at(self.types, at + 4).ok_or_else(short)?,
                u32_at(self.types, at + 8).ok_or_else(short)?,
            );
            // With kind_flag, the top 8 bits are a bitfield's width.
            let (bits, bitfield) = if t.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            let bits = base_bits + u64::from(bits);
            let member_name = self.name(name_off);
            if member_name.is_empty() {
                let inner = self.resolve(type_id)?;
                if matches!(inner.kind, BTF_KIND_STRUCT | BTF_KIND_UNION)
                    && let Some(found) = self.member_bits(&inner, name, bits, depth + 1)?
                {
                    return Ok(Some(found));
                }
                continue;
            }
            if member_name != name.as_bytes() {
                continue;
            }
            if bitfield != 0 || bits % 8 != 0 {
                return Err(format!("member {name} is a bitfield (bit offset {bits})"));
            }
            return Ok(Some((bits, type_id)));
        }
        Ok(None)
    }

    /// Byte offset of integer member `name` of struct or union `t` (as
    /// [`Self::member_bits`]), with the size of its integer type.
    fn member(
        &self,
        t: &BtfType,
        name: &str,
        base_bits: u64,
        depth: u32,
    ) -> Result<Option<(u64, u32)>, String> {
        let Some((bits, type_id)) = self.member_bits(t, name, base_bits, depth)? else {
            return Ok(None);
        };
        let ty = self.resolve(type_id)?;
        if ty.kind != BTF_KIND_INT {
            return Err(format!(
                "member {name} is not an integer (BTF kind {})",
                ty.kind
            ));
        }
        let encoding = u32_at(self.types, ty.extra)
            .ok_or_else(|| format!("the integer type of member {name} is cut short"))?;
        if encoding & 0xff != ty.size_or_type * 8 || (encoding >> 16) & 0xff != 0 {
            return Err(format!(
                "member {name} is an integer of {} bits in {} bytes",
                encoding & 0xff,
                ty.size_or_type
            ));
        }
        Ok(Some((bits / 8, ty.size_or_type)))
    }
}

/// Finds in the kernel's BTF (the bytes of /sys/kernel/btf/vmlinux) the
/// iterator function's id and where `struct sock_common` keeps the
/// socket's family, state and local port.
pub fn parse_iter_target(data: &[u8]) -> Result<IterTarget, String> {
    let btf = Btf::parse(data)?;
    let (func_id, _) = btf
        .find(BTF_KIND_FUNC, ITER_FUNC)
        .ok_or_else(|| format!("no function {ITER_FUNC} (a kernel without the TCP iterator)"))?;
    let (_, sock) = btf
        .find(BTF_KIND_STRUCT, "sock_common")
        .ok_or("no struct sock_common")?;
    let field = |name: &str, size: u32| -> Result<u16, String> {
        let (offset, found_size) = btf
            .member(&sock, name, 0, 0)?
            .ok_or_else(|| format!("struct sock_common has no member {name}"))?;
        if found_size != size {
            return Err(format!(
                "sock_common.{name} is {found_size} bytes, expected {size}"
            ));
        }
        if offset + u64::from(size) > u64::from(sock.size_or_type) {
            return Err(format!("sock_common.{name} lies outside the struct"));
        }
        u16::try_from(offset).map_err(|_| format!("sock_common.{name} is too far in"))
    };
    Ok(IterTarget {
        func_id,
        fields: SockFields {
            family: field("skc_family", 2)?,
            state: field("skc_state", 1)?,
            num: field("skc_num", 2)?,
        },
    })
}

// ---------------------------------------------------------------------------
// BPF instructions (Documentation/bpf/standardization/instruction-set.rst).

/// One BPF instruction as the kernel reads it: opcode, destination
/// register in the low and source register in the high nibble, a 16-bit
/// offset and a 32-bit immediate, in host byte order.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const _: () = assert!(size_of::<Insn>() == 8);

// Instruction classes, sizes, modes, operations and sources.
const BPF_LD: u8 = 0x00;
const BPF_LDX: u8 = 0x01;
const BPF_STX: u8 = 0x03;
const BPF_JMP: u8 = 0x05;
const BPF_ALU64: u8 = 0x07;
const BPF_W: u8 = 0x00;
const BPF_H: u8 = 0x08;
const BPF_B: u8 = 0x10;
const BPF_DW: u8 = 0x18;
const BPF_IMM: u8 = 0x00;
const BPF_MEM: u8 = 0x60;
const BPF_ADD: u8 = 0x00;
const BPF_OR: u8 = 0x40;
const BPF_AND: u8 = 0x50;
const BPF_LSH: u8 = 0x60;
const BPF_RSH: u8 = 0x70;
const BPF_MOV: u8 = 0xb0;
const BPF_K: u8 = 0x00;
const BPF_X: u8 = 0x08;
const BPF_JA: u8 = 0x00;
const BPF_JEQ: u8 = 0x10;
const BPF_JNE: u8 = 0x50;
const BPF_CALL: u8 = 0x80;
const BPF_EXIT: u8 = 0x90;
/// `src_reg` of a 64-bit immediate load that means "the map of this fd":
/// imm is the map's fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// `src_reg` of a 64-bit immediate load that means "address of a map's
/// value": imm is the map's fd, the next instruction's imm the offset.
const BPF_PSEUDO_MAP_VALUE: u8 = 2;
/// `src_reg` of a 64-bit immediate load that means "address of the
/// subprogram": imm is its first instruction, relative to the next one.
const BPF_PSEUDO_FUNC: u8 = 4;

/// A register, r0 to r10.
#[derive(Debug, Clone, Copy)]
pub struct Reg(u8);

const R0: Reg = Reg(0);
const R1: Reg = Reg(1);
const R2: Reg = Reg(2);
const R3: Reg = Reg(3);
const R4: Reg = Reg(4);
const R5: Reg = Reg(5);
const R6: Reg = Reg(6);
const R7: Reg = Reg(7);
const R8: Reg = Reg(8);
const R9: Reg = Reg(9);
/// The frame pointer: the top of the program's 512-byte stack.
const R10: Reg = Reg(10);
/// The helper `bpf_map_lookup_elem(map, key)`: a pointer to the value, or
/// NULL.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;

impl Insn {
    fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Self {
        Insn {
            code,
            regs: (src.0 << 4) | (dst.0 & 0x0f),
            off,
            imm,
        }
    }

    /// The instruction's 8 bytes as the kernel reads them.
    pub fn to_bytes(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = self.regs;
        b[2..4].copy_from_slice(&self.off.to_ne_bytes());
        b[4..8].copy_from_slice(&self.imm.to_ne_bytes());
        b
    }

    /// `dst = imm` (64-bit).
    pub fn mov_imm(dst: Reg, imm: i32) -> Self {
        Self::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, R0, 0, imm)
    }

    /// `dst = src` (64-bit).
    pub fn mov_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `dst op= imm` (64-bit).
    fn alu_imm(op: u8, dst: Reg, imm: i32) -> Self {
        Self::new(BPF_ALU64 | op | BPF_K, dst, R0, 0, imm)
    }

    /// `dst += imm` (64-bit).
    pub fn add_imm(dst: Reg, imm: i32) -> Self {
        Self::alu_imm(BPF_ADD, dst, imm)
    }

    /// `dst += src` (64-bit).
    pub fn add_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU64 | BPF_ADD | BPF_X, dst, src, 0, 0)
    }

    /// `dst &= imm` (64-bit).
    pub fn and_imm(dst: Reg, imm: i32) -> Self {
        Self::alu_imm(BPF_AND, dst, imm)
    }

    /// `dst <<= imm` (64-bit).
    pub fn lsh_imm(dst: Reg, imm: i32) -> Self {
        Self::alu_imm(BPF_LSH, dst, imm)
    }

    /// `dst >>= imm` (64-bit, logical).
    pub fn rsh_imm(dst: Reg, imm: i32) -> Self {
        Self::alu_imm(BPF_RSH, dst, imm)
    }

    /// `dst <<= src` (64-bit).
    pub fn lsh_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU64 | BPF_LSH | BPF_X, dst, src, 0, 0)
    }

    /// `dst |= src` (64-bit).
    pub fn or_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU64 | BPF_OR | BPF_X, dst, src, 0, 0)
    }

    /// `dst &= src` (64-bit).
    pub fn and_reg(dst: Reg, src: Reg) -> Self {
        Self::new(BPF_ALU64 | BPF_AND | BPF_X, dst, src, 0, 0)
    }

    /// `call helper` (arguments in r1-r5, result in r0; r1-r5 are
    /// clobbered).
    pub fn call(helper: i32) -> Self {
        Self::new(BPF_JMP | BPF_CALL, R0, R0, 0, helper)
    }

    /// `dst = map of fd`: two instructions.
    pub fn map_fd(dst: Reg, map_fd: RawFd) -> [Self; 2] {
        [
            Self::new(
                BPF_LD | BPF_DW | BPF_IMM,
                dst,
                Reg(BPF_PSEUDO_MAP_FD),
                0,
                map_fd,
            ),
            Self::new(0, R0, R0, 0, 0),
        ]
    }

    /// `dst = *(size *)(src + off)`.
    pub fn load(size: u8, dst: Reg, src: Reg, off: i16) -> Self {
        Self::new(BPF_LDX | BPF_MEM | size, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub fn store(size: u8, dst: Reg, off: i16, src: Reg) -> Self {
        Self::new(BPF_STX | BPF_MEM | size, dst, src, off, 0)
    }

    /// `dst = &value of map fd + offset`: two instructions.
    pub fn map_value(dst: Reg, map_fd: RawFd, offset: i32) -> [Self; 2] {
        [
            Self::new(
                BPF_LD | BPF_DW | BPF_IMM,
                dst,
                Reg(BPF_PSEUDO_MAP_VALUE),
                0,
                map_fd,
            ),
            Self::new(0, R0, R0, 0, offset),
        ]
    }

    /// `exit` (returns r0).
    pub fn exit() -> Self {
        Self::new(BPF_JMP | BPF_EXIT, R0, R0, 0, 0)
    }
}

/// Where a jump goes, resolved when the program is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Exit,
    Counted,
    Established,
}

/// Builds a program, keeping jumps (and references to subprograms) by
/// label until every label is placed.
struct Assembler<L = Label> {
    insns: Vec<Insn>,
    labels: Vec<(L, usize)>,
    /// Jumps: the instruction's offset is resolved.
    jumps: Vec<(usize, L)>,
    /// References to a subprogram: the instruction's immediate is.
    funcs: Vec<(usize, L)>,
}

impl<L> Default for Assembler<L> {
    fn default() -> Self {
        Assembler {
            insns: Vec::new(),
            labels: Vec::new(),
            jumps: Vec::new(),
            funcs: Vec::new(),
        }
    }
}

impl<L: Copy + PartialEq + std::fmt::Debug> Assembler<L> {
    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    fn place(&mut self, label: L) {
        self.labels.push((label, self.insns.len()));
    }

    /// `if dst op imm goto label` (`BPF_JA` for always).
    fn jump(&mut self, op: u8, dst: Reg, imm: i32, label: L) {
        self.jumps.push((self.insns.len(), label));
        self.insns
            .push(Insn::new(BPF_JMP | op | BPF_K, dst, R0, 0, imm));
    }

    /// `if dst op src goto label`.
    fn jump_reg(&mut self, op: u8, dst: Reg, src: Reg, label: L) {
        self.jumps.push((self.insns.len(), label));
        self.insns
            .push(Insn::new(BPF_JMP | op | BPF_X, dst, src, 0, 0));
    }

    /// `dst = the subprogram at label` (for a helper's callback): two
    /// instructions.
    fn func_ref(&mut self, dst: Reg, label: L) {
        self.funcs.push((self.insns.len(), label));
        self.insns.push(Insn::new(
            BPF_LD | BPF_DW | BPF_IMM,
            dst,
            Reg(BPF_PSEUDO_FUNC),
            0,
            0,
        ));
        self.insns.push(Insn::new(0, R0, R0, 0, 0));
    }

    fn target(&self, label: L) -> Result<usize, String> {
        self.labels
            .iter()
            .find(|(l, _)| *l == label)
            .map(|&(_, to)| to)
            .ok_or_else(|| format!("label {label:?} never placed"))
    }

    fn finish(mut self) -> Result<Vec<Insn>, String> {
        for &(at, label) in &self.jumps {
            let target = self.target(label)?;
            let off = i16::try_from(target as i64 - at as i64 - 1)
                .map_err(|_| format!("jump to {label:?} too far"))?;
            self.insns[at].off = off;
        }
        for &(at, label) in &self.funcs {
            let target = self.target(label)?;
            self.insns[at].imm = i32::try_from(target as i64 - at as i64 - 1)
                .map_err(|_| format!("subprogram {label:?} too far"))?;
        }
        Ok(self.insns)
    }
}

/// The per-socket program. r1 is `struct bpf_iter__tcp *`: `meta` at 0,
/// `sk_common` at 8 (NULL once the walk is over). `counts_fd` is the
/// one-entry map of state counters and the LISTEN bitmap, `established_fd`
/// the array of ESTABLISHED sockets per listening port.
fn counting_program(
    fields: SockFields,
    counts_fd: RawFd,
    established_fd: RawFd,
) -> Result<Vec<Insn>, String> {
    let offset = |o: u16| i16::try_from(o).map_err(|_| format!("field offset {o} too large"));
    let mut a = Assembler::default();
    a.push(Insn::load(BPF_DW, R6, R1, 8));
    a.jump(BPF_JEQ, R6, 0, Label::Exit);
    a.push(Insn::load(BPF_H, R2, R6, offset(fields.family)?));
    a.push(Insn::load(BPF_B, R3, R6, offset(fields.state)?));
    a.push(Insn::load(BPF_H, R4, R6, offset(fields.num)?));
    // r5: byte offset of the family's state counters.
    a.push(Insn::mov_imm(R5, 0));
    a.jump(BPF_JEQ, R2, libc::AF_INET, Label::Counted);
    a.jump(BPF_JNE, R2, libc::AF_INET6, Label::Exit);
    a.push(Insn::mov_imm(R5, (STATES_PER_FAMILY * 4) as i32));
    a.place(Label::Counted);
    for insn in Insn::map_value(R8, counts_fd, 0) {
        a.push(insn);
    }
    count_socket(&mut a, established_fd, Label::Established, Label::Exit);
    a.place(Label::Exit);
    a.push(Insn::mov_imm(R0, 0));
    a.push(Insn::exit());
    a.finish()
}

/// Emits the counting of one socket, shared by both programs:
/// counts[family][state] += 1; a listener sets its port's LISTEN bit; an
/// ESTABLISHED socket on a port whose bit is set adds one to that port's
/// entry of the map `established_fd`. In: r3 the state, r4 the local
/// port, r5 the byte offset of the family's counters, r8 the counts map's
/// value. Clobbers r0-r7. Goes on at `done`, which the caller places
/// right after (`established` is a label of its own for this code).
fn count_socket<L: Copy + PartialEq + std::fmt::Debug>(
    a: &mut Assembler<L>,
    established_fd: RawFd,
    established: L,
    done: L,
) {
    // counts[family][state & 15] += 1
    a.push(Insn::and_imm(R3, 15));
    a.push(Insn::mov_reg(R7, R3));
    a.push(Insn::lsh_imm(R7, 2));
    a.push(Insn::add_reg(R7, R5));
    a.push(Insn::add_reg(R7, R8));
    a.push(Insn::load(BPF_W, R0, R7, 0));
    a.push(Insn::add_imm(R0, 1));
    a.push(Insn::store(BPF_W, R7, 0, R0));
    // r7: the port's byte of the LISTEN bitmap, r5: its bit, r6: the
    // byte's value. The mask keeps the index provably in the bitmap.
    a.push(Insn::and_imm(R4, 0xffff));
    a.push(Insn::mov_reg(R7, R4));
    a.push(Insn::rsh_imm(R7, 3));
    a.push(Insn::add_imm(R7, LISTEN_BITMAP as i32));
    a.push(Insn::add_reg(R7, R8));
    a.push(Insn::mov_reg(R2, R4));
    a.push(Insn::and_imm(R2, 7));
    a.push(Insn::mov_imm(R5, 1));
    a.push(Insn::lsh_reg(R5, R2));
    a.push(Insn::load(BPF_B, R6, R7, 0));
    a.jump(BPF_JEQ, R3, 1, established);
    a.jump(BPF_JNE, R3, 10, done);
    // LISTEN: set the port's bit.
    a.push(Insn::or_reg(R6, R5));
    a.push(Insn::store(BPF_B, R7, 0, R6));
    a.jump(BPF_JA, R0, 0, done);
    // ESTABLISHED on a port with a listener seen (every listener comes
    // before the first established socket): established[port] += 1.
    a.place(established);
    a.push(Insn::and_reg(R6, R5));
    a.jump(BPF_JEQ, R6, 0, done);
    a.push(Insn::store(BPF_W, R10, -4, R4));
    for insn in Insn::map_fd(R1, established_fd) {
        a.push(insn);
    }
    a.push(Insn::mov_reg(R2, R10));
    a.push(Insn::add_imm(R2, -4));
    a.push(Insn::call(HELPER_MAP_LOOKUP_ELEM));
    a.jump(BPF_JEQ, R0, 0, done);
    a.push(Insn::load(BPF_W, R1, R0, 0));
    a.push(Insn::add_imm(R1, 1));
    a.push(Insn::store(BPF_W, R0, 0, R1));
}

// ---------------------------------------------------------------------------
// The bpf() system call.

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;

/// The program's license (see the module docs for why it is there).
const LICENSE: &[u8] = b"Dual MIT/GPL\0";

/// Bytes of the verifier log kept when a program is refused.
const LOG_BYTES: usize = 256 * 1024;
/// Lines of the verifier log quoted in the error.
const LOG_LINES: usize = 8;

/// `union bpf_attr`, as bytes: each command fills the fields it uses at
/// the offsets linux/bpf.h gives them, the rest stay zero.
#[derive(Clone)]
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Attr([0; 128])
    }

    fn u32(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn u64(mut self, at: usize, v: u64) -> Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }

    fn name(mut self, at: usize, name: &[u8]) -> Self {
        let n = name.len().min(15);
        self.0[at..at + n].copy_from_slice(&name[..n]);
        self
    }
}

/// Runs one bpf() command; what it returned when not an error.
fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: attr is a valid, writable bpf_attr of the size passed; the
    // pointers inside it (if any) point to live buffers of the sizes given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            size_of::<Attr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Runs one bpf() command that returns a new file descriptor.
fn bpf_fd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf() returned a bad fd"))?;
    // SAFETY: the kernel just handed us this descriptor, owned by no one.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs one bpf() command that returns 0 or an error.
fn bpf_cmd(cmd: libc::c_long, attr: &mut Attr) -> io::Result<()> {
    bpf(cmd, attr).map(|_| ())
}

/// Loads the program `attr` describes (`BPF_PROG_LOAD`, without a log
/// buffer); when the kernel refuses it for anything but permissions,
/// loads it again with one, to quote the verifier's reason.
fn load_program(attr: Attr) -> Result<OwnedFd, BpfError> {
    match bpf_fd(BPF_PROG_LOAD, &mut attr.clone()) {
        Ok(prog) => Ok(prog),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOSYS)) => {
            Err(BpfError::Syscall {
                what: "program load",
                error: e,
            })
        }
        Err(_) => {
            let mut log = vec![0u8; LOG_BYTES];
            let mut logged = attr
                .u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
            bpf_fd(BPF_PROG_LOAD, &mut logged).map_err(|error| BpfError::Verifier {
                error,
                log: log_tail(&log),
            })
        }
    }
}

/// A BTF blob (header, type section, string section) of `types`, each
/// the u32 words of one type record, and `strings`.
pub(crate) fn btf_blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
    let type_bytes: Vec<u8> = types
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    // Magic 0xeb9f, version 1, no flags; then the header's length and
    // the sections' offsets and lengths.
    let mut data = vec![0x9f, 0xeb, 1, 0];
    for v in [
        24u32,
        0,
        type_bytes.len() as u32,
        type_bytes.len() as u32,
        strings.len() as u32,
    ] {
        data.extend_from_slice(&v.to_le_bytes());
    }
    data.extend_from_slice(&type_bytes);
    data.extend_from_slice(strings);
    data
}

/// The last `LOG_LINES` non-empty lines of a verifier log.
fn log_tail(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join(" | ")
}

/// Counts from one pass of the iterator, borrowed from the counter.
pub struct PassCounts<'a> {
    states: &'a [u32; STATE_COUNTERS],
    listeners: &'a [(u16, u32)],
}

impl PassCounts<'_> {
    /// Sockets of `family` (0: IPv4, 1: IPv6) in each kernel state.
    pub fn states(&self, family: usize) -> &[u32] {
        let start = family * STATES_PER_FAMILY;
        self.states
            .get(start..start + STATES_PER_FAMILY)
            .unwrap_or(&[])
    }

    /// Ports with a socket in LISTEN, ascending, each with its
    /// ESTABLISHED sockets (of either family).
    pub fn listeners(&self) -> &[(u16, u32)] {
        self.listeners
    }
}

/// How a pass counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// The table walk ([`walk`]).
    Walk,
    /// The TCP iterator.
    Iterator,
}

impl Way {
    /// The way's name, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Way::Walk => "a walk of the TCP hash tables",
            Way::Iterator => "the TCP iterator",
        }
    }
}

/// Loaded BPF programs (the table walk, the TCP iterator, or both) and
/// the maps they count into.
pub struct BpfSocketCounter {
    /// Held so that the map lives as long as the mapping.
    _counts_map: OwnedFd,
    /// ESTABLISHED sockets per listening port (65,536 u32, not mapped).
    established_map: OwnedFd,
    /// The iterator program and its link (the program is held so that it
    /// lives as long as the link), where it loads.
    iterator: Option<(OwnedFd, OwnedFd)>,
    /// The table walk, where it loads: tried first.
    walk: Option<walk::TableWalk>,
    /// Why the table walk did not load.
    walk_refused: Option<String>,
    /// Whether passes try the table walk first (they do, unless set
    /// otherwise to compare the two ways).
    prefer_walk: bool,
    /// Passes the table walk did not finish, counted by the iterator.
    walk_fallbacks: u64,
    /// The counts map's value, mapped: state counters, then the bitmap.
    value: NonNull<u8>,
    mapped_bytes: usize,
    target: IterTarget,
    /// The last pass's state counters.
    states: [u32; STATE_COUNTERS],
    /// The last pass's listening ports and their established sockets,
    /// kept from pass to pass so that its room is reused.
    listeners: Vec<(u16, u32)>,
}

// SAFETY: the mapping is owned by this value alone and only touched
// through &mut self (or a borrow of it); nothing in it is tied to a thread.
unsafe impl Send for BpfSocketCounter {}

impl std::fmt::Debug for BpfSocketCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BpfSocketCounter")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl BpfSocketCounter {
    /// Reads the kernel's BTF, creates the maps, loads and attaches the
    /// program. Fails (and leaves nothing behind) if any step is refused.
    pub fn load() -> Result<Self, BpfError> {
        Self::load_with(Path::new(VMLINUX_BTF), |_| {})
    }

    /// As [`BpfSocketCounter::load`], with the kernel's BTF read from `btf`.
    /// `adjust_walk` may change what the walk reads (tests make it fail
    /// with it).
    fn load_with(btf: &Path, adjust_walk: fn(&mut walk::WalkTarget)) -> Result<Self, BpfError> {
        let data = std::fs::read(btf).map_err(|error| BpfError::ReadBtf {
            path: btf.display().to_string(),
            error,
        })?;
        let target = parse_iter_target(&data).map_err(|reason| BpfError::Btf {
            path: btf.display().to_string(),
            reason,
        })?;

        let counts_map = bpf_fd(
            BPF_MAP_CREATE,
            &mut Attr::new()
                .u32(0, BPF_MAP_TYPE_ARRAY)
                .u32(4, 4)
                .u32(8, VALUE_BYTES as u32)
                .u32(12, 1)
                .u32(16, BPF_F_MMAPABLE)
                .name(28, b"nines_tcp"),
        )
        .map_err(|error| BpfError::Syscall {
            what: "map create",
            error,
        })?;
        let established_map = bpf_fd(
            BPF_MAP_CREATE,
            &mut Attr::new()
                .u32(0, BPF_MAP_TYPE_ARRAY)
                .u32(4, 4)
                .u32(8, 4)
                .u32(12, PORTS as u32)
                .name(28, b"nines_tcp_est"),
        )
        .map_err(|error| BpfError::Syscall {
            what: "map create",
            error,
        })?;

        let walk = walk::parse_walk_target(&data, target.fields)
            .map_err(|reason| BpfError::Btf {
                path: btf.display().to_string(),
                reason,
            })
            .and_then(|mut walk_target| {
                adjust_walk(&mut walk_target);
                walk::TableWalk::load(
                    &walk_target,
                    counts_map.as_raw_fd(),
                    established_map.as_raw_fd(),
                )
            });
        let iterator = load_iterator(&target, counts_map.as_raw_fd(), established_map.as_raw_fd());
        let (walk, walk_refused, iterator) = match (walk, iterator) {
            (Ok(walk), iterator) => (Some(walk), None, iterator.ok()),
            (Err(refused), Ok(iterator)) => (None, Some(refused.to_string()), Some(iterator)),
            (Err(_), Err(e)) => return Err(e),
        };
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|&p| p > 0)
            .unwrap_or(4096);
        let mapped_bytes = VALUE_BYTES.div_ceil(page) * page;
        // SAFETY: mapping a BPF_F_MMAPABLE array map's value area, which is
        // page aligned and `VALUE_BYTES` long, rounded up to whole pages as
        // the kernel allows.
        let value = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                counts_map.as_raw_fd(),
                0,
            )
        };
        if value == libc::MAP_FAILED {
            return Err(BpfError::Syscall {
                what: "map mmap",
                error: io::Error::last_os_error(),
            });
        }
        let value = NonNull::new(value.cast::<u8>()).ok_or_else(|| BpfError::Syscall {
            what: "map mmap",
            error: io::Error::other("mapped at address 0"),
        })?;
        Ok(BpfSocketCounter {
            _counts_map: counts_map,
            established_map,
            iterator,
            walk,
            walk_refused,
            prefer_walk: true,
            walk_fallbacks: 0,
            value,
            mapped_bytes,
            target,
            states: [0; STATE_COUNTERS],
            listeners: Vec::new(),
        })
    }

    /// Which way passes count: [`Way::Walk`] where the table walk loaded
    /// (falling back to the iterator for a pass it does not finish), else
    /// [`Way::Iterator`].
    pub fn way(&self) -> Way {
        if self.walk.is_some() && (self.prefer_walk || self.iterator.is_none()) {
            Way::Walk
        } else {
            Way::Iterator
        }
    }

    /// Counts the next passes `way`, if it loaded here (for comparing the
    /// two); false if it did not.
    pub fn set_way(&mut self, way: Way) -> bool {
        match way {
            Way::Walk if self.walk.is_some() => self.prefer_walk = true,
            Way::Iterator if self.iterator.is_some() => self.prefer_walk = false,
            _ => return false,
        }
        true
    }

    /// Which BPF way counts, in words for the log: the table walk (and
    /// whether the iterator stands behind it), or the iterator and why the
    /// walk did not load.
    pub fn describe(&self) -> String {
        match (&self.walk, &self.iterator, &self.walk_refused) {
            (Some(_), Some(_), _) => format!(
                "BPF: {} (the TCP iterator for a pass it does not finish)",
                Way::Walk.name()
            ),
            (Some(_), None, _) => format!("BPF: {}", Way::Walk.name()),
            (None, _, Some(why)) => {
                format!("BPF: {} (no table walk here: {why})", Way::Iterator.name())
            }
            (None, _, None) => format!("BPF: {}", Way::Iterator.name()),
        }
    }

    /// Why the table walk did not load here (None if it did).
    pub fn walk_refused(&self) -> Option<&str> {
        self.walk_refused.as_deref()
    }

    /// Passes the table walk did not finish (and the iterator counted
    /// instead, or that failed).
    pub fn walk_fallbacks(&self) -> u64 {
        self.walk_fallbacks
    }

    /// Counts every TCP socket of this network namespace and returns the
    /// counts. An error means the pass did not finish.
    pub fn count(&mut self) -> io::Result<PassCounts<'_>> {
        let mut walk_error = None;
        if self.way() == Way::Walk {
            match self.pass(Way::Walk) {
                Ok(()) => return Ok(self.counts()),
                Err(e) => {
                    if self.walk_fallbacks == 0 {
                        tracing::warn!(
                            "connections: {e}; that pass, and any other the walk does not finish, is counted by the TCP iterator"
                        );
                    }
                    self.walk_fallbacks += 1;
                    walk_error = Some(e);
                }
            }
        }
        match (self.iterator.is_some(), walk_error) {
            (false, Some(e)) => Err(e),
            _ => {
                self.pass(Way::Iterator)?;
                Ok(self.counts())
            }
        }
    }

    /// One pass `way` into the maps, then the listening ports out of them.
    fn pass(&mut self, way: Way) -> io::Result<()> {
        // SAFETY: the mapping is VALUE_BYTES long (or more) and ours alone;
        // no borrow of it outlives this call.
        unsafe { std::ptr::write_bytes(self.value.as_ptr(), 0, VALUE_BYTES) };
        let walked = match (way, &self.walk) {
            (Way::Walk, Some(walk)) => match walk.run() {
                Ok(walk::WalkEnd::Complete) => Ok(()),
                Ok(end) => Err(io::Error::other(format!(
                    "the TCP table walk did not finish: {end}"
                ))),
                Err(e) => Err(e),
            },
            _ => self.iterate(),
        };
        // Whether or not the walk finished, the established map holds
        // counts only for ports whose bit is set now: take them and zero
        // them, so that the next pass starts from zero.
        let taken = self.take_listeners();
        walked?;
        taken
    }

    /// The counts of the pass that just finished.
    fn counts(&mut self) -> PassCounts<'_> {
        // SAFETY: the pass is over; the state counters are the value's
        // first STATE_COUNTERS u32, and the mapping is page aligned.
        let states = unsafe {
            std::slice::from_raw_parts(self.value.as_ptr().cast::<u32>(), STATE_COUNTERS)
        };
        self.states.copy_from_slice(states);
        PassCounts {
            states: &self.states,
            listeners: &self.listeners,
        }
    }

    /// One walk of the iterator over the socket table, to its end.
    fn iterate(&self) -> io::Result<()> {
        let Some((_, link)) = &self.iterator else {
            return Err(io::Error::other("the BPF iterator is not loaded"));
        };
        let iter = bpf_fd(
            BPF_ITER_CREATE,
            &mut Attr::new().u32(0, link.as_raw_fd() as u32),
        )?;
        // The program prints nothing, so each read returns 0 once the walk
        // is over; the kernel stops a read early (EAGAIN) after a million
        // sockets without output, and the next read goes on from there.
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: buf is a valid writable buffer of the length given.
            let n = unsafe { libc::read(iter.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                return Ok(());
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                    continue;
                }
                return Err(e);
            }
        }
    }

    /// Reads the LISTEN bitmap into `listeners`, each port with its
    /// ESTABLISHED count from the established map, and sets those entries
    /// back to zero. Only ports in the bitmap ever have a count there, so
    /// this zeroes the whole map.
    fn take_listeners(&mut self) -> io::Result<()> {
        self.listeners.clear();
        // SAFETY: no walk is running; the bitmap is the PORTS / 8 bytes at
        // LISTEN_BITMAP in the mapping, which is VALUE_BYTES long.
        let bitmap = unsafe {
            std::slice::from_raw_parts(self.value.as_ptr().add(LISTEN_BITMAP), PORTS / 8)
        };
        let mut first_error = None;
        for (byte_at, &byte) in bitmap.iter().enumerate() {
            let mut bits = byte;
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let Ok(port) = u16::try_from(byte_at * 8 + bit) else {
                    continue;
                };
                // An entry still at zero needs no reset (no pass runs
                // meanwhile).
                let established = self.established_entry(port).and_then(|n| {
                    if n != 0 {
                        self.zero_established_entry(port)?;
                    }
                    Ok(n)
                });
                match established {
                    Ok(n) => self.listeners.push((port, n)),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The established map's entry for `port`.
    fn established_entry(&self, port: u16) -> io::Result<u32> {
        let key = u32::from(port);
        let mut value = 0u32;
        bpf_cmd(
            BPF_MAP_LOOKUP_ELEM,
            &mut Attr::new()
                .u32(0, self.established_map.as_raw_fd() as u32)
                .u64(8, &key as *const u32 as u64)
                .u64(16, &mut value as *mut u32 as u64),
        )?;
        Ok(value)
    }

    /// Sets the established map's entry for `port` to zero.
    fn zero_established_entry(&self, port: u16) -> io::Result<()> {
        let key = u32::from(port);
        let value = 0u32;
        bpf_cmd(
            BPF_MAP_UPDATE_ELEM,
            &mut Attr::new()
                .u32(0, self.established_map.as_raw_fd() as u32)
                .u64(8, &key as *const u32 as u64)
                .u64(16, &value as *const u32 as u64),
        )
    }
}

/// Loads the iterator program counting into the two maps, and attaches
/// it: the program and its link.
fn load_iterator(
    target: &IterTarget,
    counts_fd: RawFd,
    established_fd: RawFd,
) -> Result<(OwnedFd, OwnedFd), BpfError> {
    let program = counting_program(target.fields, counts_fd, established_fd).map_err(|reason| {
        BpfError::Btf {
            path: VMLINUX_BTF.to_string(),
            reason,
        }
    })?;
    let prog = load_program(
        Attr::new()
            .u32(0, BPF_PROG_TYPE_TRACING)
            .u32(4, program.len() as u32)
            .u64(8, program.as_ptr() as u64)
            .u64(16, LICENSE.as_ptr() as u64)
            .name(48, b"nines_tcp_count")
            .u32(68, BPF_TRACE_ITER)
            .u32(108, target.func_id),
    )?;

    let link = bpf_fd(
        BPF_LINK_CREATE,
        &mut Attr::new()
            .u32(0, prog.as_raw_fd() as u32)
            .u32(8, BPF_TRACE_ITER),
    )
    .map_err(|error| BpfError::Syscall {
        what: "link create",
        error,
    })?;

    Ok((prog, link))
}

impl Drop for BpfSocketCounter {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in load_with, once.
        unsafe { libc::munmap(self.value.as_ptr().cast(), self.mapped_bytes) };
    }
}

/// Whether this process has what loading the iterator takes: CAP_BPF and
/// CAP_PERFMON, or CAP_SYS_ADMIN, in effect (root has them, unless a
/// container dropped them), and a kernel that describes its types (BTF).
pub fn privileged_with_btf() -> bool {
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let hex = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&hex, 16).ok()
        })
        .unwrap_or(0);
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    // CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
    (has(21) || (has(38) && has(39))) && Path::new(VMLINUX_BTF).exists()
}

/// Whether the tests must see the iterator load: in CI (env CI set) where
/// [`privileged_with_btf`]. Elsewhere they skip when it does not.
#[cfg(test)]
pub(super) fn must_load_here() -> bool {
    std::env::var_os("CI").is_some() && privileged_with_btf()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmlinux() -> Option<Vec<u8>> {
        match std::fs::read(VMLINUX_BTF) {
            Ok(data) => Some(data),
            Err(e) => {
                eprintln!("skipping: {VMLINUX_BTF} cannot be read here ({e})");
                None
            }
        }
    }

    #[test]
    fn finds_the_tcp_iterator_and_socket_fields_in_the_running_kernel() {
        let Some(data) = vmlinux() else { return };
        let target = parse_iter_target(&data).expect("the kernel's BTF parses");
        assert!(target.func_id > 0);
        let f = target.fields;
        // skc_num sits after skc_dport in one union with skc_portpair, and
        // family and state follow: distinct, in that order, and aligned.
        assert!(f.num < f.family && f.family < f.state, "{f:?}");
        assert_eq!(f.num % 2, 0);
        assert_eq!(f.family % 2, 0);
        assert_eq!(f.state, f.family + 2, "{f:?}");
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(parse_iter_target(b"").is_err());
        let e = parse_iter_target(&[0x9f, 0xeb, 1, 0, 24, 0, 0, 0]).unwrap_err();
        assert!(e.contains("header"), "{e}");
        let e = parse_iter_target(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0")
            .unwrap_err();
        assert!(e.contains("magic"), "{e}");
    }

    #[test]
    fn refuses_sections_past_the_end_and_unknown_kinds() {
        let mut header = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 1000, 0, 0] {
            header.extend_from_slice(&v.to_le_bytes());
        }
        let e = parse_iter_target(&header).unwrap_err();
        assert!(e.contains("type section runs past"), "{e}");

        // One type of kind 31: not one the format defines.
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 12, 12, 1] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u32, 31 << 24, 0] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        data.push(0);
        let e = parse_iter_target(&data).unwrap_err();
        assert!(e.contains("unknown BTF kind 31"), "{e}");
    }

    /// A BTF blob holding `struct sock_common` laid out as Linux's (the
    /// local port in an anonymous struct in an anonymous union, the state
    /// volatile, a typedef'd u16), built as the kernel writes BTF; the
    /// state member's raw offset word is `state_offset`.
    fn sock_common_btf(state_offset: u32) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut name = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let info = |kind: u32, vlen: u32, kind_flag: bool| {
            (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 }
        };
        let types: Vec<Vec<u32>> = vec![
            // 1: unsigned short, 16 bits
            vec![name("unsigned short"), info(BTF_KIND_INT, 0, false), 2, 16],
            // 2: unsigned char, 8 bits
            vec![name("unsigned char"), info(BTF_KIND_INT, 0, false), 1, 8],
            // 3: volatile unsigned char
            vec![0, info(BTF_KIND_VOLATILE, 0, false), 2],
            // 4: typedef __u16
            vec![name("__u16"), info(BTF_KIND_TYPEDEF, 0, false), 1],
            // 5: struct { __u16 skc_dport; __u16 skc_num; } (kind_flag)
            vec![
                0,
                info(BTF_KIND_STRUCT, 2, true),
                4,
                name("skc_dport"),
                4,
                0,
                name("skc_num"),
                4,
                16,
            ],
            // 6: union { unsigned int skc_portpair; struct {...}; }
            vec![
                0,
                info(BTF_KIND_UNION, 2, false),
                4,
                name("skc_portpair"),
                7,
                0,
                0,
                5,
                0,
            ],
            // 7: unsigned int, 32 bits
            vec![name("unsigned int"), info(BTF_KIND_INT, 0, false), 4, 32],
            // 8: struct sock_common { ... at 12; family at 16; state at 18 }
            vec![
                name("sock_common"),
                info(BTF_KIND_STRUCT, 3, true),
                24,
                0,
                6,
                96,
                name("skc_family"),
                1,
                128,
                name("skc_state"),
                3,
                state_offset,
            ],
            // 9: a function prototype with no parameters
            vec![0, info(BTF_KIND_FUNC_PROTO, 0, false), 0],
            // 10: the iterator function
            vec![name(ITER_FUNC), info(BTF_KIND_FUNC, 1, false), 9],
        ];
        btf_blob(&types, &strings)
    }

    #[test]
    fn walks_anonymous_members_and_resolves_typedefs_and_qualifiers() {
        let target = parse_iter_target(&sock_common_btf(144)).unwrap();
        assert_eq!(target.func_id, 10);
        assert_eq!(
            target.fields,
            SockFields {
                family: 16,
                state: 18,
                num: 14,
            }
        );
    }

    #[test]
    fn refuses_a_field_that_became_a_bitfield() {
        // Under kind_flag the top byte is the bitfield's width: 4 bits.
        let e = parse_iter_target(&sock_common_btf((4 << 24) | 144)).unwrap_err();
        assert!(e.contains("skc_state is a bitfield"), "{e}");
        // A state that is not at a whole byte.
        let e = parse_iter_target(&sock_common_btf(145)).unwrap_err();
        assert!(e.contains("bitfield"), "{e}");
        // A state past the end of the 24-byte struct.
        let e = parse_iter_target(&sock_common_btf(24 * 8)).unwrap_err();
        assert!(e.contains("outside the struct"), "{e}");
    }

    #[test]
    fn a_truncated_kernel_btf_is_refused_not_misread() {
        let Some(data) = vmlinux() else { return };
        let e = parse_iter_target(&data[..data.len() / 2]).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r0 = 0; exit
        assert_eq!(Insn::mov_imm(R0, 0).to_bytes(), [0xb7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Insn::exit().to_bytes(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        // r6 = *(u64 *)(r1 + 8)
        assert_eq!(
            Insn::load(BPF_DW, R6, R1, 8).to_bytes(),
            [0x79, 0x16, 8, 0, 0, 0, 0, 0]
        );
        // r2 = *(u16 *)(r6 + 16); r3 = *(u8 *)(r6 + 18)
        assert_eq!(
            Insn::load(BPF_H, R2, R6, 16).to_bytes(),
            [0x69, 0x62, 16, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::load(BPF_B, R3, R6, 18).to_bytes(),
            [0x71, 0x63, 18, 0, 0, 0, 0, 0]
        );
        // *(u32 *)(r9 + 0) = r0
        assert_eq!(
            Insn::store(BPF_W, R9, 0, R0).to_bytes(),
            [0x63, 0x09, 0, 0, 0, 0, 0, 0]
        );
        // r4 &= 0xffff; r4 <<= 2; r7 += r5; r0 += 1
        assert_eq!(
            Insn::and_imm(R4, 0xffff).to_bytes(),
            [0x57, 0x04, 0, 0, 0xff, 0xff, 0, 0]
        );
        assert_eq!(
            Insn::lsh_imm(R4, 2).to_bytes(),
            [0x67, 0x04, 0, 0, 2, 0, 0, 0]
        );
        assert_eq!(
            Insn::add_reg(R7, R5).to_bytes(),
            [0x0f, 0x57, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(Insn::add_imm(R0, 1).to_bytes(), [0x07, 0, 0, 0, 1, 0, 0, 0]);
        // r8 = map_value(fd 5) + 0: ld_imm64 with src_reg 2.
        let [lo, hi] = Insn::map_value(R8, 5, 0);
        assert_eq!(lo.to_bytes(), [0x18, 0x28, 0, 0, 5, 0, 0, 0]);
        assert_eq!(hi.to_bytes(), [0; 8]);
        // r1 = map(fd 6): ld_imm64 with src_reg 1.
        let [lo, hi] = Insn::map_fd(R1, 6);
        assert_eq!(lo.to_bytes(), [0x18, 0x11, 0, 0, 6, 0, 0, 0]);
        assert_eq!(hi.to_bytes(), [0; 8]);
        // call bpf_map_lookup_elem
        assert_eq!(Insn::call(1).to_bytes(), [0x85, 0, 0, 0, 1, 0, 0, 0]);
        // r7 >>= 3; r5 <<= r2; r9 |= r5; r9 &= r5
        assert_eq!(
            Insn::rsh_imm(R7, 3).to_bytes(),
            [0x77, 0x07, 0, 0, 3, 0, 0, 0]
        );
        assert_eq!(
            Insn::lsh_reg(R5, R2).to_bytes(),
            [0x6f, 0x25, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::or_reg(R9, R5).to_bytes(),
            [0x4f, 0x59, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Insn::and_reg(R9, R5).to_bytes(),
            [0x5f, 0x59, 0, 0, 0, 0, 0, 0]
        );
        // *(u32 *)(r10 - 4) = r4
        assert_eq!(
            Insn::store(BPF_W, R10, -4, R4).to_bytes(),
            [0x63, 0x4a, 0xfc, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn jumps_land_on_their_labels() {
        let fields = SockFields {
            family: 16,
            state: 18,
            num: 14,
        };
        let prog = counting_program(fields, 7, 8).unwrap();
        let exit_at = prog.len() - 2;
        assert_eq!(prog[exit_at], Insn::mov_imm(R0, 0));
        assert_eq!(prog[exit_at + 1], Insn::exit());
        // Every conditional jump's target is inside the program, and the
        // NULL check and the family check go to the shared exit.
        for (i, insn) in prog.iter().enumerate() {
            if insn.code & 0x07 == BPF_JMP && !matches!(insn.code & 0xf0, BPF_EXIT | BPF_CALL) {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..prog.len() as i64).contains(&target), "jump at {i}");
            }
        }
        assert_eq!(prog[1].code, BPF_JMP | BPF_JEQ | BPF_K);
        assert_eq!(1 + 1 + i64::from(prog[1].off), exit_at as i64);
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let log = b"0: (79) r6 = *(u64 *)(r1 +8)\n\nR6 invalid mem access 'scalar'\nprocessed 2 insns\n\0garbage";
        assert_eq!(
            log_tail(log),
            "0: (79) r6 = *(u64 *)(r1 +8) | R6 invalid mem access 'scalar' | processed 2 insns"
        );
    }

    /// The loaded iterator, or None (with a note) where it cannot load.
    fn loaded() -> Option<BpfSocketCounter> {
        match BpfSocketCounter::load() {
            Ok(c) => Some(c),
            Err(e) if !must_load_here() => {
                eprintln!("skipping: the BPF iterator cannot load here ({e})");
                None
            }
            Err(e) => panic!("the BPF iterator does not load: {e}"),
        }
    }

    #[test]
    fn counts_a_listener_and_its_connection() {
        let Some(mut counter) = loaded() else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = usize::from(listener.local_addr().unwrap().port());
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let counts = counter.count().unwrap();
        let on = |port: usize| {
            counts
                .listeners()
                .iter()
                .find(|&&(p, _)| usize::from(p) == port)
                .map(|&(_, n)| n)
        };
        assert_eq!(on(port), Some(1));
        // The client's end is ESTABLISHED on a port nothing listens on.
        let client_port = usize::from(client.local_addr().unwrap().port());
        assert_eq!(on(client_port), None);
        assert!(counts.states(0)[1] >= 2);
        assert!(counts.states(0)[10] >= 1);
        assert!(counts.listeners().is_sorted_by_key(|&(p, _)| p));
        drop((client, server));
    }

    #[test]
    fn a_pass_leaves_the_established_map_zeroed_and_carries_nothing_over() {
        let Some(mut counter) = loaded() else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let mut keep = Vec::new();
        for _ in 0..3 {
            let client = std::net::TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            keep.push((client, server));
        }
        let first = counter.count().unwrap();
        let first_listeners = first.listeners().to_vec();
        assert!(
            first_listeners.contains(&(port, 3)),
            "{port} in {first_listeners:?}"
        );
        for &(p, _) in &first_listeners {
            assert_eq!(counter.established_entry(p).unwrap(), 0, "port {p}");
        }
        // Sockets of other processes may come and go between passes, but
        // the test's own port counts the same 3 again (6 if the map had
        // kept the first pass's counts), and the listening ports' counts
        // together never exceed the ESTABLISHED sockets of this pass.
        let second = counter.count().unwrap();
        assert!(
            second.listeners().contains(&(port, 3)),
            "{port} in {:?}",
            second.listeners()
        );
        let established = second.states(0)[1] + second.states(1)[1];
        let on_listeners: u32 = second.listeners().iter().map(|&(_, n)| n).sum();
        assert!(
            on_listeners <= established,
            "{on_listeners} > {established}"
        );
        for &(p, _) in counter.listeners.iter() {
            assert_eq!(counter.established_entry(p).unwrap(), 0, "port {p}");
        }
        drop(keep);
    }
}
