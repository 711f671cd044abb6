//! Just enough of a BTF reader to find struct member offsets and enum values in the running
//! kernel's type information (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF has no CO-RE relocations, so the drop tracer reads kernel structs at offsets the
//! agent resolves here at start-up (docs/ebpf.md, "Drop reasons and struct offsets from BTF").
//! aya parses BTF too, but keeps its type queries private.

use std::{borrow::Cow, path::Path};

use super::DropError;

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Parsed BTF: the raw bytes plus where each type record starts (type id 1 is index 0).
pub struct Btf {
    data: Vec<u8>,
    types: Vec<usize>,
    strings: usize,
    strings_len: usize,
}

/// One type record's fixed part.
#[derive(Clone, Copy)]
struct Type {
    at: usize,
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type id for PTR/TYPEDEF/CONST/...
    size_or_type: u32,
}

/// A struct member found by [`Btf::member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Size in bytes of the member's (resolved) type.
    pub size: u32,
}

impl Btf {
    /// Reads the kernel's own BTF.
    pub fn from_sys_fs() -> Result<Self, DropError> {
        Self::from_file(Path::new("/sys/kernel/btf/vmlinux"))
    }

    pub fn from_file(path: &Path) -> Result<Self, DropError> {
        let data = std::fs::read(path).map_err(|source| DropError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(data).map_err(|why| DropError::Btf(format!("{}: {why}", path.display())))
    }

    /// Indexes a little- or native-endian BTF blob (the kernel's is native).
    pub fn parse(data: Vec<u8>) -> Result<Self, String> {
        let u32_at = |at: usize| -> Result<u32, String> {
            data.get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| format!("truncated at byte {at}"))
        };
        if data.len() < HEADER_LEN || u16::from_ne_bytes([data[0], data[1]]) != MAGIC {
            return Err("not BTF (bad magic)".into());
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = hdr_len + str_off;
        if strings + str_len > data.len() {
            return Err("string section past the end".into());
        }
        let (start, end) = (hdr_len + type_off, hdr_len + type_off + type_len);
        if end > data.len() {
            return Err("type section past the end".into());
        }
        let mut types = Vec::new();
        let mut at = start;
        while at < end {
            types.push(at);
            let info = u32_at(at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                0..=19 => 0,
                other => return Err(format!("unknown BTF kind {other} at byte {at}")),
            };
            at += 12 + extra;
        }
        if at != end {
            return Err("type section does not end on a type boundary".into());
        }
        Ok(Self {
            data,
            types,
            strings,
            strings_len: str_len,
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        // Every record was bounds-checked by `parse`.
        let b = &self.data[at..at + 4];
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
    }

    fn ty(&self, id: u32) -> Option<Type> {
        let at = *self.types.get((id as usize).checked_sub(1)?)?;
        let info = self.u32_at(at + 4);
        Some(Type {
            at,
            name_off: self.u32_at(at),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: self.u32_at(at + 8),
        })
    }

    fn name(&self, off: u32) -> Cow<'_, str> {
        let end = self.strings + self.strings_len;
        let start = (self.strings + off as usize).min(end);
        let table = &self.data[start..end];
        let end = table.iter().position(|&b| b == 0).unwrap_or(table.len());
        String::from_utf8_lossy(&table[..end])
    }

    /// The id of the first type of one of `kinds` named `name` that has a body (not a forward
    /// declaration, not an empty enum).
    fn find(&self, name: &str, kinds: &[u32]) -> Option<u32> {
        (1..=self.types.len() as u32).find(|&id| {
            self.ty(id).is_some_and(|t| {
                kinds.contains(&t.kind) && t.vlen > 0 && self.name(t.name_off) == name
            })
        })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn size_of(&self, t: Type) -> Option<u32> {
        match t.kind {
            KIND_PTR => Some(size_of::<usize>() as u32),
            KIND_ARRAY => {
                let elem = self.u32_at(t.at + 12);
                let n = self.u32_at(t.at + 20);
                self.size_of(self.resolve(elem)?)?.checked_mul(n)
            }
            _ => Some(t.size_or_type),
        }
    }

    /// Members of a struct or union: (name offset, type id, byte offset). Bitfields are
    /// skipped: nothing the tracer reads is one.
    fn members(&self, t: Type) -> impl Iterator<Item = (u32, u32, Option<u32>)> + '_ {
        (0..t.vlen).map(move |i| {
            let at = t.at + 12 + 12 * i;
            let raw = self.u32_at(at + 8);
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0x00ff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            let offset = (!bitfield && bits % 8 == 0).then_some(bits / 8);
            (self.u32_at(at), self.u32_at(at + 4), offset)
        })
    }

    /// Finds `name` among the members of `t`, looking inside anonymous structs and unions
    /// (`struct sk_buff` keeps `dev` in one), and returns its offset and type id.
    fn find_member(&self, t: Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for (name_off, ty, offset) in self.members(t) {
            if name_off != 0 && self.name(name_off) == name {
                return offset.map(|o| (o, ty));
            }
            if name_off == 0 {
                let inner = self.resolve(ty)?;
                if let Some((o, found)) = self.find_member(inner, name, depth + 1) {
                    return Some((offset? + o, found));
                }
            }
        }
        None
    }

    /// The offset and size of `path` (dot-separated, e.g. `"nd_net.net"`) inside `struct
    /// strukt`.
    pub fn member(&self, strukt: &str, path: &str) -> Result<Member, DropError> {
        let missing = |what: String| DropError::Btf(format!("kernel BTF has no {what}"));
        let id = self
            .find(strukt, &[KIND_STRUCT])
            .ok_or_else(|| missing(format!("struct {strukt}")))?;
        let mut t = self
            .ty(id)
            .ok_or_else(|| missing(format!("struct {strukt}")))?;
        let mut offset = 0;
        for part in path.split('.') {
            let (o, ty) = self
                .find_member(t, part, 0)
                .ok_or_else(|| missing(format!("member {strukt}.{path}")))?;
            offset += o;
            t = self
                .resolve(ty)
                .ok_or_else(|| missing(format!("type of {strukt}.{path}")))?;
        }
        let size = self
            .size_of(t)
            .ok_or_else(|| missing(format!("size of {strukt}.{path}")))?;
        Ok(Member { offset, size })
    }

    /// The variants of `enum name` as (name, value).
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, DropError> {
        let t = self
            .find(name, &[KIND_ENUM, KIND_ENUM64])
            .and_then(|id| self.ty(id))
            .ok_or_else(|| DropError::Btf(format!("kernel BTF has no enum {name}")))?;
        Ok((0..t.vlen)
            .map(|i| {
                let value = if t.kind == KIND_ENUM {
                    let at = t.at + 12 + 8 * i;
                    (
                        self.name(self.u32_at(at)),
                        i64::from(self.u32_at(at + 4) as i32),
                    )
                } else {
                    let at = t.at + 12 + 12 * i;
                    let v = u64::from(self.u32_at(at + 4)) | u64::from(self.u32_at(at + 8)) << 32;
                    (self.name(self.u32_at(at)), v as i64)
                };
                (value.0.into_owned(), value.1)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob with: 1 `int` (4 bytes), 2 `int *`, 3 `struct inner { int a; int *p; }`
    /// (16 bytes), 4 `struct outer { int x; union { struct inner in; int y; }; }` with the
    /// anonymous union as type 5, 6 a typedef `inner_t` of 3, 7 `enum e { A = 2, B = -1 }`.
    fn mk_btf() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0p\0outer\0x\0in\0y\0inner_t\0e\0A\0B\0";
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let info = |kind: u32, vlen: u32| kind << 24 | vlen;
        let mut types: Vec<u32> = vec![];
        types.extend([s("int"), info(KIND_INT, 0), 4, 32]);
        types.extend([0, info(KIND_PTR, 0), 1]);
        types.extend([s("inner"), info(KIND_STRUCT, 2), 16]);
        types.extend([s("a"), 1, 0, s("p"), 2, 64]);
        types.extend([s("outer"), info(KIND_STRUCT, 2), 24]);
        types.extend([s("x"), 1, 0, 0, 5, 64]);
        types.extend([0, info(KIND_UNION, 2), 16]);
        types.extend([s("in"), 6, 0, s("y"), 1, 0]);
        types.extend([s("inner_t"), info(KIND_TYPEDEF, 0), 3]);
        types.extend([s("e"), info(KIND_ENUM, 2), 4]);
        types.extend([s("A"), 2, s("B"), u32::MAX]);
        let type_bytes: Vec<u8> = types.iter().flat_map(|v| v.to_ne_bytes()).collect();
        let mut out = vec![];
        out.extend(MAGIC.to_ne_bytes());
        out.extend([1u8, 0]);
        for v in [
            HEADER_LEN as u32,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            out.extend(v.to_ne_bytes());
        }
        out.extend(type_bytes);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let btf = Btf::parse(mk_btf()).unwrap();
        assert_eq!(
            btf.member("outer", "x").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "in.p").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
        assert_eq!(
            btf.member("outer", "y").unwrap(),
            Member { offset: 8, size: 4 }
        );
        let e = btf.member("outer", "in.nope").unwrap_err().to_string();
        assert!(e.contains("member outer.in.nope"), "{e}");
        assert!(btf.member("nope", "x").is_err());
        assert_eq!(
            btf.enum_values("e").unwrap(),
            vec![("A".to_string(), 2), ("B".to_string(), -1)]
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(Btf::parse(vec![]).is_err());
        assert!(Btf::parse(vec![0; 64]).is_err());
        let mut truncated = mk_btf();
        truncated.truncate(40);
        assert!(Btf::parse(truncated).is_err());
        let mut bad_kind = mk_btf();
        bad_kind[HEADER_LEN + 7] = 30;
        assert!(Btf::parse(bad_kind).is_err());
    }

    #[test]
    fn resolves_the_running_kernels_skb_layout() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let head = btf.member("sk_buff", "head").unwrap();
        let nh = btf.member("sk_buff", "network_header").unwrap();
        let dev = btf.member("sk_buff", "dev").unwrap();
        assert_eq!((head.size, nh.size, dev.size), (8, 2, 8));
        assert!(btf.member("net_device", "ifindex").unwrap().size == 4);
        assert_eq!(btf.member("net", "ns.inum").unwrap().size, 4);
        let reasons = btf.enum_values("skb_drop_reason").unwrap();
        assert!(
            reasons
                .iter()
                .any(|(n, _)| n == "SKB_DROP_REASON_NETFILTER_DROP")
        );
    }
}
