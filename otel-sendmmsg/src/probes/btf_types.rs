//! Struct layouts straight from raw BTF (the kernel's `/sys/kernel/btf/vmlinux`), reading only
//! what a member-offset lookup needs.
//!
//! The BTF crates parse every one of the kernel's ~100k types into owned Rust values first:
//! measured on a 5.5 MB vmlinux BTF, the `btf` crate peaks at 84 MiB, `btf-rs` at 51 MiB and
//! `btfparse` at 60 MiB, for a lookup of some twenty members. Here the file stays as bytes with an
//! index of where each type starts (4 bytes a type), and names are compared in place.
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst. A header, a type section of
//! variable-length records (type ids count from 1, in order), and a string section.

use std::ops::Range;

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// `struct btf_type`: name, info (vlen, kind, kind_flag), size or type.
const TYPE_HEADER: usize = 12;
/// `struct btf_member`: name, type, offset.
const MEMBER: usize = 12;

/// A struct or union member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    name_off: u32,
    pub type_id: u32,
    pub bit_offset: u32,
    /// 0 unless the member is a bitfield.
    pub bitfield_bits: u32,
}

/// The type section indexed by type id, over the file's bytes.
pub struct Types {
    data: Vec<u8>,
    /// Where each type's record starts in `data`; type id `i` is at `starts[i - 1]`.
    starts: Vec<u32>,
    strings: Range<usize>,
}

impl Types {
    /// Checks the header and indexes every type; Err says what is malformed.
    pub fn parse(data: Vec<u8>) -> Result<Types, String> {
        let u16_at = |at: usize| data.get(at..at + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        if u16_at(0) != Some(MAGIC) {
            return Err("not BTF of this machine's byte order (bad magic)".into());
        }
        let header = |at: usize| read_u32(&data, at).ok_or("truncated BTF header");
        let hdr_len = header(4)? as usize;
        let (type_off, type_len) = (header(8)? as usize, header(12)? as usize);
        let (str_off, str_len) = (header(16)? as usize, header(20)? as usize);
        let section = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off)?;
            let end = start.checked_add(len)?;
            (end <= data.len()).then_some(start..end)
        };
        let types = section(type_off, type_len).ok_or("the type section lies outside the file")?;
        let strings = section(str_off, str_len).ok_or("the string section lies outside the file")?;

        let mut starts = Vec::new();
        let mut at = types.start;
        while at < types.end {
            let info = read_u32(&data, at + 4).filter(|_| at + TYPE_HEADER <= types.end);
            let info = info.ok_or_else(|| format!("type {} is truncated", starts.len() + 1))?;
            let vlen = (info & 0xffff) as usize;
            let trailing = match kind(info) {
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                other => return Err(format!("type {} has kind {other}, unknown here", starts.len() + 1)),
            };
            starts.push(at as u32);
            at += TYPE_HEADER + trailing;
        }
        if at != types.end {
            return Err(format!("type {} runs past the type section", starts.len()));
        }
        Ok(Types { data, starts, strings })
    }

    /// The id of the struct named `name` (a complete one, not a forward declaration).
    pub fn struct_named(&self, name: &str) -> Option<u32> {
        (1..=self.starts.len() as u32).find(|&id| {
            self.info(id).map(kind) == Some(KIND_STRUCT) && self.name_of(id) == Some(name.as_bytes())
        })
    }

    /// The members of struct or union `id`, in order; empty for any other type.
    pub fn members(&self, id: u32) -> impl Iterator<Item = Member> + '_ {
        let info = self.info(id).filter(|&i| matches!(kind(i), KIND_STRUCT | KIND_UNION));
        let count = info.map_or(0, |i| (i & 0xffff) as usize);
        let kind_flag = info.is_some_and(|i| i >> 31 == 1);
        let first = self.start(id).map_or(0, |s| s + TYPE_HEADER);
        (0..count).filter_map(move |i| {
            let at = first + i * MEMBER;
            let (name_off, type_id, offset) =
                (read_u32(&self.data, at)?, read_u32(&self.data, at + 4)?, read_u32(&self.data, at + 8)?);
            // With kind_flag the offset packs a bitfield's size above its 24-bit bit offset.
            let (bit_offset, bitfield_bits) =
                if kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
            Some(Member { name_off, type_id, bit_offset, bitfield_bits })
        })
    }

    /// A member's name; empty for an anonymous struct or union member.
    pub fn member_name(&self, member: &Member) -> &[u8] {
        self.string(member.name_off).unwrap_or_default()
    }

    fn start(&self, id: u32) -> Option<usize> {
        self.starts.get((id as usize).checked_sub(1)?).map(|&s| s as usize)
    }

    fn info(&self, id: u32) -> Option<u32> {
        read_u32(&self.data, self.start(id)? + 4)
    }

    fn name_of(&self, id: u32) -> Option<&[u8]> {
        self.string(read_u32(&self.data, self.start(id)?)?)
    }

    /// The NUL-terminated string at `offset` in the string section.
    fn string(&self, offset: u32) -> Option<&[u8]> {
        let strings = self.data.get(self.strings.clone())?;
        strings.get(offset as usize..)?.split(|&b| b == 0).next()
    }
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Types({} types, {} bytes)", self.starts.len(), self.data.len())
    }
}

fn kind(info: u32) -> u32 {
    (info >> 24) & 0x1f
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at.checked_add(4)?).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `types` as (name, info, size/type, trailing words), strings interned.
    fn btf(types: &[(&str, u32, u32, Vec<u32>)], extra_strings: &[&str]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            off
        };
        let mut type_bytes = Vec::new();
        for (name, info, size, trailing) in types {
            for word in [intern(name), *info, *size].iter().chain(trailing) {
                type_bytes.extend_from_slice(&word.to_ne_bytes());
            }
        }
        // Member names are interned by the caller through `extra_strings`, in order.
        for s in extra_strings {
            intern(s);
        }
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_ne_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [24, 0, type_bytes.len() as u32, type_bytes.len() as u32, strings.len() as u32] {
            data.extend_from_slice(&word.to_ne_bytes());
        }
        data.extend_from_slice(&type_bytes);
        data.extend_from_slice(&strings);
        data
    }

    fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
        (u32::from(kind_flag) << 31) | (kind << 24) | vlen
    }

    #[test]
    fn members_come_with_offsets_bitfields_and_anonymous_ones() {
        // Strings: "\0int\0sock\0sock\0" then the member names appended after the type names.
        // Type names interned first: int at 1, sock at 5, (FWD) sock at 10; members after.
        let member_names_start = 1 + 4 + 5 + 5;
        let name = |i: u32| member_names_start + [0, 7, 13][i as usize]; // "family\0", "proto\0", "flags\0"
        let types = [
            // 1: int (4 bytes), with its encoding word.
            ("int", info(KIND_INT, 0, false), 4, vec![32]),
            // 2: struct sock { int family; <anonymous union 3> @32; int proto:8 @64 } (kind_flag).
            (
                "sock",
                info(KIND_STRUCT, 3, true),
                16,
                vec![name(0), 1, 0, 0, 3, 32, name(1), 1, (8 << 24) | 64],
            ),
            // 3: a forward declaration of another sock: never the struct found by name.
            ("sock", info(KIND_FWD, 0, false), 0, vec![]),
            // 4: union { int flags; } (anonymous; no kind_flag).
            ("", info(KIND_UNION, 1, false), 4, vec![name(2), 1, 0]),
        ];
        let mut types = types.to_vec();
        // Member 1 of sock points at the union, which is type 4.
        types[1].3[4] = 4;
        let data = btf(&types, &["family", "proto", "flags"]);
        let t = Types::parse(data).unwrap();
        let sock = t.struct_named("sock").unwrap();
        assert_eq!(sock, 2);
        let members: Vec<(String, Member)> =
            t.members(sock).map(|m| (String::from_utf8_lossy(t.member_name(&m)).into_owned(), m)).collect();
        assert_eq!(members.len(), 3);
        assert_eq!(members[0].0, "family");
        assert_eq!((members[0].1.bit_offset, members[0].1.bitfield_bits), (0, 0));
        assert_eq!(members[1].0, "", "anonymous");
        assert_eq!((members[1].1.type_id, members[1].1.bit_offset), (4, 32));
        assert_eq!(members[2].0, "proto");
        assert_eq!((members[2].1.bit_offset, members[2].1.bitfield_bits), (64, 8));
        let union: Vec<Member> = t.members(4).collect();
        assert_eq!(t.member_name(&union[0]), b"flags");
        assert_eq!(t.members(1).count(), 0, "an int has no members");
        assert_eq!(t.struct_named("file"), None);
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        assert!(Types::parse(vec![]).unwrap_err().contains("magic"));
        assert!(Types::parse(b"\x9f\xeb".to_vec()).unwrap_err().contains("truncated"));
        let good = btf(&[("int", info(KIND_INT, 0, false), 4, vec![32])], &[]);
        let mut short = good.clone();
        short.truncate(good.len() - 8);
        assert!(Types::parse(short).unwrap_err().contains("outside the file"));
        // A struct claiming more members than the section holds.
        let lying = btf(&[("s", info(KIND_STRUCT, 5, false), 4, vec![0, 0, 0])], &[]);
        assert!(Types::parse(lying).unwrap_err().contains("runs past"));
        let unknown = btf(&[("x", info(31, 0, false), 0, vec![])], &[]);
        assert!(Types::parse(unknown).unwrap_err().contains("unknown"));
    }

    #[test]
    fn the_running_kernels_btf_indexes_completely() {
        let t = Types::parse(std::fs::read(super::super::offsets::VMLINUX_BTF).unwrap()).unwrap();
        assert!(t.starts.len() > 10_000, "{} types", t.starts.len());
        let sock = t.struct_named("sock_common").expect("struct sock_common");
        assert!(t.members(sock).any(|m| t.member_name(&m) == b"skc_family"));
    }
}
