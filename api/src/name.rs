//! [`Name`]: a node, interface or network name as plans and round reports repeat it.

use std::{borrow::Borrow, collections::HashSet, fmt, ops::Deref, sync::Arc};

use serde::{Deserialize, Serialize};

/// A name a round repeats on many pair-paths (its source and destination nodes, interfaces and
/// network), shared rather than copied: a 128-node mesh names 65,024 paths' ends with a few
/// hundred names, and a `String` each cost a heap allocation and ~30 bytes per name and path.
/// Cloning it counts a reference; on the wire it is a plain string.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Name(Arc<str>);

impl Name {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One shared [`Name`] per distinct string, for whoever builds many paths from few names.
#[derive(Debug, Default)]
pub struct Names(HashSet<Name>);

impl Names {
    pub fn get(&mut self, s: &str) -> Name {
        if let Some(n) = self.0.get(s) {
            return n.clone();
        }
        let n = Name::from(s);
        self.0.insert(n.clone());
        n
    }
}

impl Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Self {
        Self(s.into())
    }
}

impl From<String> for Name {
    fn from(s: String) -> Self {
        Self(s.into())
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Self {
        Self(s.as_str().into())
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_a_plain_string_on_the_wire_and_shared_when_cloned() {
        let n = Name::from("node-1");
        assert_eq!(serde_json::to_string(&n).unwrap(), r#""node-1""#);
        assert_eq!(serde_json::from_str::<Name>(r#""node-1""#).unwrap(), n);
        let m = n.clone();
        assert!(std::ptr::eq(n.as_ptr(), m.as_ptr()));
        let owned = String::from("node-1");
        assert_eq!(n, "node-1");
        assert_eq!("node-1", n);
        assert_eq!(n, owned);
        assert_eq!(owned, n);
        let mut names = Names::default();
        assert!(std::ptr::eq(
            names.get("eth0").as_ptr(),
            names.get("eth0").as_ptr()
        ));
    }
}
