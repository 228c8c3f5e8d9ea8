//! Groups: every group operation (215–235) and group text (310/311/312), success and error
//! paths, with the exact reply bodies of `docs/protocol.md` §8.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use chat_zinx::protocol::{ids, messages::code};
use serde_json::{json, Value};
use support::*;

fn is_rfc3339(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok()
    })
}

/// `YYYY-MM-DD HH:MM:SS`.
fn is_sql_datetime(v: &Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    s.len() == 19 && time::PrimitiveDateTime::parse(s, &fmt).is_ok()
}

/// Sends a group request and returns the body of its response (request id + 1).
async fn req(c: &mut Client, id: u32, body: Value) -> Value {
    c.send(id, body).await;
    c.expect(id + 1).await
}

async fn details(c: &mut Client, gid: u64) -> Value {
    req(c, ids::GROUP_DETAILS_REQ, json!({ "group_id": gid })).await
}

async fn members(c: &mut Client, gid: u64) -> Value {
    req(c, ids::GROUP_MEMBERS_REQ, json!({ "group_id": gid })).await
}

/// The member entry of `user_id` in a 223 body.
fn member_of(resp: &Value, user_id: u64) -> Value {
    resp["members"]
        .as_array()
        .unwrap_or_else(|| panic!("not a members list: {resp}"))
        .iter()
        .find(|m| m["user_id"] == user_id)
        .cloned()
        .unwrap_or_else(|| panic!("user {user_id} not in {resp}"))
}

/// Polls 222 until `user_id`'s `is_online` equals `want` (a wait bounded by `WAIT`, not a
/// timing assertion).
async fn wait_presence(probe: &mut Client, gid: u64, user_id: u64, want: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = members(probe, gid).await;
        if member_of(&r, user_id)["is_online"] == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "user {user_id} still not is_online={want} after {WAIT:?}: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn err(text: &str) -> Value {
    json!({ "error": text })
}

/// One row of a table of requests: what it checks, who sends it (a username), the body of the
/// request, and the whole reply expected.
type Row<'a> = (&'a str, &'a str, Value, Value);

/// Sends the requests of `rows` (message id `id`) in order, each from the client logged in as
/// the row's user, and checks each whole reply; a failure names the row.
async fn check_rows(clients: &mut [&mut Client], id: u32, rows: &[Row<'_>]) {
    for (what, from, body, expected) in rows {
        let c = clients
            .iter_mut()
            .find(|c| c.user.as_ref().is_some_and(|u| u["username"] == *from))
            .unwrap_or_else(|| panic!("{what}: no client is logged in as {from}"));
        assert_eq!(
            req(c, id, body.clone()).await,
            *expected,
            "{what} ({from} sends {body})"
        );
    }
}

fn error_text(v: &Value) -> &str {
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error body, got {v}"))
}

// -------------------------------------------------------------------------------------------
// 215 create

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_group_returns_the_group_with_the_creator_as_only_member() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let g = req(
        &mut alice,
        ids::CREATE_GROUP_REQ,
        json!({"name": "rustaceans", "description": "crabs", "avatar": "http://x/a.png"}),
    )
    .await;
    assert_eq!(
        keys(&g),
        [
            "avatar",
            "created_at",
            "description",
            "id",
            "member_count",
            "name",
            "owner_user_id"
        ],
        "{g}"
    );
    assert!(g["id"].as_u64().is_some_and(|id| id > 0), "{g}");
    assert_eq!(g["name"], "rustaceans");
    assert_eq!(g["owner_user_id"], alice.id());
    assert_eq!(g["description"], "crabs");
    assert_eq!(g["avatar"], "http://x/a.png");
    assert_eq!(g["member_count"], 1);
    assert!(is_sql_datetime(&g["created_at"]), "{g}");

    // Description and avatar are optional.
    let g2 = req(&mut alice, ids::CREATE_GROUP_REQ, json!({"name": "bare"})).await;
    assert_eq!(
        (g2["description"].as_str(), g2["avatar"].as_str()),
        (Some(""), Some(""))
    );
    assert_ne!(g2["id"], g["id"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_group_with_a_taken_name_fails_case_insensitively() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    alice.create_group("Book Club").await;
    for (owner, name) in [
        (true, "Book Club"),
        (false, "book club"),
        (false, "BOOK CLUB"),
    ] {
        let c = if owner { &mut alice } else { &mut bob };
        let r = req(c, ids::CREATE_GROUP_REQ, json!({ "name": name })).await;
        assert_eq!(keys(&r), ["error"], "{r}");
        assert!(
            error_text(&r).starts_with("创建群组失败: failed to create group: "),
            "{r}"
        );
    }
    // Bob still has no group.
    assert_eq!(
        req(&mut bob, ids::MY_GROUPS_REQ, json!({})).await,
        json!({"groups": [], "total": 0})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_group_enforces_name_description_and_avatar_limits() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    // Limits count characters, not bytes.
    let ok = [
        json!({"name": "ab"}),
        json!({"name": "群".repeat(100)}),
        json!({"name": "with-desc", "description": "描".repeat(500)}),
        json!({"name": "with-avatar", "avatar": "a".repeat(255)}),
    ];
    for body in ok {
        let r = req(&mut alice, ids::CREATE_GROUP_REQ, body.clone()).await;
        assert!(r["id"].is_u64(), "{body} should be accepted: {r}");
    }
    let bad = [
        json!({"name": ""}),
        json!({"name": "a"}),
        json!({"name": "群".repeat(101)}),
        json!({"name": "long-desc", "description": "d".repeat(501)}),
        json!({"name": "long-avatar", "avatar": "a".repeat(256)}),
    ];
    for body in bad {
        let r = req(&mut alice, ids::CREATE_GROUP_REQ, body.clone()).await;
        assert_eq!(keys(&r), ["error"], "{r}");
        assert!(error_text(&r).starts_with("创建群组失败: "), "{body}: {r}");
    }
    // None of the refused groups exists.
    let mine = req(&mut alice, ids::MY_GROUPS_REQ, json!({})).await;
    assert_eq!(mine["total"], 4, "{mine}");
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 217 join / 219 leave

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_group_adds_a_member_and_increments_member_count() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("g1").await;
    assert_eq!(
        req(&mut bob, ids::JOIN_GROUP_REQ, json!({ "group_id": gid })).await,
        json!({"message": "成功加入群组"})
    );
    assert_eq!(details(&mut alice, gid).await["member_count"], 2);
    carol.join_group(gid).await;
    assert_eq!(details(&mut bob, gid).await["member_count"], 3);
    let mine = req(&mut carol, ids::MY_GROUPS_REQ, json!({})).await;
    assert_eq!(mine["groups"][0]["member_count"], 3, "{mine}");
    let r = members(&mut alice, gid).await;
    assert_eq!(r["total"], 3);
    assert_eq!(member_of(&r, bob.id())["role"], "member");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_group_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    assert_eq!(
        req(&mut bob, ids::JOIN_GROUP_REQ, json!({"group_id": 999_999})).await,
        err("加入群组失败: group not found")
    );
    bob.join_group(gid).await;
    let already = err("加入群组失败: user already in this group");
    let rows: &[Row] = &[
        (
            "a member joins again",
            "bob",
            json!({ "group_id": gid }),
            already.clone(),
        ),
        (
            "the owner is a member too",
            "alice",
            json!({ "group_id": gid }),
            already,
        ),
    ];
    check_rows(&mut [&mut alice, &mut bob], ids::JOIN_GROUP_REQ, rows).await;
    assert_eq!(details(&mut alice, gid).await["member_count"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_group_removes_the_member_and_decrements_member_count() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    assert_eq!(
        req(&mut bob, ids::LEAVE_GROUP_REQ, json!({ "group_id": gid })).await,
        json!({"message": "成功退出群组"})
    );
    let d = details(&mut alice, gid).await;
    assert_eq!(d["member_count"], 1, "{d}");
    assert_eq!(
        req(&mut bob, ids::MY_GROUPS_REQ, json!({})).await,
        json!({"groups": [], "total": 0})
    );
    // No longer a member: no pushes, no details.
    alice.group_msg(gid, "after leave").await;
    bob.assert_quiet().await;
    assert_eq!(details(&mut bob, gid).await, err("您不是该群组的成员"));
    // Can join again.
    bob.join_group(gid).await;
    assert_eq!(details(&mut alice, gid).await["member_count"], 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_group_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    let rows: &[Row] = &[
        (
            "the owner cannot leave",
            "alice",
            json!({ "group_id": gid }),
            err("退出群组失败: group owner cannot leave the group directly, please transfer ownership first"),
        ),
        (
            "a non-member cannot leave",
            "bob",
            json!({ "group_id": gid }),
            err("退出群组失败: user is not a member of this group"),
        ),
        (
            "an unknown group",
            "bob",
            json!({"group_id": 424_242}),
            err("退出群组失败: group not found"),
        ),
    ];
    check_rows(&mut [&mut alice, &mut bob], ids::LEAVE_GROUP_REQ, rows).await;
    // The owner is still there.
    let d = details(&mut alice, gid).await;
    assert_eq!(
        (d["member_count"].as_u64(), d["owner_user_id"].as_u64()),
        (Some(1), Some(alice.id()))
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 222 members

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_lists_every_member_with_role_and_profile() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    carol.join_group(gid).await;
    assert_eq!(
        req(
            &mut alice,
            ids::SET_ROLE_REQ,
            json!({"group_id": gid, "target_user_id": carol.id(), "new_role": "admin"})
        )
        .await,
        json!({"message": "成员角色设置成功"})
    );
    // Any member may list.
    let r = members(&mut bob, gid).await;
    assert_eq!(keys(&r), ["group_id", "members", "total"], "{r}");
    assert_eq!(r["group_id"], gid);
    assert_eq!(r["total"], 3);
    assert_eq!(r["members"].as_array().unwrap().len(), 3);
    let mut member_ids = HashSet::new();
    for (c, role) in [(&alice, "owner"), (&bob, "member"), (&carol, "admin")] {
        let m = member_of(&r, c.id());
        assert_eq!(
            keys(&m),
            [
                "is_online",
                "joined_at",
                "member_id",
                "role",
                "user_id",
                "user_uuid",
                "username"
            ],
            "{m}"
        );
        assert_eq!(m["role"], role, "{m}");
        assert_eq!(m["user_uuid"], c.uuid().as_str());
        assert_eq!(m["username"], c.user.as_ref().unwrap()["username"]);
        assert!(is_rfc3339(&m["joined_at"]), "{m}");
        assert_eq!(m["is_online"], true, "{m}");
        assert!(member_ids.insert(m["member_id"].as_u64().unwrap()), "{r}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_is_online_follows_real_presence() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let bob_id = bob.id();
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    assert_eq!(
        member_of(&members(&mut alice, gid).await, bob_id)["is_online"],
        true
    );

    // Disconnect: presence flips once the server has processed the close.
    drop(bob);
    wait_presence(&mut alice, gid, bob_id, false).await;

    // A new login is online. (The 105 is queued before the session is registered; frames of
    // one connection are handled in order, so once a later ping is answered it is.)
    let mut bob = server.client().await;
    bob.login("bob").await;
    bob.assert_quiet().await;
    assert_eq!(
        member_of(&members(&mut alice, gid).await, bob_id)["is_online"],
        true
    );

    // Logout is synchronous: the 107 comes after presence is updated.
    bob.send(ids::LOGOUT_REQ, json!({})).await;
    assert_eq!(bob.expect(ids::LOGOUT_RESP).await["code"], 0);
    assert_eq!(
        member_of(&members(&mut alice, gid).await, bob_id)["is_online"],
        false
    );

    // Two connections: online until the last one goes.
    bob.login("bob").await;
    let mut bob2 = server.client().await;
    bob2.login("bob").await;
    bob2.assert_quiet().await;
    bob.send(ids::LOGOUT_REQ, json!({})).await;
    bob.expect(ids::LOGOUT_RESP).await;
    assert_eq!(
        member_of(&members(&mut alice, gid).await, bob_id)["is_online"],
        true
    );
    bob2.send(ids::LOGOUT_REQ, json!({})).await;
    bob2.expect(ids::LOGOUT_RESP).await;
    assert_eq!(
        member_of(&members(&mut alice, gid).await, bob_id)["is_online"],
        false
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_members_requires_membership() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    let not_member = err("您不是该群组的成员");
    let rows: &[Row] = &[
        (
            "a non-member",
            "bob",
            json!({ "group_id": gid }),
            not_member.clone(),
        ),
        (
            "an unknown group",
            "bob",
            json!({"group_id": 987_654}),
            not_member.clone(),
        ),
        (
            "an unknown group, asked by an owner of another",
            "alice",
            json!({"group_id": 987_654}),
            not_member,
        ),
    ];
    check_rows(&mut [&mut alice, &mut bob], ids::GROUP_MEMBERS_REQ, rows).await;
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 224 my groups / 232 details

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn my_groups_lists_the_groups_of_the_user() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    assert_eq!(
        req(&mut alice, ids::MY_GROUPS_REQ, json!({})).await,
        json!({"groups": [], "total": 0})
    );
    let g1 = req(
        &mut alice,
        ids::CREATE_GROUP_REQ,
        json!({"name": "first", "description": "one"}),
    )
    .await["id"]
        .as_u64()
        .unwrap();
    let g2 = bob.create_group("second").await;
    alice.join_group(g2).await;
    let _other = bob.create_group("bobs-only").await;

    let r = req(&mut alice, ids::MY_GROUPS_REQ, json!({})).await;
    assert_eq!(keys(&r), ["groups", "total"], "{r}");
    assert_eq!(r["total"], 2);
    let mut groups = r["groups"].as_array().unwrap().clone();
    groups.sort_by_key(|g| g["id"].as_u64());
    for g in &groups {
        assert_eq!(
            keys(g),
            ["description", "id", "member_count", "name"],
            "{g}"
        );
    }
    assert_eq!(
        groups,
        [
            json!({"id": g1, "name": "first", "member_count": 1, "description": "one"}),
            json!({"id": g2, "name": "second", "member_count": 2, "description": "d"}),
        ]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_details_shape_and_membership_check() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let created = req(
        &mut alice,
        ids::CREATE_GROUP_REQ,
        json!({"name": "g1", "description": "desc", "avatar": "av"}),
    )
    .await;
    let gid = created["id"].as_u64().unwrap();
    let d = details(&mut alice, gid).await;
    assert_eq!(
        keys(&d),
        [
            "avatar",
            "created_at",
            "description",
            "id",
            "member_count",
            "name",
            "owner_user_id",
            "updated_at"
        ],
        "{d}"
    );
    assert_eq!(d["id"], gid);
    assert_eq!(d["name"], "g1");
    assert_eq!(d["owner_user_id"], alice.id());
    assert_eq!(d["description"], "desc");
    assert_eq!(d["avatar"], "av");
    assert_eq!(d["member_count"], 1);
    assert_eq!(d["created_at"], created["created_at"]);
    assert!(
        is_sql_datetime(&d["created_at"]) && is_sql_datetime(&d["updated_at"]),
        "{d}"
    );

    let not_member = err("您不是该群组的成员");
    let rows: &[Row] = &[
        (
            "a non-member",
            "bob",
            json!({ "group_id": gid }),
            not_member.clone(),
        ),
        (
            "an unknown group",
            "bob",
            json!({"group_id": 55_555}),
            not_member,
        ),
    ];
    check_rows(&mut [&mut bob], ids::GROUP_DETAILS_REQ, rows).await;
    bob.join_group(gid).await;
    assert_eq!(details(&mut bob, gid).await["member_count"], 2);
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 226 update

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_group_by_owner_and_admin_is_visible_in_details() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("before").await;
    bob.join_group(gid).await;
    assert_eq!(
        req(
            &mut alice,
            ids::UPDATE_GROUP_REQ,
            json!({"group_id": gid, "name": "after", "description": "new desc", "avatar": "new.png"})
        )
        .await,
        json!({"message": "群组信息更新成功"})
    );
    let d = details(&mut bob, gid).await;
    assert_eq!(
        (
            d["name"].as_str(),
            d["description"].as_str(),
            d["avatar"].as_str()
        ),
        (Some("after"), Some("new desc"), Some("new.png")),
        "{d}"
    );
    assert!(is_sql_datetime(&d["updated_at"]), "{d}");

    // Admins may update too; empty or missing fields are left unchanged.
    req(
        &mut alice,
        ids::SET_ROLE_REQ,
        json!({"group_id": gid, "target_user_id": bob.id(), "new_role": "admin"}),
    )
    .await;
    assert_eq!(
        req(
            &mut bob,
            ids::UPDATE_GROUP_REQ,
            json!({"group_id": gid, "description": "by admin", "name": ""})
        )
        .await,
        json!({"message": "群组信息更新成功"})
    );
    let d = details(&mut alice, gid).await;
    assert_eq!(
        (
            d["name"].as_str(),
            d["description"].as_str(),
            d["avatar"].as_str()
        ),
        (Some("after"), Some("by admin"), Some("new.png")),
        "{d}"
    );
    // The old name is free again, the new one is taken.
    bob.create_group("before").await;
    let r = req(&mut bob, ids::CREATE_GROUP_REQ, json!({"name": "AFTER"})).await;
    assert!(error_text(&r).starts_with("创建群组失败: "), "{r}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_group_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("mine").await;
    alice.create_group("taken").await;
    bob.join_group(gid).await;

    let denied = err(
        "更新群组信息失败: permission denied: only group owner and admins can update group info",
    );
    let no_updates = err("更新群组信息失败: no updates provided");
    let rows: &[Row] = &[
        // Plain member, and a non-member; permission is checked before "no updates".
        (
            "a plain member",
            "bob",
            json!({"group_id": gid, "name": "x-by-bob"}),
            denied.clone(),
        ),
        (
            "a plain member, with no fields",
            "bob",
            json!({ "group_id": gid }),
            denied.clone(),
        ),
        (
            "a non-member",
            "carol",
            json!({"group_id": gid, "description": "c"}),
            denied,
        ),
        // No fields (or only empty ones).
        (
            "no fields",
            "alice",
            json!({ "group_id": gid }),
            no_updates.clone(),
        ),
        (
            "only empty fields",
            "alice",
            json!({"group_id": gid, "name": "", "description": "", "avatar": ""}),
            no_updates,
        ),
        // Unknown group comes first, even for a non-member.
        (
            "an unknown group, for a non-member",
            "carol",
            json!({"group_id": 777_777, "name": "zz"}),
            err("更新群组信息失败: group not found"),
        ),
    ];
    check_rows(
        &mut [&mut alice, &mut bob, &mut carol],
        ids::UPDATE_GROUP_REQ,
        rows,
    )
    .await;
    // Name conflict with another group, case-insensitively; limits.
    for body in [
        json!({"group_id": gid, "name": "taken"}),
        json!({"group_id": gid, "name": "TAKEN"}),
        json!({"group_id": gid, "name": "x"}),
        json!({"group_id": gid, "name": "n".repeat(101)}),
        json!({"group_id": gid, "description": "d".repeat(501)}),
        json!({"group_id": gid, "avatar": "a".repeat(256)}),
    ] {
        let r = req(&mut alice, ids::UPDATE_GROUP_REQ, body.clone()).await;
        assert_eq!(keys(&r), ["error"], "{body}: {r}");
        assert!(
            error_text(&r).starts_with("更新群组信息失败: "),
            "{body}: {r}"
        );
    }
    // Nothing changed.
    let d = details(&mut alice, gid).await;
    assert_eq!(
        (
            d["name"].as_str(),
            d["description"].as_str(),
            d["avatar"].as_str()
        ),
        (Some("mine"), Some("d"), Some("")),
        "{d}"
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 228 set role

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_member_role_promotes_and_demotes() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    for role in ["admin", "member", "admin"] {
        assert_eq!(
            req(
                &mut alice,
                ids::SET_ROLE_REQ,
                json!({"group_id": gid, "target_user_id": bob.id(), "new_role": role})
            )
            .await,
            json!({"message": "成员角色设置成功"})
        );
        assert_eq!(
            member_of(&members(&mut bob, gid).await, bob.id())["role"],
            role
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_member_role_errors_in_the_original_order() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let dave = server.user("dave").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    carol.join_group(gid).await;
    req(
        &mut alice,
        ids::SET_ROLE_REQ,
        json!({"group_id": gid, "target_user_id": carol.id(), "new_role": "admin"}),
    )
    .await;
    let set = |gid: u64, target: u64, role: &str| json!({"group_id": gid, "target_user_id": target, "new_role": role});
    let failed = |why: &str| err(&format!("设置成员角色失败: {why}"));
    let (alice_id, bob_id, dave_id) = (alice.id(), bob.id(), dave.id());
    let not_found = failed("group not found");
    let denied = failed("permission denied: only group owner can change member roles");
    let not_member = failed("target user is not a member of this group");
    let owner_role = failed("cannot change role of the group owner");
    let bad_role = failed("invalid role: must be 'admin' or 'member'");
    let rows: &[Row] = &[
        // 1. group not found (before anything else, even for a non-owner and a bad role).
        (
            "an unknown group, for a non-owner and a bad role",
            "bob",
            set(31_337, dave_id, "boss"),
            not_found.clone(),
        ),
        (
            "an unknown group, for the owner of another",
            "alice",
            set(31_337, bob_id, "admin"),
            not_found,
        ),
        // 2. permission denied: an admin, a plain member (even with bad arguments).
        (
            "an admin",
            "carol",
            set(gid, bob_id, "admin"),
            denied.clone(),
        ),
        (
            "a plain member, for a non-member and a bad role",
            "bob",
            set(gid, dave_id, "boss"),
            denied.clone(),
        ),
        (
            "a plain member, for the owner",
            "bob",
            set(gid, alice_id, "member"),
            denied.clone(),
        ),
        (
            "an admin, for the owner",
            "carol",
            set(gid, alice_id, "member"),
            denied,
        ),
        // 3. target not a member (before the role is checked).
        (
            "a non-member target",
            "alice",
            set(gid, dave_id, "admin"),
            not_member.clone(),
        ),
        (
            "a non-member target and a bad role",
            "alice",
            set(gid, dave_id, "boss"),
            not_member.clone(),
        ),
        (
            "an unknown target",
            "alice",
            set(gid, 999_999, "admin"),
            not_member,
        ),
        // 4. the owner's role (before the role is checked).
        (
            "the owner's role",
            "alice",
            set(gid, alice_id, "member"),
            owner_role.clone(),
        ),
        (
            "the owner's role, to a bad role",
            "alice",
            set(gid, alice_id, "boss"),
            owner_role,
        ),
        // 5. invalid role.
        (
            "role boss",
            "alice",
            set(gid, bob_id, "boss"),
            bad_role.clone(),
        ),
        (
            "role owner",
            "alice",
            set(gid, bob_id, "owner"),
            bad_role.clone(),
        ),
        (
            "an empty role",
            "alice",
            set(gid, bob_id, ""),
            bad_role.clone(),
        ),
        (
            "role Admin (case matters)",
            "alice",
            set(gid, bob_id, "Admin"),
            bad_role,
        ),
    ];
    check_rows(
        &mut [&mut alice, &mut bob, &mut carol],
        ids::SET_ROLE_REQ,
        rows,
    )
    .await;
    // Nothing changed.
    let r = members(&mut alice, gid).await;
    assert_eq!(member_of(&r, alice.id())["role"], "owner");
    assert_eq!(member_of(&r, bob.id())["role"], "member");
    assert_eq!(member_of(&r, carol.id())["role"], "admin");
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 230 remove member

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_by_owner_stops_pushes_and_sending() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    carol.join_group(gid).await;
    assert_eq!(details(&mut alice, gid).await["member_count"], 3);

    assert_eq!(
        req(
            &mut alice,
            ids::REMOVE_MEMBER_REQ,
            json!({"group_id": gid, "target_user_id": bob.id()})
        )
        .await,
        json!({"message": "成员已从群组中移除"})
    );
    assert_eq!(details(&mut alice, gid).await["member_count"], 2);
    // The removed user is not notified...
    bob.assert_quiet().await;
    // ...no longer gets pushes...
    alice.group_msg(gid, "without bob").await;
    assert_eq!(
        carol.expect(ids::GROUP_TEXT_PUSH).await["content"],
        "without bob"
    );
    bob.assert_quiet().await;
    // ...and can no longer send or read.
    assert_eq!(
        bob.group_msg(gid, "still here?").await,
        json!({"status": 3, "error": "You are not a member of this group"})
    );
    alice.assert_quiet().await;
    carol.assert_quiet().await;
    assert_eq!(details(&mut bob, gid).await, err("您不是该群组的成员"));
    let r = members(&mut alice, gid).await;
    assert_eq!(r["total"], 2);
    assert!(
        r["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["user_id"] != bob.id()),
        "{r}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_by_admin_only_removes_plain_members() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let mut dave = server.user("dave").await;
    let bob_id = bob.id();
    let gid = alice.create_group("g1").await;
    for c in [&mut bob, &mut carol, &mut dave] {
        c.join_group(gid).await;
    }
    for admin in [bob.id(), carol.id()] {
        req(
            &mut alice,
            ids::SET_ROLE_REQ,
            json!({"group_id": gid, "target_user_id": admin, "new_role": "admin"}),
        )
        .await;
    }
    let remove = |target: u64| json!({"group_id": gid, "target_user_id": target});
    let no_admins =
        err("移除成员失败: permission denied: admins cannot remove other admins or the owner");
    let rows: &[Row] = &[
        (
            "another admin",
            "bob",
            remove(carol.id()),
            no_admins.clone(),
        ),
        ("the owner", "bob", remove(alice.id()), no_admins.clone()),
        // An admin removing itself hits the same rule (the non-owner path comes first).
        ("itself", "bob", remove(bob_id), no_admins),
        (
            "a plain member",
            "bob",
            remove(dave.id()),
            json!({"message": "成员已从群组中移除"}),
        ),
    ];
    check_rows(&mut [&mut bob], ids::REMOVE_MEMBER_REQ, rows).await;
    assert_eq!(details(&mut alice, gid).await["member_count"], 3);
    // Dave is gone now: the admin path reports the target as not a member.
    assert_eq!(
        req(&mut bob, ids::REMOVE_MEMBER_REQ, remove(dave.id())).await,
        err("移除成员失败: target user is not a member of this group")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let mut eve = server.user("eve").await;
    let (alice_id, bob_id) = (alice.id(), bob.id());
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    carol.join_group(gid).await;
    let remove = |target: u64| json!({"group_id": gid, "target_user_id": target});
    let not_admin =
        err("移除成员失败: permission denied: only group owner and admins can remove members");
    let rows: &[Row] = &[
        (
            "a plain member, of a member",
            "bob",
            remove(carol.id()),
            not_admin.clone(),
        ),
        (
            "a plain member, of the owner",
            "bob",
            remove(alice_id),
            not_admin.clone(),
        ),
        // A non-member is no admin either.
        ("a non-member", "eve", remove(bob_id), not_admin),
        (
            "the owner, of itself",
            "alice",
            remove(alice_id),
            err("移除成员失败: cannot remove yourself from group, use leave group instead"),
        ),
        (
            "an unknown group",
            "bob",
            json!({"group_id": 8_888_888, "target_user_id": carol.id()}),
            err("移除成员失败: group not found"),
        ),
    ];
    check_rows(
        &mut [&mut alice, &mut bob, &mut eve],
        ids::REMOVE_MEMBER_REQ,
        rows,
    )
    .await;
    assert_eq!(details(&mut alice, gid).await["member_count"], 3);
    carol.assert_quiet().await;
    server.stop().await;
}

/// `docs/protocol.md` §8.9 step 5: on the owner's path a target that is not a member is
/// `member not found in group` (the admin path says `target user is not a member…`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_member_by_owner_of_a_non_member_says_member_not_found() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let eve = server.user("eve").await;
    let gid = alice.create_group("g1").await;
    assert_eq!(
        req(
            &mut alice,
            ids::REMOVE_MEMBER_REQ,
            json!({"group_id": gid, "target_user_id": eve.id()})
        )
        .await,
        err("移除成员失败: member not found in group")
    );
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 310 / 311 / 312

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_text_is_acked_and_pushed_once_to_every_other_member_connection() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut alice2 = server.client().await;
    alice2.login("alice").await;
    let mut bob = server.user("bob").await;
    let mut bob2 = server.client().await;
    bob2.login("bob").await;
    let mut carol = server.user("carol").await;
    let mut outsider = server.user("outsider").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    carol.join_group(gid).await;

    let ack = alice.group_msg(gid, "hello <group> & all").await;
    assert_eq!(keys(&ack), ["msg_id", "status"], "{ack}");
    assert_eq!(ack["status"], 0);
    let msg_id = ack["msg_id"].as_str().unwrap().to_string();
    assert_eq!(msg_id.len(), 36, "{ack}");

    let mut convs = HashSet::new();
    let mut seqs = HashSet::new();
    // The sender's other device gets it too; the sending connection does not.
    for c in [&mut alice2, &mut bob, &mut bob2, &mut carol] {
        let p = c.expect(ids::GROUP_TEXT_PUSH).await;
        assert_eq!(
            keys(&p),
            [
                "content",
                "conv",
                "from_user_id",
                "from_user_uuid",
                "from_username",
                "group_id",
                "msg_id",
                "seq",
                "timestamp"
            ],
            "{p}"
        );
        assert_eq!(p["group_id"], gid);
        assert!(p["from_user_id"].is_u64(), "a JSON number: {p}");
        assert_eq!(p["from_user_id"], alice.id());
        assert_eq!(p["from_user_uuid"], alice.uuid().as_str());
        assert_eq!(p["from_username"], "alice");
        assert_eq!(p["content"], "hello <group> & all");
        assert!(p["timestamp"].is_i64(), "{p}");
        assert_eq!(p["msg_id"], msg_id.as_str());
        convs.insert(p["conv"].as_str().unwrap().to_string());
        seqs.insert(p["seq"].as_u64().unwrap());
        // Exactly one.
        c.assert_quiet().await;
    }
    assert_eq!((convs.len(), seqs.len()), (1, 1));
    alice.assert_quiet().await;
    outsider.assert_quiet().await;

    // From the other device: now the first connection gets it.
    let ack2 = alice2.group_msg(gid, "from device 2").await;
    assert_eq!(ack2["status"], 0);
    assert_ne!(ack2["msg_id"], ack["msg_id"]);
    for c in [&mut alice, &mut bob, &mut bob2, &mut carol] {
        let p = c.expect(ids::GROUP_TEXT_PUSH).await;
        assert_eq!(
            (p["content"].as_str(), p["msg_id"].clone()),
            (Some("from device 2"), ack2["msg_id"].clone())
        );
        assert!(p["seq"].as_u64().unwrap() > *seqs.iter().next().unwrap());
        c.assert_quiet().await;
    }
    alice2.assert_quiet().await;

    // Empty content is allowed.
    assert_eq!(bob.group_msg(gid, "").await["status"], 0);
    assert_eq!(carol.expect(ids::GROUP_TEXT_PUSH).await["content"], "");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_text_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    let not_member = json!({"status": 3, "error": "You are not a member of this group"});
    assert_eq!(bob.group_msg(gid, "let me in").await, not_member);
    assert_eq!(bob.group_msg(123_456, "nowhere").await, not_member);
    alice.assert_quiet().await;
    let malformed = json!({"status": 1, "error": "Invalid request format"});
    for body in [
        &b""[..],
        b"{",
        br#"{"group_id":"1","content":"x"}"#,
        br#"{"group_id":-1,"content":"x"}"#,
        br#"{"group_id":1.5,"content":"x"}"#,
        br#"{"group_id":1,"content":7}"#,
        br#"[1]"#,
    ] {
        bob.send_body(ids::GROUP_TEXT_REQ, body).await;
        assert_eq!(
            bob.expect(ids::GROUP_TEXT_ACK).await,
            malformed,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    // Nothing was stored.
    let h = req(
        &mut alice,
        ids::GROUP_HISTORY_REQ,
        json!({ "group_id": gid }),
    )
    .await;
    assert_eq!(h["messages"], json!([]), "{h}");

    // Not logged in: a 99 with code 1 (v1: no ref).
    let mut anon = server.client().await;
    anon.send(
        ids::GROUP_TEXT_REQ,
        json!({"group_id": gid, "content": "anon"}),
    )
    .await;
    let e = anon.expect(ids::ERROR).await;
    assert_eq!(e["code"], code::NOT_LOGGED_IN, "{e}");
    assert!(e["message"].is_string(), "{e}");
    assert!(e.get("ref").is_none(), "{e}");
    anon.assert_quiet().await;
    alice.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_text_from_a_v2_sender_gets_a_402_ack_after_the_311() {
    let server = TestServer::start().await;
    let mut alice = server.user_v2("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;

    alice
        .send(
            ids::GROUP_TEXT_REQ,
            json!({"group_id": gid, "content": "v2 hi", "client_msg_id": "c-1"}),
        )
        .await;
    let ack = alice.expect(ids::GROUP_TEXT_ACK).await;
    assert_eq!(ack["status"], 0);
    let a = alice.expect(ids::SEND_ACK).await;
    assert_eq!(a["client_msg_id"], "c-1", "{a}");
    assert_eq!(a["msg_id"], ack["msg_id"], "{a}");
    assert!(
        a["conv"].is_string() && a["seq"].is_u64() && a["timestamp"].is_i64(),
        "{a}"
    );
    assert!(a.get("code").is_none_or(|c| c == 0), "{a}");
    let p = bob.expect(ids::GROUP_TEXT_PUSH).await;
    assert_eq!(
        (&p["msg_id"], &p["conv"], &p["seq"]),
        (&a["msg_id"], &a["conv"], &a["seq"])
    );
    // `timestamp` of 402 is Unix ms, of 312 Unix seconds.
    assert_eq!(
        p["timestamp"].as_i64().unwrap(),
        a["timestamp"].as_i64().unwrap() / 1000
    );
    alice.assert_quiet().await;

    // Without client_msg_id: none echoed.
    let ack = alice.group_msg(gid, "no id").await;
    let a = alice.expect(ids::SEND_ACK).await;
    assert!(a.get("client_msg_id").is_none(), "{a}");
    assert_eq!(a["msg_id"], ack["msg_id"]);
    bob.expect(ids::GROUP_TEXT_PUSH).await;

    // A retry with the same client_msg_id is not stored or pushed twice and gets the same ack.
    alice
        .send(
            ids::GROUP_TEXT_REQ,
            json!({"group_id": gid, "content": "v2 hi", "client_msg_id": "c-1"}),
        )
        .await;
    let ack2 = alice.expect(ids::GROUP_TEXT_ACK).await;
    let a2 = alice.expect(ids::SEND_ACK).await;
    assert_eq!(ack2["msg_id"], p["msg_id"]);
    assert_eq!((&a2["msg_id"], &a2["seq"]), (&p["msg_id"], &p["seq"]));
    bob.assert_quiet().await;

    // A v2 failure: 311 with the status, then a 402 with a code and no msg_id.
    let mut carol = server.user_v2("carol").await;
    carol
        .send(
            ids::GROUP_TEXT_REQ,
            json!({"group_id": gid, "content": "x", "client_msg_id": "c-9"}),
        )
        .await;
    assert_eq!(carol.expect(ids::GROUP_TEXT_ACK).await["status"], 3);
    let f = carol.expect(ids::SEND_ACK).await;
    assert!(f["code"].as_u64().is_some_and(|c| c != 0), "{f}");
    assert!(f["message"].is_string() && f.get("msg_id").is_none(), "{f}");
    assert_eq!(f["client_msg_id"], "c-9");
    carol.assert_quiet().await;
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// 234 history

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_history_pages_newest_first_with_last_id() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    let mut acks = Vec::new();
    for i in 0..25 {
        let (from, to) = if i % 2 == 0 {
            (&mut alice, &mut bob)
        } else {
            (&mut bob, &mut alice)
        };
        let content = format!("m{i}");
        acks.push(from.group_msg(gid, &content).await["msg_id"].clone());
        assert_eq!(to.expect(ids::GROUP_TEXT_PUSH).await["content"], content);
    }

    let mut seen_ids: Vec<u64> = Vec::new();
    let mut contents = Vec::new();
    let mut last_id = 0;
    for (expected_len, expected_more) in [(10, true), (10, true), (5, false)] {
        let mut body = json!({"group_id": gid, "limit": 10});
        if last_id > 0 {
            body["last_id"] = json!(last_id);
        }
        let page = req(&mut bob, ids::GROUP_HISTORY_REQ, body).await;
        assert_eq!(keys(&page), ["group_id", "has_more", "messages"], "{page}");
        assert_eq!(page["group_id"], gid);
        let msgs = page["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), expected_len, "{page}");
        assert_eq!(page["has_more"], expected_more, "{page}");
        for m in msgs {
            assert_eq!(
                keys(m),
                [
                    "content",
                    "id",
                    "message_type",
                    "msg_id",
                    "sender_id",
                    "sender_name",
                    "sender_uuid",
                    "timestamp"
                ],
                "{m}"
            );
            assert_eq!(m["message_type"], "text");
            assert!(m["timestamp"].is_i64());
            seen_ids.push(m["id"].as_u64().unwrap());
            contents.push(m["content"].as_str().unwrap().to_string());
        }
        last_id = msgs.last().unwrap()["id"].as_u64().unwrap();
    }
    // Strictly decreasing ids (no duplicates); newest first, nothing missing.
    assert!(seen_ids.windows(2).all(|w| w[0] > w[1]), "{seen_ids:?}");
    let expected: Vec<String> = (0..25).rev().map(|i| format!("m{i}")).collect();
    assert_eq!(contents, expected);

    // Sender fields and msg_id of one message (m1 from bob, m0 from alice).
    let page = req(
        &mut alice,
        ids::GROUP_HISTORY_REQ,
        json!({"group_id": gid, "limit": 100}),
    )
    .await;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 25);
    assert_eq!(page["has_more"], false);
    let m1 = &msgs[23];
    assert_eq!(m1["content"], "m1");
    assert_eq!(m1["sender_id"], bob.id());
    assert_eq!(m1["sender_uuid"], bob.uuid().as_str());
    assert_eq!(m1["sender_name"], "bob");
    assert_eq!(m1["msg_id"], acks[1]);
    assert_eq!(msgs[24]["sender_name"], "alice");

    // Before the oldest: empty.
    let oldest = msgs[24]["id"].as_u64().unwrap();
    let page = req(
        &mut alice,
        ids::GROUP_HISTORY_REQ,
        json!({"group_id": gid, "last_id": oldest}),
    )
    .await;
    assert_eq!(
        page,
        json!({"group_id": gid, "messages": [], "has_more": false})
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_history_limit_defaults_to_20_and_is_capped_at_100() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let gid = alice.create_group("g1").await;
    // Pipelined: 120 sends, then 120 acks.
    let mut batch = Vec::new();
    for i in 0..120 {
        let body = json!({"group_id": gid, "content": format!("m{i}")}).to_string();
        batch.extend_from_slice(&chat_zinx::protocol::codec::encode(
            ids::GROUP_TEXT_REQ,
            body.as_bytes(),
        ));
    }
    alice.send_raw(&batch).await;
    for _ in 0..120 {
        assert_eq!(alice.expect(ids::GROUP_TEXT_ACK).await["status"], 0);
    }
    let empty = req(
        &mut alice,
        ids::GROUP_HISTORY_REQ,
        json!({"group_id": gid, "limit": 0}),
    )
    .await;
    assert_eq!(empty["messages"].as_array().unwrap().len(), 20);
    for (limit, expected) in [
        (json!(null), 20),
        (json!(0), 20),
        (json!(-5), 20),
        (json!(1), 1),
        (json!(100), 100),
        (json!(101), 100),
        (json!(100_000), 100),
    ] {
        let page = req(
            &mut alice,
            ids::GROUP_HISTORY_REQ,
            json!({"group_id": gid, "limit": limit}),
        )
        .await;
        let msgs = page["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), expected, "limit {limit}");
        assert_eq!(msgs[0]["content"], "m119", "limit {limit}");
        assert_eq!(page["has_more"], true, "limit {limit}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_history_errors() {
    let server = TestServer::start().await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let gid = alice.create_group("g1").await;
    alice.group_msg(gid, "secret").await;
    let rows: &[Row] = &[
        (
            "a non-member",
            "bob",
            json!({ "group_id": gid }),
            err(&format!(
                "获取历史消息失败：user {} is not a member of group {gid}",
                bob.id()
            )),
        ),
        (
            "an unknown group",
            "alice",
            json!({"group_id": 4_040_404}),
            err(&format!(
                "获取历史消息失败：user {} is not a member of group 4040404",
                alice.id()
            )),
        ),
    ];
    check_rows(&mut [&mut alice, &mut bob], ids::GROUP_HISTORY_REQ, rows).await;
    for body in [
        &b""[..],
        b"{",
        br#"{"group_id":"1"}"#,
        br#"{"group_id":1,"last_id":-1}"#,
        br#"{"group_id":1,"limit":2.5}"#,
        br#"{"group_id":1} trailing"#,
    ] {
        alice.send_body(ids::GROUP_HISTORY_REQ, body).await;
        assert_eq!(
            alice.expect(ids::GROUP_HISTORY_RESP).await,
            err("请求格式错误"),
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    server.stop().await;
}

// -------------------------------------------------------------------------------------------
// Group backlog at login (`docs/protocol.md` §6.6)

/// Alice and bob share a group; bob disconnects and alice sends `texts` while bob is offline.
async fn missed_group_messages(server: &TestServer, texts: &[&str]) -> (Client, u64) {
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let bob_id = bob.id();
    let gid = alice.create_group("g1").await;
    bob.join_group(gid).await;
    bob.assert_quiet().await;
    drop(bob);
    wait_presence(&mut alice, gid, bob_id, false).await;
    for t in texts {
        assert_eq!(alice.group_msg(gid, t).await["status"], 0);
    }
    (alice, gid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_group_messages_arrive_after_login_oldest_first() {
    let server = TestServer::start().await;
    let (alice, gid) = missed_group_messages(&server, &["one", "two", "three"]).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    for text in ["one", "two", "three"] {
        let p = bob.expect(ids::GROUP_TEXT_PUSH).await;
        assert_eq!(p["content"], text, "{p}");
        assert_eq!(p["group_id"], gid);
        assert_eq!(p["from_user_id"], alice.id());
        assert!(p["msg_id"].is_string() && p["seq"].is_u64(), "{p}");
    }
    bob.assert_quiet().await;

    // Delivered once: a second device logging in later gets nothing more.
    let mut bob2 = server.client().await;
    bob2.login("bob").await;
    bob2.assert_quiet().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_backlog_at_login_is_capped_per_group() {
    let server = TestServer::with(|c| c.offline.group_backlog = 2).await;
    let (_alice, gid) = missed_group_messages(&server, &["one", "two", "three"]).await;
    let mut bob = server.client().await;
    bob.login("bob").await;
    for text in ["two", "three"] {
        assert_eq!(bob.expect(ids::GROUP_TEXT_PUSH).await["content"], text);
    }
    bob.assert_quiet().await;
    // The older one is still in the history.
    let h = req(&mut bob, ids::GROUP_HISTORY_REQ, json!({ "group_id": gid })).await;
    let contents: Vec<&str> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, ["three", "two", "one"]);
    server.stop().await;
}
