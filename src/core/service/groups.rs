//! Groups: create, join, leave, members, details, update, roles, remove, in the original
//! server's order of checks.

use std::collections::{BTreeSet, HashMap};

use tracing::warn;

use super::*;
use crate::core::error::{ChatError, ChatResult};
use crate::core::model::*;
use crate::core::names::{check_new_name, NameKind};
use crate::core::ports::{BackendError, BusEvent};

impl ChatCore {
    /// Checks the fields of a new or changed group; returns the name's stored form (NFC,
    /// see [`crate::core::names`]).
    pub(in crate::core) fn check_group_fields(
        name: Option<&str>,
        description: Option<&str>,
        avatar: Option<&str>,
    ) -> ChatResult<Option<String>> {
        let name = match name {
            Some(name) => {
                check_len("group name", name, 2, 100)?;
                Some(check_new_name(NameKind::Group, "group name", name)?)
            }
            None => None,
        };
        if let Some(d) = description {
            check_len("description", d, 0, 500)?;
        }
        if let Some(a) = avatar {
            check_len("avatar", a, 0, 255)?;
        }
        Ok(name)
    }

    pub async fn create_group(
        &self,
        me: &Me,
        name: &str,
        description: &str,
        avatar: &str,
    ) -> ChatResult<Group> {
        let name = Self::check_group_fields(Some(name), Some(description), Some(avatar))?
            .unwrap_or_default();
        let (group, _) = self
            .backends
            .store
            .create_group(NewGroup {
                name,
                owner_id: me.id,
                description: description.to_string(),
                avatar: avatar.to_string(),
                created_at: self.now_ms(),
            })
            .await?;
        self.membership_changed(me.id, group.id, true).await;
        Ok(group)
    }

    pub(in crate::core) async fn require_group(&self, id: GroupId) -> ChatResult<Group> {
        self.backends
            .store
            .group(id)
            .await?
            .ok_or(ChatError::GroupNotFound)
    }

    pub(in crate::core) async fn require_member(
        &self,
        me: &Me,
        group: GroupId,
    ) -> ChatResult<Member> {
        self.backends
            .store
            .member(group, me.id)
            .await?
            .ok_or(ChatError::NotMember)
    }

    /// Membership check of the hot paths (group send, group history): a user this node's
    /// index has as a member and that the store confirmed recently is not read again.
    pub(in crate::core) async fn check_member(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        if self.local.is_member(me.id, group) && self.memberships.fresh(me.id, group) {
            return Ok(());
        }
        self.require_member(me, group).await?;
        self.memberships.confirmed(me.id, group);
        Ok(())
    }

    /// Tells the nodes of `user` (this one included) that its group set changed.
    pub(in crate::core) async fn membership_changed(
        &self,
        user: UserId,
        group: GroupId,
        joined: bool,
    ) {
        if !joined {
            self.memberships.forget(user, group);
        }
        self.local.membership(user, group, joined);
        let sessions = match self.backends.presence.sessions(&[user]).await {
            Ok(s) => s,
            Err(e) => {
                warn!(user_id = user, error = %e, "presence unavailable: other nodes learn the membership change at the user's next login");
                return;
            }
        };
        let nodes: BTreeSet<String> = sessions
            .into_values()
            .flatten()
            .map(|s| s.node_id)
            .filter(|n| *n != self.node_id)
            .collect();
        for node in nodes {
            let event = BusEvent::Membership {
                user,
                group,
                joined,
            };
            if let Err(e) = self.backends.bus.publish_node(&node, event).await {
                warn!(user_id = user, node = %node, error = %e, "could not tell a node about a membership change");
            }
        }
    }

    pub async fn join_group(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        self.require_group(group).await?;
        match self
            .backends
            .store
            .add_member(group, me.id, Role::Member, self.now_ms())
            .await
        {
            Ok(_) => {}
            Err(BackendError::Conflict(_)) => return Err(ChatError::AlreadyMember),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(me.id, group, true).await;
        Ok(())
    }

    pub async fn leave_group(&self, me: &Me, group: GroupId) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        if g.owner_id == me.id {
            return Err(ChatError::OwnerCannotLeave);
        }
        match self.backends.store.remove_member(group, me.id).await {
            Ok(()) => {}
            Err(BackendError::NotFound(_)) => return Err(ChatError::NotMember),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(me.id, group, false).await;
        Ok(())
    }

    /// Members with their profile and real, cluster-wide presence.
    pub async fn members(&self, me: &Me, group: GroupId) -> ChatResult<Vec<(Member, User, bool)>> {
        self.require_member(me, group).await?;
        let store = &self.backends.store;
        let members = store.members(group).await?;
        let ids: Vec<UserId> = members.iter().map(|m| m.user_id).collect();
        let users: HashMap<UserId, User> = store
            .users_by_ids(&ids)
            .await?
            .into_iter()
            .map(|u| (u.id, u))
            .collect();
        let online = match self.backends.presence.sessions(&ids).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "presence unavailable: members shown offline");
                HashMap::new()
            }
        };
        Ok(members
            .into_iter()
            .filter_map(|m| {
                let user = users.get(&m.user_id)?.clone();
                let is_online = online.get(&m.user_id).is_some_and(|s| !s.is_empty());
                Some((m, user, is_online))
            })
            .collect())
    }

    /// The ids of the groups `me` is a member of (the local group index at login).
    pub async fn group_ids_of(&self, me: &Me) -> ChatResult<Vec<GroupId>> {
        Ok(self.backends.store.groups_of(me.id).await?)
    }

    pub async fn my_groups(&self, me: &Me) -> ChatResult<Vec<Group>> {
        let store = &self.backends.store;
        let ids = store.groups_of(me.id).await?;
        Ok(store.groups_by_ids(&ids).await?)
    }

    pub async fn group_details(&self, me: &Me, group: GroupId) -> ChatResult<Group> {
        self.require_member(me, group).await?;
        self.require_group(group).await
    }

    pub async fn update_group(
        &self,
        me: &Me,
        group: GroupId,
        patch: GroupPatch,
    ) -> ChatResult<Group> {
        self.require_group(group).await?;
        let role = self
            .backends
            .store
            .member(group, me.id)
            .await?
            .map(|m| m.role);
        if !matches!(role, Some(Role::Owner | Role::Admin)) {
            return Err(ChatError::NotOwnerOrAdminUpdate);
        }
        if patch.name.is_none() && patch.description.is_none() && patch.avatar.is_none() {
            return Err(ChatError::NoUpdates);
        }
        let name = Self::check_group_fields(
            patch.name.as_deref(),
            patch.description.as_deref(),
            patch.avatar.as_deref(),
        )?;
        let patch = GroupPatch { name, ..patch };
        Ok(self.backends.store.update_group(group, patch).await?)
    }

    pub async fn set_role(
        &self,
        me: &Me,
        group: GroupId,
        target: UserId,
        role: &str,
    ) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        if g.owner_id != me.id {
            return Err(ChatError::NotOwnerRoles);
        }
        let store = &self.backends.store;
        if store.member(group, target).await?.is_none() {
            return Err(ChatError::TargetNotMember);
        }
        if target == g.owner_id {
            return Err(ChatError::CannotChangeOwnerRole);
        }
        let role = match role {
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => return Err(ChatError::InvalidRole),
        };
        store.set_role(group, target, role).await?;
        Ok(())
    }

    /// Removes a member, in the original's order of checks (`docs/protocol.md` §8.9).
    pub async fn remove_member(&self, me: &Me, group: GroupId, target: UserId) -> ChatResult<()> {
        let g = self.require_group(group).await?;
        let store = &self.backends.store;
        if g.owner_id != me.id {
            let my_role = store.member(group, me.id).await?.map(|m| m.role);
            if my_role != Some(Role::Admin) {
                return Err(ChatError::NotOwnerOrAdminRemove);
            }
            match store.member(group, target).await?.map(|m| m.role) {
                None => return Err(ChatError::TargetNotMember),
                Some(Role::Admin | Role::Owner) => return Err(ChatError::AdminCannotRemoveAdmin),
                Some(Role::Member) => {}
            }
        }
        if target == me.id {
            return Err(ChatError::CannotRemoveSelf);
        }
        if target == g.owner_id {
            return Err(ChatError::CannotRemoveOwner);
        }
        match store.remove_member(group, target).await {
            Ok(()) => {}
            Err(BackendError::NotFound(_)) => return Err(ChatError::MemberNotFound),
            Err(e) => return Err(e.into()),
        }
        self.membership_changed(target, group, false).await;
        Ok(())
    }
}
