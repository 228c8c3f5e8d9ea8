//! The KV buckets: accounts, groups, memberships, counters, chat relations and delivery
//! cursors. Uniqueness through `create` (fails if the key exists) and every change through a
//! revision-checked `update`, so concurrent nodes never lose an update.

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{unavailable, unavailable_because, unavailable_with, Nats};
use crate::core::model::*;
use crate::core::ports::*;

impl Nats {
    pub(super) async fn kv_get<T: for<'de> Deserialize<'de>>(
        store: &kv::Store,
        key: &str,
    ) -> BackendResult<Option<(T, u64)>> {
        match store.entry(key).await.map_err(unavailable)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let v = serde_json::from_slice(&e.value).map_err(|err| {
                    unavailable_with(format!("corrupt value at {key}: {err}"), err)
                })?;
                Ok(Some((v, e.revision)))
            }
            _ => Ok(None),
        }
    }

    pub(super) async fn kv_create<T: Serialize>(
        store: &kv::Store,
        key: &str,
        value: &T,
    ) -> BackendResult<bool> {
        let bytes = Bytes::from(serde_json::to_vec(value).expect("serialises"));
        match store.create(key, bytes).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    pub(super) async fn kv_put<T: Serialize>(
        store: &kv::Store,
        key: &str,
        value: &T,
    ) -> BackendResult<()> {
        let bytes = Bytes::from(serde_json::to_vec(value).expect("serialises"));
        store.put(key, bytes).await.map_err(unavailable)?;
        Ok(())
    }

    /// Read-modify-write with revision check, retried on conflict. `change` returns the new
    /// value, or `Err` to abort with that error; it sees `None` when the key does not exist.
    pub(super) async fn kv_modify<T, F>(
        store: &kv::Store,
        key: &str,
        mut change: F,
    ) -> BackendResult<T>
    where
        T: Serialize + for<'de> Deserialize<'de>,
        F: FnMut(Option<T>) -> BackendResult<T>,
    {
        for _ in 0..64 {
            let current = Self::kv_get::<T>(store, key).await?;
            let revision = current.as_ref().map(|(_, r)| *r);
            let new = change(current.map(|(v, _)| v))?;
            let bytes = Bytes::from(serde_json::to_vec(&new).expect("serialises"));
            let written = match revision {
                Some(rev) => match store.update(key, bytes, rev).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => false,
                    Err(e) => return Err(unavailable(e)),
                },
                None => match store.create(key, bytes).await {
                    Ok(_) => true,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => false,
                    Err(e) => return Err(unavailable(e)),
                },
            };
            if written {
                return Ok(new);
            }
        }
        Err(unavailable_because(format!("too much contention on {key}")))
    }

    pub(super) async fn next_counter(&self, name: &str) -> BackendResult<u64> {
        Self::kv_modify::<u64, _>(&self.meta, &format!("ctr.{name}"), |v| {
            Ok(v.unwrap_or(0) + 1)
        })
        .await
    }

    pub(super) async fn add_peer(&self, user: UserId, peer: UserId) -> BackendResult<()> {
        Self::kv_modify::<Vec<UserId>, _>(&self.meta, &format!("peers.{user}"), |v| {
            let mut list = v.unwrap_or_default();
            if !list.contains(&peer) {
                list.push(peer);
            }
            Ok(list)
        })
        .await
        .map(|_| ())
    }

    pub(super) async fn members_doc(&self, group: GroupId) -> BackendResult<Vec<Member>> {
        Ok(
            Self::kv_get::<Vec<Member>>(&self.groups, &format!("m.{group}"))
                .await?
                .map(|(v, _)| v)
                .unwrap_or_default(),
        )
    }

    pub(super) async fn group_with_count(&self, id: GroupId) -> BackendResult<Option<Group>> {
        let Some((mut g, _)) = Self::kv_get::<Group>(&self.groups, &format!("g.{id}")).await?
        else {
            return Ok(None);
        };
        g.member_count = self.members_doc(id).await?.len() as u64;
        Ok(Some(g))
    }
}
