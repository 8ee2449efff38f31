//! Typed access: objects are stored as JSON and read back with their revision.

use serde::{de::DeserializeOwned, Serialize};

use crate::{Result, Store, StoreError};

fn encode<T: Serialize>(kind: &str, key: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt {
        kind: kind.into(),
        key: key.into(),
        message: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(kind: &str, key: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        kind: kind.into(),
        key: key.into(),
        message: e.to_string(),
    })
}

/// Serde helpers over any [`Store`]; values come back with their revision.
pub trait TypedStore {
    fn get_typed<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Result<Option<(T, u64)>>;
    fn list_typed<T: DeserializeOwned>(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(T, u64)>>;
    fn create_typed<T: Serialize>(&self, kind: &str, key: &str, v: &T) -> Result<u64>;
    fn update_typed<T: Serialize>(
        &self,
        kind: &str,
        key: &str,
        v: &T,
        expected: u64,
    ) -> Result<u64>;
}

impl<S: Store + ?Sized> TypedStore for S {
    fn get_typed<T: DeserializeOwned>(&self, kind: &str, key: &str) -> Result<Option<(T, u64)>> {
        self.get(kind, key)?
            .map(|r| Ok((decode(kind, key, &r.value)?, r.revision)))
            .transpose()
    }

    fn list_typed<T: DeserializeOwned>(
        &self,
        kind: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(T, u64)>> {
        self.list(kind, after, limit)?
            .into_iter()
            .map(|r| Ok((decode(kind, &r.key, &r.value)?, r.revision)))
            .collect()
    }

    fn create_typed<T: Serialize>(&self, kind: &str, key: &str, v: &T) -> Result<u64> {
        self.create(kind, key, &encode(kind, key, v)?)
    }

    fn update_typed<T: Serialize>(
        &self,
        kind: &str,
        key: &str,
        v: &T,
        expected: u64,
    ) -> Result<u64> {
        self.update(kind, key, &encode(kind, key, v)?, expected)
    }
}
