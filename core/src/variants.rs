//! The variants of a serde enum, read mechanically: for tests that must
//! prove every [`Command`](crate::Command) was produced or executed.
//!
//! A hand-written list of variants is the list that goes stale: the guard
//! it feeds passes while the enum it describes has grown. Serde already
//! knows every variant, so this module asks it:
//!
//! * [`all`] hands a probe [`Deserializer`] to `T::deserialize`. A derived
//!   `Deserialize` of an externally tagged enum calls `deserialize_enum`
//!   with the names of all its variants, in declaration order; the probe
//!   returns them (as an error, so nothing is ever built).
//! * [`of`] hands a probe [`Serializer`] to `value.serialize`. A derived
//!   `Serialize` begins with `serialize_*_variant(.., variant, ..)`; the
//!   probe stops there with that name, so no field is serialised.
//! * [`Tally`] counts what a run produced and names what it never did.
//!
//! Hidden from the documentation: a test helper, not part of the protocol.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{self, Impossible, Serialize, Serializer};

/// Every variant of the enum `T`, in declaration order.
///
/// # Panics
///
/// When `T` does not deserialise as an externally tagged enum (a struct,
/// or an enum with `#[serde(tag = ..)]` or `#[serde(untagged)]`): then
/// serde does not announce its variants, and the caller's guard would be
/// meaningless.
pub fn all<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    match T::deserialize(VariantsProbe) {
        Err(Probe::Variants(variants)) => variants,
        Err(Probe::Variant(_)) => unreachable!("deserialising never names one variant"),
        Err(Probe::NotAnEnum(why)) => panic!(
            "{} is not an externally tagged enum: {why}",
            std::any::type_name::<T>()
        ),
        Ok(_) => unreachable!("the probe never yields a value"),
    }
}

/// The name of `value`'s variant (`"CancelAttempts"` for a
/// `Command::CancelAttempts(_)`).
///
/// # Panics
///
/// When `value` does not serialise as an externally tagged enum variant.
pub fn of<T: Serialize + ?Sized>(value: &T) -> &'static str {
    match value.serialize(VariantOfProbe) {
        Err(Probe::Variant(variant)) => variant,
        Err(Probe::Variants(_)) => unreachable!("serialising never lists the variants"),
        Err(Probe::NotAnEnum(why)) => panic!(
            "{} is not an externally tagged enum: {why}",
            std::any::type_name::<T>()
        ),
        Ok(()) => unreachable!("the probe never completes"),
    }
}

/// How often each variant of an enum occurred in a run, with every variant
/// listed (unseen ones at zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    counts: BTreeMap<&'static str, u64>,
    order: &'static [&'static str],
}

impl Tally {
    /// A tally of `T`'s variants, all at zero.
    pub fn of<'de, T: Deserialize<'de>>() -> Tally {
        let order = all::<T>();
        Tally {
            counts: order.iter().map(|&v| (v, 0)).collect(),
            order,
        }
    }

    /// Counts `value`'s variant.
    ///
    /// # Panics
    ///
    /// When `value` is not a variant of this tally's enum.
    pub fn record<T: Serialize + ?Sized>(&mut self, value: &T) {
        self.record_name(of(value));
    }

    /// Counts the variant named `variant` (as [`of`] names it).
    ///
    /// # Panics
    ///
    /// When no variant of this tally's enum has that name.
    pub fn record_name(&mut self, variant: &str) {
        *self
            .counts
            .get_mut(variant)
            .unwrap_or_else(|| panic!("{variant} is not one of {:?}", self.order)) += 1;
    }

    /// Adds another tally of the same enum.
    ///
    /// # Panics
    ///
    /// When `other` counts another enum's variants.
    pub fn merge(&mut self, other: &Tally) {
        assert_eq!(self.order, other.order, "tallies of different enums");
        for (variant, n) in &other.counts {
            *self.counts.entry(variant).or_default() += n;
        }
    }

    /// How often `variant` occurred.
    pub fn count(&self, variant: &str) -> u64 {
        self.counts.get(variant).copied().unwrap_or(0)
    }

    /// The variants that never occurred, in declaration order.
    pub fn missing(&self) -> Vec<&'static str> {
        self.order
            .iter()
            .copied()
            .filter(|v| self.counts[v] == 0)
            .collect()
    }

    /// `Ok` when every variant occurred; otherwise a message that says
    /// what never did, under `what` (`"the differential generator never
    /// produced"`), followed by every count.
    pub fn complete(&self, what: &str) -> Result<(), String> {
        let missing = self.missing();
        if missing.is_empty() {
            return Ok(());
        }
        Err(format!("{what}: {}\n(counts: {self})", missing.join(", ")))
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, variant) in self.order.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{variant} {}", self.counts[variant])?;
        }
        Ok(())
    }
}

/// What a probe stops with: the names it was looking for, or why the type
/// is not an enum it can read.
#[derive(Debug)]
enum Probe {
    /// Every variant, from `deserialize_enum`.
    Variants(&'static [&'static str]),
    /// One value's variant, from `serialize_*_variant`.
    Variant(&'static str),
    /// Serde was asked for something other than an enum.
    NotAnEnum(String),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Variants(names) => write!(f, "the variants are {names:?}"),
            Probe::Variant(name) => write!(f, "the variant is {name}"),
            Probe::NotAnEnum(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<M: fmt::Display>(msg: M) -> Probe {
        Probe::NotAnEnum(msg.to_string())
    }
}

impl ser::Error for Probe {
    fn custom<M: fmt::Display>(msg: M) -> Probe {
        Probe::NotAnEnum(msg.to_string())
    }
}

/// A [`Deserializer`] that answers `deserialize_enum` with the variants it
/// is given, and everything else with [`Probe::NotAnEnum`].
struct VariantsProbe;

impl<'de> Deserializer<'de> for VariantsProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe::NotAnEnum(
            "it asked for something other than an enum".into(),
        ))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Probe> {
        Err(Probe::Variants(variants))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

/// A [`Serializer`] that stops at the first `serialize_*_variant` with its
/// variant name, and refuses everything else with [`Probe::NotAnEnum`].
struct VariantOfProbe;

fn not_an_enum<T>(what: &str) -> Result<T, Probe> {
    Err(Probe::NotAnEnum(format!("it serialised as {what}")))
}

impl Serializer for VariantOfProbe {
    type Ok = ();
    type Error = Probe;
    type SerializeSeq = Impossible<(), Probe>;
    type SerializeTuple = Impossible<(), Probe>;
    type SerializeTupleStruct = Impossible<(), Probe>;
    type SerializeTupleVariant = Impossible<(), Probe>;
    type SerializeMap = Impossible<(), Probe>;
    type SerializeStruct = Impossible<(), Probe>;
    type SerializeStructVariant = Impossible<(), Probe>;

    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Probe> {
        Err(Probe::Variant(variant))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: &T,
    ) -> Result<(), Probe> {
        Err(Probe::Variant(variant))
    }

    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Probe> {
        Err(Probe::Variant(variant))
    }

    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Probe> {
        Err(Probe::Variant(variant))
    }

    fn serialize_bool(self, _: bool) -> Result<(), Probe> {
        not_an_enum("a bool")
    }
    fn serialize_i8(self, _: i8) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_i16(self, _: i16) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_i32(self, _: i32) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_i64(self, _: i64) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_u8(self, _: u8) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_u16(self, _: u16) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_u32(self, _: u32) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_u64(self, _: u64) -> Result<(), Probe> {
        not_an_enum("an integer")
    }
    fn serialize_f32(self, _: f32) -> Result<(), Probe> {
        not_an_enum("a float")
    }
    fn serialize_f64(self, _: f64) -> Result<(), Probe> {
        not_an_enum("a float")
    }
    fn serialize_char(self, _: char) -> Result<(), Probe> {
        not_an_enum("a char")
    }
    fn serialize_str(self, _: &str) -> Result<(), Probe> {
        not_an_enum("a string")
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), Probe> {
        not_an_enum("bytes")
    }
    fn serialize_none(self) -> Result<(), Probe> {
        not_an_enum("an option")
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), Probe> {
        not_an_enum("an option")
    }
    fn serialize_unit(self) -> Result<(), Probe> {
        not_an_enum("a unit")
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Probe> {
        not_an_enum("a unit struct")
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), Probe> {
        not_an_enum("a newtype struct")
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Probe> {
        not_an_enum("a sequence")
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Probe> {
        not_an_enum("a tuple")
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Probe> {
        not_an_enum("a tuple struct")
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Probe> {
        not_an_enum("a map")
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, Probe> {
        not_an_enum("a struct")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{cmd, Command, Outcome, ProcessId, QueueName};

    #[test]
    fn every_command_variant_is_listed_in_declaration_order() {
        let variants = all::<Command>();
        assert_eq!(variants.len(), 24);
        assert_eq!(variants[0], "Enqueue");
        assert_eq!(variants[6], "CancelAttempts");
        assert_eq!(variants.last(), Some(&"Prune"));
        assert_eq!(all::<Outcome>().len(), 23, "pause and resume share one");
    }

    #[test]
    fn a_values_variant_is_named_without_serialising_its_fields() {
        let queue = QueueName::new("q").unwrap();
        let command = Command::ClaimerAcquire(cmd::ClaimerAcquire {
            queue,
            process: ProcessId(1),
        });
        assert_eq!(of(&command), "ClaimerAcquire");
        assert_eq!(of(&Outcome::QueuePauseChanged(true)), "QueuePauseChanged");
        assert_eq!(of(&Outcome::SessionEnded(vec![])), "SessionEnded");
    }

    #[test]
    fn a_tally_names_what_never_occurred() {
        let mut tally = Tally::of::<Outcome>();
        tally.record(&Outcome::QueuePauseChanged(false));
        let mut more = Tally::of::<Outcome>();
        more.record(&Outcome::LeaderResigned(true));
        tally.merge(&more);
        assert_eq!(tally.count("QueuePauseChanged"), 1);
        assert_eq!(tally.count("LeaderResigned"), 1);
        let missing = tally.missing();
        assert_eq!(missing.len(), 21);
        assert!(!missing.contains(&"LeaderResigned"));
        let err = tally.complete("never answered").unwrap_err();
        assert!(
            err.starts_with("never answered: Enqueued, Claimed,"),
            "{err}"
        );
        assert!(err.contains("QueuePauseChanged 1"), "{err}");
    }

    #[test]
    #[should_panic(expected = "is not an externally tagged enum")]
    fn a_struct_is_not_an_enum() {
        all::<crate::Receipt>();
    }
}
