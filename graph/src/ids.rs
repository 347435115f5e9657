//! Typed indices into a graph's side tables (Cranelift-style entity ids):
//! cheap to copy, impossible to mix up, and iteration order is deterministic.

use std::fmt;

macro_rules! entity_id {
    ($name:ident, $prefix:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);

        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
            pub fn from_index(i: usize) -> Self {
                Self(u32::try_from(i).expect("entity index fits in u32"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

entity_id!(NodeId, "%");
entity_id!(ParamId, "$");
entity_id!(SiteId, "site");
