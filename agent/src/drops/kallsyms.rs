//! Names of kernel addresses (`nft_do_chain+0x1a4`), from `/proc/kallsyms`, for drop locations.
//!
//! Resolved lazily and cached: a round has a handful of distinct drop locations, while the
//! symbol table has ~200,000 lines that are not worth keeping in memory.

use std::{
    collections::{BTreeSet, HashMap},
    io::{BufRead, BufReader},
};

/// A cache of resolved locations.
#[derive(Debug, Default)]
pub struct Symbols {
    names: HashMap<u64, String>,
}

impl Symbols {
    /// The names of `addrs`, resolving the ones not cached with one pass over
    /// `/proc/kallsyms`. Addresses that cannot be named (kallsyms unreadable, or hidden by
    /// kptr_restrict without CAP_SYSLOG: all zeros) are given in hex.
    pub fn resolve(&mut self, addrs: impl IntoIterator<Item = u64>) -> HashMap<u64, String> {
        // Distinct addresses only: a round's thousand drops usually share one location.
        let wanted: BTreeSet<u64> = addrs.into_iter().collect();
        let missing: Vec<u64> = wanted
            .iter()
            .copied()
            .filter(|a| !self.names.contains_key(a))
            .collect();
        if !missing.is_empty() {
            let found = std::fs::File::open("/proc/kallsyms")
                .map(|f| nearest_symbols(BufReader::new(f), &missing))
                .unwrap_or_default();
            for a in missing {
                let name = found.get(&a).cloned().unwrap_or_else(|| format!("{a:#x}"));
                self.names.insert(a, name);
            }
        }
        wanted
            .into_iter()
            .map(|a| (a, self.names[&a].clone()))
            .collect()
    }
}

/// For each address, the closest text symbol at or below it, as `name+0xoff`.
pub fn nearest_symbols(reader: impl BufRead, addrs: &[u64]) -> HashMap<u64, String> {
    let mut best: HashMap<u64, (u64, String)> = HashMap::new();
    for line in reader.lines().map_while(Result::ok) {
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(start) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if start == 0 {
            continue;
        }
        for &a in addrs {
            if start <= a && best.get(&a).is_none_or(|(s, _)| start > *s) {
                best.insert(a, (start, name.to_string()));
            }
        }
    }
    best.into_iter()
        .map(|(a, (start, name))| (a, format!("{name}+{:#x}", a - start)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_closest_text_symbol_below() {
        let table = "ffffffff81000000 T _stext\n\
                     ffffffff81200000 t nft_do_chain\t[nf_tables]\n\
                     ffffffff81200100 D some_data\n\
                     ffffffff81300000 T ping_rcv\n\
                     garbage line\n";
        let got = nearest_symbols(
            table.as_bytes(),
            &[0xffffffff812001a4, 0xffffffff81300000, 1],
        );
        assert_eq!(got[&0xffffffff812001a4], "nft_do_chain+0x1a4");
        assert_eq!(got[&0xffffffff81300000], "ping_rcv+0x0");
        assert!(!got.contains_key(&1));
    }

    #[test]
    fn hidden_addresses_name_nothing() {
        let table = "0000000000000000 T _stext\n0000000000000000 t nft_do_chain\n";
        assert!(nearest_symbols(table.as_bytes(), &[0xffffffff812001a4]).is_empty());
        let mut s = Symbols::default();
        // Unnamed addresses fall back to hex (address 1 is below every real symbol).
        assert_eq!(s.resolve([1])[&1], "0x1");
    }
}
