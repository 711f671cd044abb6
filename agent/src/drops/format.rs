//! The tracefs `format` file of a tracepoint: where each field sits in the raw record.
//!
//! Offsets moved between kernels (`rx_sk` was inserted before `protocol` in 6.11), so the
//! tracer reads them here instead of assuming one layout.

/// One field of the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// The fields of a tracepoint record by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TracepointFormat {
    fields: Vec<(String, Field)>,
}

impl TracepointFormat {
    /// Parses lines like
    /// `field:enum skb_drop_reason reason; offset:36; size:4; signed:0;`.
    /// Lines that are not fields (name, ID, print fmt) are skipped; a field line that does not
    /// parse is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let parse = || -> Option<(String, Field)> {
                let mut parts = rest.split(';').map(str::trim);
                let decl = parts.next()?;
                // The name is the declaration's last word, without an array suffix.
                let name = decl.rsplit([' ', '*']).next()?;
                let name = name.split('[').next()?.to_string();
                let mut offset = None;
                let mut size = None;
                for part in parts {
                    if let Some(v) = part.strip_prefix("offset:") {
                        offset = v.parse().ok();
                    } else if let Some(v) = part.strip_prefix("size:") {
                        size = v.parse().ok();
                    }
                }
                Some((
                    name,
                    Field {
                        offset: offset?,
                        size: size?,
                    },
                ))
            };
            fields.push(parse().ok_or_else(|| format!("cannot parse line {line:?}"))?);
        }
        Ok(Self { fields })
    }

    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.iter().find(|(n, _)| n == name).map(|(_, f)| *f)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `skb:kfree_skb` on 5.10: no rx_sk, no reason.
    pub(crate) const FORMAT_5_10: &str = "name: kfree_skb
ID: 1337
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:24;\tsize:2;\tsigned:0;

print fmt: \"skbaddr=%p protocol=%u location=%p\", REC->skbaddr, REC->protocol, REC->location
";

    /// `skb:kfree_skb` on 6.18 (docs/ebpf.md, "The skb:kfree_skb tracepoint").
    const FORMAT_6_18: &str = "name: kfree_skb
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;
\tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;
\tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;
\tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;
\tfield:char name[16];\toffset:40;\tsize:16;\tsigned:0;
";

    #[test]
    fn reads_offsets_of_both_layouts() {
        let old = TracepointFormat::parse(FORMAT_5_10).unwrap();
        assert_eq!(
            old.field("protocol"),
            Some(Field {
                offset: 24,
                size: 2
            })
        );
        assert_eq!(old.field("reason"), None);
        let new = TracepointFormat::parse(FORMAT_6_18).unwrap();
        assert_eq!(
            new.field("protocol"),
            Some(Field {
                offset: 32,
                size: 2
            })
        );
        assert_eq!(
            new.field("reason"),
            Some(Field {
                offset: 36,
                size: 4
            })
        );
        assert_eq!(new.field("skbaddr"), Some(Field { offset: 8, size: 8 }));
        assert_eq!(
            new.field("name"),
            Some(Field {
                offset: 40,
                size: 16
            })
        );
    }

    #[test]
    fn a_malformed_field_line_is_named() {
        let e = TracepointFormat::parse("\tfield:int x;\toffset:;\tsize:4;").unwrap_err();
        assert!(e.contains("field:int x"), "{e}");
    }
}
