//! Deserializers for lists and maps that stop at a maximum number of items, so a hostile
//! JSON payload of many tiny items (`["","",…]`) cannot expand into a collection many times
//! the size of its frame.

use serde::de::{Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// A `Vec` of at most `MAX` items.
pub fn vec<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "a list of at most {MAX} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX {
                    return Err(A::Error::custom(format_args!(
                        "more than {MAX} items in a list"
                    )));
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, MAX>(PhantomData))
}

/// A `BTreeMap` of at most `MAX` entries.
pub fn map<'de, D, K, V, const MAX: usize>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    struct Bounded<K, V, const MAX: usize>(PhantomData<(K, V)>);

    impl<'de, K, V, const MAX: usize> Visitor<'de> for Bounded<K, V, MAX>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        type Value = BTreeMap<K, V>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "a map of at most {MAX} entries")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<BTreeMap<K, V>, A::Error> {
            let mut entries = BTreeMap::new();
            let mut seen = 0usize;
            while let Some((key, value)) = access.next_entry()? {
                seen += 1;
                if seen > MAX {
                    return Err(A::Error::custom(format_args!(
                        "more than {MAX} entries in a map"
                    )));
                }
                entries.insert(key, value);
            }
            Ok(entries)
        }
    }

    deserializer.deserialize_map(Bounded::<K, V, MAX>(PhantomData))
}

/// An optional `BTreeMap` of at most `MAX` entries (`null` or absent is `None`).
pub fn option_map<'de, D, K, V, const MAX: usize>(
    deserializer: D,
) -> Result<Option<BTreeMap<K, V>>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(bound = "K: Deserialize<'de> + Ord, V: Deserialize<'de>")]
    struct Wrapper<K, V, const MAX: usize>(
        #[serde(deserialize_with = "map::<_, K, V, MAX>")] BTreeMap<K, V>,
    );

    let wrapped: Option<Wrapper<K, V, MAX>> = Option::deserialize(deserializer)?;
    Ok(wrapped.map(|Wrapper(entries)| entries))
}
