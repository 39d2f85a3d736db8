//! Value types of request fields that need more than serde's defaults: numbers checked against `f32`,
//! counts, seeds, `stop` as a string or a list.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Unexpected, Visitor};

/// A number that fits an `f32` (a JSON number past f32's range is refused, not turned into infinity).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F32(pub f32);

impl<'de> Deserialize<'de> for F32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<F32, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = F32;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number within the range of a 32-bit float")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<F32, E> {
                let y = x as f32;
                if y.is_finite() {
                    Ok(F32(y))
                } else {
                    Err(E::invalid_value(Unexpected::Float(x), &self))
                }
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<F32, E> {
                self.visit_f64(x as f64)
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<F32, E> {
                self.visit_f64(x as f64)
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole number `>= 0` (`5.0` counts as 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count(pub u64);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Count, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number >= 0")
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Count, E> {
                Ok(Count(x))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Count, E> {
                u64::try_from(x)
                    .map(Count)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(x), &self))
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Count, E> {
                if x.fract() == 0.0 && x >= 0.0 && x < u64::MAX as f64 {
                    Ok(Count(x as u64))
                } else {
                    Err(E::invalid_value(Unexpected::Float(x), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A seed: any integer (a negative one is read as its two's-complement `u64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Seed, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Seed, E> {
                Ok(Seed(x))
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Seed, E> {
                Ok(Seed(x as u64))
            }
        }
        d.deserialize_any(V)
    }
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stop(pub Vec<String>);

impl<'de> Deserialize<'de> for Stop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stop, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Stop;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Stop, E> {
                Ok(Stop(vec![s.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Stop, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(Stop(v))
            }
        }
        d.deserialize_any(V)
    }
}
