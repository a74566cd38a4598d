//! Serialises an `f64` as its shortest exact decimal text (`inf` included): JSON numbers read
//! back by serde_json may be off by one unit in the last place. Use as `#[serde(with = "crate::util::exact_f64")]`.

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}
