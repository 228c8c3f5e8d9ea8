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

/// Key of the cluster's token secret in the meta bucket (readable with the nodes' NATS
/// credentials only, like every other key there).
const TOKEN_SECRET_KEY: &str = "auth.token_secret";

impl Nats {
    /// The token secret every node of this cluster signs with, agreed through the meta bucket:
    /// `candidate` when this node stores it first (create-if-absent), else the stored one (a
    /// node that loses the create race reads the winner's).
    pub async fn cluster_token_secret(&self, candidate: Vec<u8>) -> BackendResult<Vec<u8>> {
        // A stored secret is never deleted by the daemon; the loop only covers a key deleted by
        // hand between this node's create and its read.
        for _ in 0..8 {
            match self
                .meta
                .create(TOKEN_SECRET_KEY, Bytes::from(candidate.clone()))
                .await
            {
                Ok(_) => return Ok(candidate),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(unavailable(e)),
            }
            match self.meta.get(TOKEN_SECRET_KEY).await.map_err(unavailable)? {
                Some(stored) if stored.len() >= 16 => return Ok(stored.to_vec()),
                Some(_) => {
                    return Err(unavailable_because(format!(
                        "the token secret stored in the KV bucket {} (key {TOKEN_SECRET_KEY}) is shorter than 16 bytes: delete that key (every login token becomes invalid) or set auth.token_secret_file",
                        self.meta.name
                    )))
                }
                None => continue,
            }
        }
        Err(unavailable_because(format!(
            "the token secret key {TOKEN_SECRET_KEY} keeps disappearing from the KV bucket {}: is something deleting it?",
            self.meta.name
        )))
    }
}
