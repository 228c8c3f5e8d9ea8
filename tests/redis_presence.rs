//! Redis presence against a real redis-server: registration and batched lookups, two nodes
//! seeing each other, expiry of a node that stops refreshing, Redis dying (calls fail fast with
//! `Unavailable`, nothing hangs) and Redis coming back empty (the refresh rebuilds presence).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_zinx::backend::redis::{PresenceOptions, RedisPresence};
use chat_zinx::core::model::SessionInfo;
use chat_zinx::core::ports::{BackendError, Presence};
use chat_zinx::harness::{free_ports, redis_command, RedisServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A safety net for things that happen "eventually" (expiry, reconnection): generous, so a
/// slow machine only waits longer; never a speed assertion.
const DEADLINE: Duration = Duration::from_secs(60);

fn session(user: u64, node: &str, conn: u64, since: i64) -> SessionInfo {
    SessionInfo {
        user_id: user,
        node_id: node.into(),
        conn_id: conn,
        device: format!("dev-{conn}"),
        since,
    }
}

fn options(ttl: Duration, refresh: Duration) -> PresenceOptions {
    PresenceOptions {
        presence_ttl: ttl,
        refresh_interval: refresh,
        ..PresenceOptions::default()
    }
}

async fn connect(redis: &RedisServer, node: &str, opts: PresenceOptions) -> Arc<RedisPresence> {
    Arc::new(
        RedisPresence::connect(&redis.url(), node, opts)
            .await
            .expect("connect to redis"),
    )
}

/// Polls `check` until it returns true, failing after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The call must finish (not hang) and fail as "redis unavailable".
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    call: impl Future<Output = Result<T, BackendError>>,
) {
    let result = tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap_or_else(|_| panic!("{what} hung with redis down"));
    match result {
        Err(BackendError::Unavailable {
            backend, detail, ..
        }) => {
            assert_eq!(backend, "redis", "{what}: {detail}");
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

fn conns(map: &HashMap<u64, Vec<SessionInfo>>, user: u64) -> Vec<(String, u64)> {
    map.get(&user)
        .map(|v| v.iter().map(|s| (s.node_id.clone(), s.conn_id)).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn register_unregister_and_batched_sessions() {
    let redis = RedisServer::start().await;
    let p = connect(&redis, "node-a", PresenceOptions::default()).await;

    p.register(session(1, "node-a", 11, 200)).await.unwrap();
    p.register(session(1, "node-a", 10, 100)).await.unwrap();
    p.register(session(2, "node-a", 20, 100)).await.unwrap();
    // Registering the same connection again replaces it.
    p.register(session(2, "node-a", 20, 150)).await.unwrap();

    let got = p.sessions(&[1, 2, 3, 1]).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    // Oldest first.
    assert_eq!(
        conns(&got, 1),
        [("node-a".to_string(), 10), ("node-a".to_string(), 11)]
    );
    assert_eq!(got[&2], [session(2, "node-a", 20, 150)]);
    assert!(!got.contains_key(&3));
    assert_eq!(p.local_sessions(), 3);

    p.unregister(1, "node-a", 10).await.unwrap();
    p.unregister(2, "node-a", 20).await.unwrap();
    // Unregistering what is not there is fine.
    p.unregister(2, "node-a", 20).await.unwrap();
    let got = p.sessions(&[1, 2]).await.unwrap();
    assert_eq!(conns(&got, 1), [("node-a".to_string(), 11)]);
    assert!(!got.contains_key(&2));
    // The emptied hash is gone from Redis.
    assert_eq!(
        redis_command(redis.addr(), "EXISTS cz:p:{2}")
            .await
            .unwrap(),
        ":0"
    );

    // Many users at once (more than one pipeline's worth).
    let many: Vec<u64> = (1000..3500).collect();
    for u in &many {
        p.register(session(*u, "node-a", *u, 1)).await.unwrap();
    }
    let mut ask = many.clone();
    ask.push(999_999);
    let got = p.sessions(&ask).await.unwrap();
    assert_eq!(got.len(), many.len());
    assert!(many
        .iter()
        .all(|u| conns(&got, *u) == [("node-a".to_string(), *u)]));
    assert!(p.sessions(&[]).await.unwrap().is_empty());
    p.close().await;
}

#[tokio::test]
async fn two_nodes_see_each_others_sessions_and_connection_counts() {
    let redis = RedisServer::start().await;
    let a = connect(&redis, "node-a", PresenceOptions::default()).await;
    let b = connect(&redis, "node-b", PresenceOptions::default()).await;

    a.register(session(7, "node-a", 1, 100)).await.unwrap();
    b.register(session(7, "node-b", 1, 200)).await.unwrap();
    b.register(session(8, "node-b", 2, 300)).await.unwrap();

    for p in [&a, &b] {
        let got = p.sessions(&[7, 8]).await.unwrap();
        assert_eq!(
            conns(&got, 7),
            [("node-a".to_string(), 1), ("node-b".to_string(), 1)],
            "as seen by {}",
            p.node_id()
        );
        assert_eq!(conns(&got, 8), [("node-b".to_string(), 2)]);
    }

    // One node leaving its session does not touch the other's.
    b.unregister(7, "node-b", 1).await.unwrap();
    let got = a.sessions(&[7]).await.unwrap();
    assert_eq!(conns(&got, 7), [("node-a".to_string(), 1)]);

    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    let counts = a.node_connections().await.unwrap();
    assert_eq!(
        counts,
        HashMap::from([("node-a".to_string(), 1), ("node-b".to_string(), 1)])
    );

    // A graceful leave removes the node's sessions and its count at once.
    b.deregister_node().await.unwrap();
    assert!(!a.sessions(&[8]).await.unwrap().contains_key(&8));
    assert_eq!(
        a.node_connections().await.unwrap(),
        HashMap::from([("node-a".to_string(), 1)])
    );
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn a_node_that_stops_refreshing_vanishes_after_the_ttl() {
    let redis = RedisServer::start().await;
    let ttl = Duration::from_secs(2);
    let opts = options(ttl, Duration::from_millis(400));
    let a = connect(&redis, "node-a", opts.clone()).await;
    let b = connect(&redis, "node-b", opts).await;
    let tasks = TaskTracker::new();
    let stop_a = CancellationToken::new();
    let stop_b = CancellationToken::new();
    tasks.spawn(a.clone().run_refresh(stop_a.clone()));
    tasks.spawn(b.clone().run_refresh(stop_b.clone()));

    a.register(session(1, "node-a", 1, 1)).await.unwrap();
    b.register(session(1, "node-b", 2, 2)).await.unwrap();
    b.register(session(2, "node-b", 3, 3)).await.unwrap();
    let got = a.sessions(&[1, 2]).await.unwrap();
    assert_eq!(conns(&got, 1).len(), 2);

    // Node b "dies": no more refreshes, nothing unregistered.
    stop_b.cancel();
    eventually("node-b's sessions are ignored after the TTL", || async {
        let got = a.sessions(&[1, 2]).await.unwrap();
        conns(&got, 1) == [("node-a".to_string(), 1)] && !got.contains_key(&2)
    })
    .await;
    // ... and Redis itself dropped the hash that only node-b wrote.
    eventually("user 2's hash expires in redis", || async {
        redis_command(redis.addr(), "EXISTS cz:p:{2}")
            .await
            .unwrap()
            == ":0"
    })
    .await;
    // Node a's session is kept alive by its refresh.
    a.refresh().await.unwrap();
    let got = a.sessions(&[1]).await.unwrap();
    assert_eq!(conns(&got, 1), [("node-a".to_string(), 1)]);
    let counts = a.node_connections().await.unwrap();
    assert_eq!(counts.get("node-a"), Some(&1));
    assert!(!counts.contains_key("node-b"), "{counts:?}");

    stop_a.cancel();
    tasks.close();
    tasks.wait().await;
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn redis_dying_mid_test_makes_calls_fail_fast_and_nothing_hangs() {
    let mut redis = RedisServer::start().await;
    let p = connect(&redis, "node-a", PresenceOptions::default()).await;
    p.register(session(1, "node-a", 1, 1)).await.unwrap();

    // A reader hammering sessions() while Redis dies sees an error, not a hang.
    let reader = {
        let p = p.clone();
        let users: Vec<u64> = (1..5000).collect();
        tokio::spawn(async move {
            loop {
                match tokio::time::timeout(DEADLINE, p.sessions(&users)).await {
                    Ok(Ok(_)) => tokio::task::yield_now().await,
                    Ok(Err(e)) => return e,
                    Err(_) => panic!("sessions() hung while redis died"),
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.kill();
    let err = reader.await.unwrap();
    assert!(
        matches!(
            err,
            BackendError::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "{err:?}"
    );

    assert_unavailable("sessions", p.sessions(&[1])).await;
    assert_unavailable("register", p.register(session(2, "node-a", 2, 2))).await;
    assert_unavailable("unregister", p.unregister(1, "node-a", 1)).await;
    assert_unavailable("refresh", p.refresh()).await;
    assert_unavailable("node_connections", p.node_connections()).await;
    // The session registered during the outage is kept for the refresh to write later.
    assert_eq!(p.local_sessions(), 1);
    tokio::time::timeout(DEADLINE, p.close())
        .await
        .expect("close does not hang with redis down");
}

#[tokio::test]
async fn presence_rebuilds_itself_after_redis_returns_empty() {
    let mut redis = RedisServer::start().await;
    let p = connect(
        &redis,
        "node-a",
        options(Duration::from_secs(10), Duration::from_millis(500)),
    )
    .await;
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    tasks.spawn(p.clone().run_refresh(stop.clone()));

    p.register(session(1, "node-a", 1, 1)).await.unwrap();
    p.register(session(2, "node-a", 2, 2)).await.unwrap();

    redis.kill();
    // While Redis is down: a login (kept locally) and a logout (forgotten locally).
    assert_unavailable("register", p.register(session(3, "node-a", 3, 3))).await;
    assert_unavailable("unregister", p.unregister(2, "node-a", 2)).await;

    redis.restart().await;

    assert_eq!(
        redis_command(redis.addr(), "DBSIZE").await.unwrap(),
        ":0",
        "redis came back empty"
    );
    eventually("the refresh writes every local session again", || async {
        match p.sessions(&[1, 2, 3]).await {
            Ok(got) => {
                conns(&got, 1) == [("node-a".to_string(), 1)]
                    && conns(&got, 3) == [("node-a".to_string(), 3)]
                    && !got.contains_key(&2)
            }
            Err(_) => false,
        }
    })
    .await;
    eventually("this node's connection count is written again", || async {
        p.node_connections().await.ok() == Some(HashMap::from([("node-a".to_string(), 2)]))
    })
    .await;

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    p.close().await;
}

#[tokio::test]
async fn connect_to_nothing_fails_with_a_clear_error() {
    let port = free_ports(1)[0];
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let result = tokio::time::timeout(
        DEADLINE,
        RedisPresence::connect(&url, "node-a", PresenceOptions::default()),
    )
    .await
    .expect("connect gives up by itself");
    let err = result.err().expect("nothing listens there");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BackendError::Unavailable {
                backend: "redis",
                ..
            }
        ),
        "{text}"
    );
    assert!(text.contains("check redis.url"), "{text}");
    assert!(!text.contains("hunter2"), "password leaked: {text}");

    let err = RedisPresence::connect("http://x:1", "node-a", PresenceOptions::default())
        .await
        .err()
        .expect("not a redis URL");
    assert!(err.to_string().contains("redis-cluster://"), "{err}");
}
