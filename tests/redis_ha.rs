//! Redis presence on a real Redis Cluster (three masters, `redis-cli --cluster create`) and on a
//! real Sentinel set (master, replica, three Sentinels), with two chat nodes on a real NATS
//! server: users on one node are listed online on the other and direct messages reach them
//! live; on Sentinel the master is killed while users are online, and presence is right again
//! after the failover (users online, a new login visible on the other node) while no send is
//! refused, and a login during the failover becomes visible. No timed assertions: conditions are waited for with generous deadlines, and the
//! time presence took to come back is printed.

mod http_client;
mod support;

use std::time::Duration;

use chat_zinx::harness::{redis_cli, NatsServer, RedisCluster, RedisSentinelSet};
use chat_zinx::protocol::ids;
use serde_json::json;
use support::*;

/// The presence refresh interval of the test nodes (their TTL is three times that).
const REFRESH: Duration = Duration::from_secs(1);

struct Backends {
    nats: NatsServer,
    redis_url: String,
    _dir: tempfile::TempDir,
    secret: std::path::PathBuf,
}

impl Backends {
    async fn start(redis_url: String) -> Backends {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token_secret");
        Backends {
            nats: NatsServer::start().await,
            redis_url,
            _dir: dir,
            secret,
        }
    }

    async fn node(&self) -> TestServer {
        let (nats, redis, secret) = (self.nats.url(), self.redis_url.clone(), self.secret.clone());
        TestServer::with(move |c| {
            c.nats.url = Some(nats);
            c.nats.request_timeout = Duration::from_secs(2);
            c.redis.url = Some(redis);
            c.redis.command_timeout = Duration::from_secs(1);
            c.redis.refresh_interval = REFRESH;
            c.redis.presence_ttl = 3 * REFRESH;
            c.auth.token_secret_file = Some(secret);
        })
        .await
    }
}

/// A registered, logged-in v2 client whose login is complete (a ping is answered after it).
async fn login(node: &TestServer, name: &str) -> Client {
    let mut c = node.user_v2(name).await;
    c.send_body(ids::PING, b"").await;
    c.expect_skipping(ids::PONG).await;
    c
}

/// The members of group `gid` as (name, online), as `c` is told.
async fn members(c: &mut Client, gid: u64) -> Vec<(String, bool)> {
    c.send(ids::GROUP_MEMBERS_REQ, json!({"group_id": gid}))
        .await;
    let m = c.expect_skipping(ids::GROUP_MEMBERS_RESP).await;
    m["members"]
        .as_array()
        .unwrap_or_else(|| panic!("members: {m}"))
        .iter()
        .map(|x| {
            (
                x["username"].as_str().unwrap_or_default().to_string(),
                x["is_online"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// Waits until `c` sees every member of `gid` named in `names` online; returns how long that
/// took.
async fn wait_online(c: &mut Client, gid: u64, names: &[&str]) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        let list = members(c, gid).await;
        let all = names
            .iter()
            .all(|n| list.iter().any(|(name, online)| name == n && *online));
        if all {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < WAIT,
            "not all of {names:?} online within {WAIT:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A v2 direct message that must be accepted (SEND_ACK code 0).
async fn send_ok(c: &mut Client, to: &str, content: &str) {
    c.send(
        ids::TEXT_MSG,
        json!({"to_user_id": to, "content": content, "client_msg_id": content}),
    )
    .await;
    let ack = c.expect_skipping(ids::SEND_ACK).await;
    assert_eq!(ack["code"], 0, "a send was refused: {ack}");
}

/// Reads until the direct message `content` arrives (other pushes are skipped).
async fn receive(c: &mut Client, content: &str) {
    loop {
        let (id, body) = c.recv().await;
        if id == ids::TEXT_MSG && body["content"] == content {
            return;
        }
    }
}

/// Users on two nodes see each other online and chat live, both ways; returns the group they
/// are in.
async fn chat_across(alice: &mut Client, bob: &mut Client) -> u64 {
    let gid = alice.create_group("ha").await;
    bob.join_group(gid).await;
    wait_online(alice, gid, &["alice", "bob"]).await;
    wait_online(bob, gid, &["alice", "bob"]).await;
    send_ok(alice, "bob", "a to b").await;
    receive(bob, "a to b").await;
    send_ok(bob, "alice", "b to a").await;
    receive(alice, "b to a").await;
    gid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_see_each_other_and_deliver_live() {
    let redis = RedisCluster::start().await;
    let backends = Backends::start(redis.url()).await;
    let a = backends.node().await;
    let b = backends.node().await;
    let mut alice = login(&a, "alice").await;
    let mut bob = login(&b, "bob").await;
    let gid = chat_across(&mut alice, &mut bob).await;

    // More users, so that their keys (one hash slot per user) fall on more than one master:
    // each node's refresh pipeline then spans masters.
    let mut others = Vec::new();
    for (i, name) in ["carol", "dave", "erin", "frank"].iter().enumerate() {
        let node = if i % 2 == 0 { &a } else { &b };
        let mut c = login(node, name).await;
        c.join_group(gid).await;
        others.push(c);
    }
    wait_online(
        &mut alice,
        gid,
        &["alice", "bob", "carol", "dave", "erin", "frank"],
    )
    .await;
    let mut holding = 0;
    for port in redis.ports() {
        let size = redis_cli(port, &["dbsize"]).await.unwrap();
        if size.trim().parse::<u64>().unwrap_or(0) > 0 {
            holding += 1;
        }
    }
    assert!(holding >= 2, "presence keys on {holding} master(s) only");
    // After several refreshes (each rewrites every session across the masters) they are
    // still online and reachable.
    tokio::time::sleep(3 * REFRESH).await;
    wait_online(&mut bob, gid, &["alice", "carol", "erin"]).await;
    send_ok(&mut bob, "carol", "b to carol").await;
    receive(&mut others[0], "b to carol").await;
    drop(others);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_a_sentinel_failover_and_no_send_is_refused() {
    let mut redis = RedisSentinelSet::start().await;
    let backends = Backends::start(redis.url()).await;
    let a = backends.node().await;
    let b = backends.node().await;
    let mut alice = login(&a, "alice").await;
    let mut bob = login(&b, "bob").await;
    let gid = chat_across(&mut alice, &mut bob).await;

    // The master dies (SIGKILL) while alice and bob are online.
    let old = redis.master_port().await.unwrap();
    let victim = redis
        .data()
        .iter_mut()
        .find(|s| s.port() == old)
        .expect("the master is one of the data servers");
    victim.kill();
    let killed = tokio::time::Instant::now();
    // Sends during the failover are accepted (Redis is not on the durable path) and reach
    // bob, live or from the cluster-wide fallback.
    send_ok(&mut alice, "bob", "during failover").await;
    receive(&mut bob, "during failover").await;
    // A login while there may be no master: its presence write can fail; the node keeps the
    // session and writes it again once it reaches the new master.
    let mut dave = login(&b, "dave").await;
    dave.join_group(gid).await;
    let new = redis.wait_for_new_master(old).await.unwrap();
    assert_ne!(new, old);
    let promoted = tokio::time::Instant::now();
    let failover = promoted - killed;

    // Presence is right again: both listed online on both nodes, and a new login on b is
    // seen on a.
    let back = wait_online(&mut alice, gid, &["alice", "bob"]).await;
    wait_online(&mut bob, gid, &["alice", "bob"]).await;
    let mut carol = login(&b, "carol").await;
    carol.join_group(gid).await;
    wait_online(&mut alice, gid, &["alice", "bob", "carol", "dave"]).await;
    eprintln!(
        "failover: the Sentinels named a new master {failover:?} after the kill; old master \
         :{old}, new :{new}; alice and bob listed online {back:?} \
         after the new master was named, dave (logged in during the failover) and carol (after \
         it) seen on the other node {:?} after it (refresh interval {REFRESH:?})",
        promoted.elapsed()
    );
    for n in 0..3 {
        let text = format!("after failover {n}");
        send_ok(&mut alice, "carol", &text).await;
        receive(&mut carol, &text).await;
        let text = format!("back {n}");
        send_ok(&mut carol, "alice", &text).await;
        receive(&mut alice, &text).await;
    }
    // The new master holds the sessions.
    let keys = redis_cli(new, &["dbsize"]).await.unwrap();
    assert!(keys.trim().parse::<u64>().unwrap_or(0) > 0, "{keys}");
    a.stop().await;
    b.stop().await;
}

/// The Sentinel deployment of Terraform's `redis_mode = "sentinel"`: the servers and the
/// Sentinels require the one Redis password, which the URL carries (the client sends it to the
/// Sentinels too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_through_sentinels_that_require_the_password() {
    use chat_zinx::backend::redis::{PresenceOptions, RedisPresence};
    use chat_zinx::core::model::SessionInfo;
    use chat_zinx::core::ports::Presence;

    let password = "sentinel-test-password";
    let redis = RedisSentinelSet::try_start_with_password(Some(password))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = redis.url();
    assert!(url.contains(password));
    let a = RedisPresence::connect(&url, "n-a", PresenceOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = RedisPresence::connect(&url, "n-b", PresenceOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    a.register(SessionInfo {
        user_id: 7,
        node_id: "n-a".into(),
        conn_id: 1,
        device: "pc".into(),
        since: 1,
    })
    .await
    .unwrap();
    let seen = b.sessions(&[7]).await.unwrap();
    assert_eq!(seen[&7][0].node_id, "n-a", "{seen:?}");
    // Without the password the Sentinels refuse the client.
    let open = url.replace(&format!(":{password}@"), "");
    let e = RedisPresence::connect(&open, "n-c", PresenceOptions::default())
        .await
        .err()
        .expect("refused without the password");
    eprintln!("without the password: {e}");
    a.close().await;
    b.close().await;
}

/// The Cluster deployment of Terraform's `redis_mode = "cluster"`: every node requires the
/// password, the cluster is created with it, and the presence client (seeded with one node
/// and the others as `node=`) uses it on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_a_cluster_that_requires_the_password() {
    use chat_zinx::backend::redis::{PresenceOptions, RedisPresence};
    use chat_zinx::core::model::SessionInfo;
    use chat_zinx::core::ports::Presence;
    use chat_zinx::harness::redis_cli_auth;

    let password = "cluster-test-password";
    let redis = RedisCluster::try_start_with_password(Some(password))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = redis.url();
    let a = RedisPresence::connect(&url, "n-a", PresenceOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let b = RedisPresence::connect(&url, "n-b", PresenceOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Enough users for their slots to fall on every master.
    let users: Vec<u64> = (1..=30).collect();
    for &user in &users {
        a.register(SessionInfo {
            user_id: user,
            node_id: "n-a".into(),
            conn_id: user,
            device: "pc".into(),
            since: 1,
        })
        .await
        .unwrap();
    }
    assert_eq!(a.refresh().await.unwrap(), users.len());
    let seen = b.sessions(&users).await.unwrap();
    assert_eq!(seen.len(), users.len(), "{seen:?}");
    for port in redis.ports() {
        let size = redis_cli_auth(port, Some(password), &["dbsize"])
            .await
            .unwrap();
        assert!(
            size.trim().parse::<u64>().unwrap_or(0) > 0,
            "master :{port} holds nothing"
        );
    }
    a.close().await;
    b.close().await;
}
