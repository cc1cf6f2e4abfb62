//! Identifiers and small values, each its own type, parsed at the edge.
//!
//! Names that arrive from users ([`QueueName`], [`Kind`], [`SemaphoreName`],
//! [`UniqueKey`]) are validated once, in their constructors; past that point
//! the core never sees an invalid one. Counters ([`Epoch`], [`LeaseEpoch`],
//! [`LeaderTerm`]) only ever grow, and only through `next()`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What kind of name failed validation, so an error can say which input was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NameKind {
    /// A [`QueueName`].
    Queue,
    /// A job [`Kind`].
    Kind,
    /// A [`SemaphoreName`].
    Semaphore,
    /// A [`UniqueKey`].
    UniqueKey,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Queue => "queue name",
            NameKind::Kind => "job kind",
            NameKind::Semaphore => "semaphore name",
            NameKind::UniqueKey => "unique key",
        })
    }
}

/// A name that was refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidName {
    /// The name was empty.
    #[error("{what} must not be empty")]
    Empty {
        /// Which name.
        what: NameKind,
    },
    /// The name was longer than allowed.
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// Which name.
        what: NameKind,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name held a character outside its alphabet.
    #[error("{what} has {ch:?} at byte {at}; allowed are {allowed}")]
    BadChar {
        /// Which name.
        what: NameKind,
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
        /// The alphabet, for the message.
        allowed: &'static str,
    },
}

fn validate(
    what: NameKind,
    s: &str,
    max: usize,
    allowed: &'static str,
    ok: impl Fn(char) -> bool,
) -> Result<(), InvalidName> {
    if s.is_empty() {
        return Err(InvalidName::Empty { what });
    }
    if s.len() > max {
        return Err(InvalidName::TooLong {
            what,
            len: s.len(),
            max,
        });
    }
    match s.char_indices().find(|&(_, ch)| !ok(ch)) {
        Some((at, ch)) => Err(InvalidName::BadChar {
            what,
            ch,
            at,
            allowed,
        }),
        None => Ok(()),
    }
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $max:expr, $allowed:expr, $ok:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest name accepted, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `s`; see the type's docs for the rules.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidName> {
                let s = s.into();
                validate($kind, &s, $max, $allowed, $ok)?;
                Ok(Self(s))
            }

            /// The name as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidName;
            fn from_str(s: &str) -> Result<Self, InvalidName> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

fn lower_name_char(ch: char) -> bool {
    matches!(ch, 'a'..='z' | '0'..='9' | '_' | '.' | '-')
}

fn symbol_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-' | ':')
}

validated_name!(
    /// A queue: 1–64 characters of `[a-z0-9_.-]`.
    ///
    /// The alphabet is narrow on purpose: queue names appear in SQL values,
    /// NOTIFY channel payloads, metrics labels and log lines, and none of
    /// those should ever need quoting.
    QueueName,
    NameKind::Queue,
    64,
    "[a-z0-9_.-]",
    lower_name_char
);

validated_name!(
    /// A job kind (the name a handler is registered under): 1–128 characters
    /// of `[A-Za-z0-9_.:-]`.
    Kind,
    NameKind::Kind,
    128,
    "[A-Za-z0-9_.:-]",
    symbol_char
);

validated_name!(
    /// A cluster-wide semaphore: 1–128 characters of `[A-Za-z0-9_.:-]`, so a
    /// per-key limit such as `tenant:42` is a name of its own.
    SemaphoreName,
    NameKind::Semaphore,
    128,
    "[A-Za-z0-9_.:-]",
    symbol_char
);

validated_name!(
    /// A uniqueness key chosen by the caller: 1–512 bytes of printable text
    /// (no control characters; Postgres text cannot hold NUL).
    UniqueKey,
    NameKind::UniqueKey,
    512,
    "printable characters",
    |ch: char| !ch.is_control()
);

macro_rules! counter {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub $inner);

        impl $name {
            /// The value after this one.
            ///
            /// Panics on overflow: a counter that wraps would let an old
            /// value compare as new, which is the one thing fencing forbids.
            #[must_use]
            pub fn next(self) -> Self {
                // 2^63 bumps cannot happen in practice; reaching it is a bug.
                Self(self.0.checked_add(1).expect("counter overflow"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

counter!(
    /// A job's fencing counter: bumped by every claim, rescue, cancel and
    /// admin retry. A write is accepted only with the current epoch.
    Epoch(u64)
);
counter!(
    /// How many attempts a job has used (0 before its first claim).
    Attempt(u32)
);
counter!(
    /// A claimer slot's fencing counter: bumped on every change of owner.
    LeaseEpoch(u64)
);
counter!(
    /// A maintenance leader's term: bumped on every election of a new lease.
    LeaderTerm(u64)
);
counter!(
    /// A semaphore slot's fencing counter: bumped on every acquisition, so a
    /// release from an earlier holding is a no-op.
    SlotEpoch(u64)
);

/// A job's identity; positive, assigned by the backend in insertion order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub i64);

/// A job's priority: **lower values are claimed first**; the default is 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Priority(pub i16);

/// A worker process (one per running program), as the backend knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProcessId(pub u64);

/// One of a queue's K claimer slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClaimerSlot(pub u16);

/// One of a semaphore's N slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotIndex(pub u16);

/// The proof that one process runs one attempt of one job: the job and the
/// epoch its claim created. Every write about that attempt carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Receipt {
    /// The job.
    pub job: JobId,
    /// The epoch the claim created.
    pub epoch: Epoch,
}

macro_rules! display_inner {
    ($($name:ident),*) => {$(
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(JobId, Priority, ProcessId, ClaimerSlot, SlotIndex);

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {} epoch {}", self.job, self.epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_alphabet() {
        assert!(QueueName::new("default").is_ok());
        assert!(QueueName::new("a.b-c_9").is_ok());
        assert_eq!(
            QueueName::new(""),
            Err(InvalidName::Empty {
                what: NameKind::Queue
            })
        );
        assert!(matches!(
            QueueName::new("x".repeat(65)),
            Err(InvalidName::TooLong {
                len: 65,
                max: 64,
                ..
            })
        ));
        assert!(QueueName::new("x".repeat(64)).is_ok());
        assert!(matches!(
            QueueName::new("Default"),
            Err(InvalidName::BadChar { ch: 'D', at: 0, .. })
        ));
        assert!(matches!(
            QueueName::new("q'; drop table jobs; --"),
            Err(InvalidName::BadChar {
                ch: '\'',
                at: 1,
                ..
            })
        ));
        assert!(matches!(
            QueueName::new("ü"),
            Err(InvalidName::BadChar { ch: 'ü', .. })
        ));
    }

    #[test]
    fn other_names_have_their_own_rules() {
        assert!(Kind::new("email.Send:v2").is_ok());
        assert!(Kind::new("with space").is_err());
        assert!(SemaphoreName::new("tenant:42").is_ok());
        assert!(UniqueKey::new("order 42 / line 7").is_ok());
        assert!(UniqueKey::new("nul\0").is_err());
    }

    #[test]
    fn deserialising_validates_like_the_constructor() {
        let q: QueueName = serde_json::from_str("\"default\"").unwrap();
        assert_eq!(q.as_str(), "default");
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"default\"");
        let bad = serde_json::from_str::<QueueName>("\"BAD\"").unwrap_err();
        assert!(bad.to_string().contains("queue name has 'B'"), "{bad}");
    }

    #[test]
    fn counters_only_grow() {
        assert!(Epoch(3).next() > Epoch(3));
        assert_eq!(LeaderTerm(0).next(), LeaderTerm(1));
    }

    #[test]
    #[should_panic(expected = "counter overflow")]
    fn counter_overflow_is_a_bug() {
        let _ = Epoch(u64::MAX).next();
    }
}
