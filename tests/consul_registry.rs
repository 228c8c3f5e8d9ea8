//! The Consul registry and live settings against a real `consul agent -dev` (never mocked).
//!
//! Waits use generous deadlines and only guard against hangs: nothing here asserts speed.

mod support;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_zinx::backend::consul::{ConsulRegistry, ConsulSettings, KvWatcher};
use chat_zinx::config::live::{LiveSettings, LiveState};
use chat_zinx::core::model::NodeInfo;
use chat_zinx::core::ports::{BackendError, Registry};
use chat_zinx::harness::ConsulAgent;
use chat_zinx::protocol::ids;
use serde_json::Value;
use support::TestServer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a test waits for something that must happen (a hang guard, not a speed claim).
const DEADLINE: Duration = Duration::from_secs(90);

/// Polls `f` until it returns `Some`, panicking with `what` after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: did not happen within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `fut`, failing the test if it does not finish within [`DEADLINE`].
async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no result within {DEADLINE:?}"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// GET a Consul API path as JSON; `None` when Consul does not answer.
async fn get(consul: &str, path: &str) -> Option<Value> {
    let resp = http().get(format!("{consul}{path}")).send().await.ok()?;
    resp.json().await.ok()
}

async fn kv_put(consul: &str, key: &str, value: &str) {
    let resp = http()
        .put(format!("{consul}/v1/kv/{key}"))
        .body(value.to_string())
        .send()
        .await
        .expect("KV put");
    assert!(resp.status().is_success(), "KV put {key}: {resp:?}");
}

async fn kv_delete(consul: &str, key: &str) {
    let resp = http()
        .delete(format!("{consul}/v1/kv/{key}"))
        .send()
        .await
        .expect("KV delete");
    assert!(resp.status().is_success(), "KV delete {key}: {resp:?}");
}

/// The service `id` as the local agent has it, if registered.
async fn agent_service(consul: &str, id: &str) -> Option<Value> {
    let services = get(consul, "/v1/agent/services").await?;
    services.get(id).cloned()
}

/// The status of the TTL check of node `id` (`passing`, `critical`), if registered.
async fn check_status(consul: &str, id: &str) -> Option<String> {
    let checks = get(consul, "/v1/agent/checks").await?;
    checks
        .get(format!("service:{id}"))?
        .get("Status")?
        .as_str()
        .map(str::to_string)
}

fn settings(consul: &ConsulAgent, check_ttl: Duration) -> ConsulSettings {
    ConsulSettings {
        base_url: consul.url(),
        token: None,
        ca_file: None,
        service: "chat-zinx".into(),
        check_ttl,
        deregister_after: Duration::from_secs(60),
        kv_prefix: "chat-zinx/settings/".into(),
        request_timeout: Duration::from_secs(5),
        // Short, so that the watchers notice a stopped Consul without waiting long.
        watch_wait: Duration::from_secs(5),
    }
}

fn node(id: &str, port: u16, connections: u64) -> NodeInfo {
    NodeInfo {
        node_id: id.into(),
        addr: format!("127.0.0.1:{port}"),
        tls_addr: None,
        connections,
        capacity: 100,
        draining: false,
    }
}

/// A registry with its upkeep running until `shutdown` is cancelled.
fn start_registry(
    s: &ConsulSettings,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> Arc<ConsulRegistry> {
    let r = Arc::new(ConsulRegistry::new(s).expect("client"));
    tasks.spawn(r.clone().run(shutdown.clone()));
    r
}

fn ids(nodes: &[NodeInfo]) -> Vec<&str> {
    nodes.iter().map(|n| n.node_id.as_str()).collect()
}

async fn stop_tasks(tasks: TaskTracker, shutdown: CancellationToken) {
    shutdown.cancel();
    tasks.close();
    bounded("the registry tasks stop", tasks.wait()).await;
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, BackendError>) {
    match r {
        Err(BackendError::Unavailable {
            backend, detail, ..
        }) => {
            assert_eq!(backend, "consul", "{what}: {detail}");
            assert!(!detail.is_empty());
        }
        other => panic!("{what}: expected Unavailable from consul, got {other:?}"),
    }
}

#[tokio::test]
async fn a_node_registers_with_meta_and_a_passing_ttl_check_and_deregisters_on_shutdown() {
    let consul = ConsulAgent::start().await;
    let url = consul.url();
    let server = TestServer::with(|c| {
        c.server.node_id = Some("cz-a".into());
        c.server.max_connections = 1234;
        c.consul.addr = Some(consul.http_addr());
    })
    .await;
    let port = server.addr.port();

    let svc = agent_service(&url, "cz-a").await.expect("registered");
    assert_eq!(svc["Service"], "chat-zinx");
    assert_eq!(svc["Address"], "127.0.0.1");
    assert_eq!(svc["Port"], port);
    assert_eq!(svc["Tags"], serde_json::json!(["chat"]));
    let meta = &svc["Meta"];
    assert_eq!(meta["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["connections"], "0");
    assert_eq!(meta["capacity"], "1234");
    assert_eq!(meta["draining"], "false");

    let checks = get(&url, "/v1/agent/checks").await.unwrap();
    let check = &checks["service:cz-a"];
    assert_eq!(check["Type"], "ttl", "{checks}");
    assert_eq!(check["Status"], "passing", "{checks}");
    assert_eq!(check["ServiceID"], "cz-a");

    // The node finds itself among the healthy nodes (from the watch, not a request).
    let registry = server.node().ctx.core.backends().registry.clone();
    let nodes = eventually("the node lists itself", || async {
        registry.nodes().await.ok().filter(|n| !n.is_empty())
    })
    .await;
    assert_eq!(ids(&nodes), ["cz-a"]);
    assert_eq!(nodes[0].addr, format!("127.0.0.1:{port}"));
    assert!(registry.health().await.is_ok());

    // Load updates reach the meta.
    registry.update_load("cz-a", 7, false).await.unwrap();
    let svc = agent_service(&url, "cz-a").await.unwrap();
    assert_eq!(svc["Meta"]["connections"], "7");
    assert_eq!(check_status(&url, "cz-a").await.as_deref(), Some("passing"));

    server.stop().await;
    assert!(
        agent_service(&url, "cz-a").await.is_none(),
        "deregistered on shutdown"
    );
    assert!(check_status(&url, "cz-a").await.is_none());
}

#[tokio::test]
async fn registries_see_each_other_least_loaded_first_and_skip_draining_nodes() {
    let consul = ConsulAgent::start().await;
    let s = settings(&consul, Duration::from_secs(5));
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let a = start_registry(&s, &tasks, &shutdown);
    let b = start_registry(&s, &tasks, &shutdown);
    a.register(node("node-a", 9001, 50)).await.unwrap();
    b.register(node("node-b", 9002, 10)).await.unwrap();

    for (name, r) in [("a", &a), ("b", &b)] {
        let nodes = eventually(&format!("{name} sees both nodes"), || async {
            r.nodes().await.ok().filter(|n| n.len() == 2)
        })
        .await;
        assert_eq!(ids(&nodes), ["node-b", "node-a"], "least loaded first");
        assert_eq!(nodes[0].addr, "127.0.0.1:9002");
        assert_eq!((nodes[0].connections, nodes[0].capacity), (10, 100));
    }

    // a becomes the least loaded.
    a.update_load("node-a", 1, false).await.unwrap();
    eventually("b sees a as least loaded", || async {
        let n = b.nodes().await.ok()?;
        (ids(&n) == ["node-a", "node-b"]).then_some(())
    })
    .await;

    // A draining node is not offered.
    b.update_load("node-b", 10, true).await.unwrap();
    eventually("a no longer offers the draining b", || async {
        let n = a.nodes().await.ok()?;
        (ids(&n) == ["node-a"]).then_some(())
    })
    .await;
    // Another registry's node is not ours to update: ignored.
    a.update_load("node-b", 99, false).await.unwrap();
    assert_eq!(
        agent_service(&consul.url(), "node-b").await.unwrap()["Meta"]["draining"],
        "true"
    );

    a.deregister("node-a").await.unwrap();
    b.deregister("node-b").await.unwrap();
    stop_tasks(tasks, shutdown).await;
}

#[tokio::test]
async fn a_tls_listener_is_advertised_in_the_meta_and_discovery_prefers_it() {
    let consul = ConsulAgent::start().await;
    let s = settings(&consul, Duration::from_secs(5));
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let a = start_registry(&s, &tasks, &shutdown);
    let b = start_registry(&s, &tasks, &shutdown);
    let mut with_tls = node("node-tls", 9001, 50);
    with_tls.tls_addr = Some("127.0.0.1:9443".into());
    a.register(with_tls).await.unwrap();
    b.register(node("node-plain", 9002, 10)).await.unwrap();

    let svc = agent_service(&consul.url(), "node-tls").await.unwrap();
    assert_eq!(svc["Meta"]["tls_port"], "9443");
    assert!(
        agent_service(&consul.url(), "node-plain").await.unwrap()["Meta"]
            .get("tls_port")
            .is_none(),
        "no TLS listener, no tls_port"
    );
    // The peers learn the TLS address (redirects carry it).
    let nodes = eventually("b sees both nodes", || async {
        b.nodes().await.ok().filter(|n| n.len() == 2)
    })
    .await;
    assert_eq!(ids(&nodes), ["node-plain", "node-tls"]);
    assert_eq!(nodes[0].tls_addr, None);
    assert_eq!(nodes[1].tls_addr.as_deref(), Some("127.0.0.1:9443"));

    // The client's discovery: TLS where offered, plain elsewhere; only TLS with --tls.
    use chat_zinx::client::discovery::nodes_from_consul;
    let all = nodes_from_consul(&consul.url(), "chat-zinx", None, false)
        .await
        .unwrap();
    assert_eq!(all, ["127.0.0.1:9002", "tls://127.0.0.1:9443"]);
    let tls_only = nodes_from_consul(&consul.url(), "chat-zinx", None, true)
        .await
        .unwrap();
    assert_eq!(tls_only, ["tls://127.0.0.1:9443"]);

    a.deregister("node-tls").await.unwrap();
    b.deregister("node-plain").await.unwrap();
    stop_tasks(tasks, shutdown).await;
}

#[tokio::test]
async fn a_node_that_stops_passing_its_check_goes_critical_and_leaves_the_list() {
    let consul = ConsulAgent::start().await;
    let url = consul.url();
    // Passed every third of the TTL: a margin of seconds for a busy machine.
    let s = settings(&consul, Duration::from_secs(4));
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    let b = start_registry(&s, &tasks, &shutdown);
    b.register(node("node-b", 9002, 0)).await.unwrap();

    // a's upkeep has its own token: cancelling it is a node that hangs (no deregistration).
    let (a_tasks, a_shutdown) = (TaskTracker::new(), CancellationToken::new());
    let a = start_registry(&s, &a_tasks, &a_shutdown);
    a.register(node("node-a", 9001, 0)).await.unwrap();
    eventually("b sees a", || async {
        let n = b.nodes().await.ok()?;
        ids(&n).contains(&"node-a").then_some(())
    })
    .await;
    // While the upkeep runs, the check stays passing past several TTLs.
    tokio::time::sleep(s.check_ttl * 2).await;
    assert_eq!(
        check_status(&url, "node-a").await.as_deref(),
        Some("passing")
    );

    stop_tasks(a_tasks, a_shutdown).await;
    eventually("a's check goes critical", || async {
        (check_status(&url, "node-a").await.as_deref() == Some("critical")).then_some(())
    })
    .await;
    let nodes = eventually("b drops a", || async {
        let n = b.nodes().await.ok()?;
        (!ids(&n).contains(&"node-a")).then_some(n)
    })
    .await;
    assert_eq!(ids(&nodes), ["node-b"]);
    // Still registered (until deregister_after): only its health left the list.
    assert!(agent_service(&url, "node-a").await.is_some());

    b.deregister("node-b").await.unwrap();
    stop_tasks(tasks, shutdown).await;
}

#[tokio::test]
async fn live_settings_from_kv_apply_without_restart_and_invalid_values_are_ignored() {
    let consul = ConsulAgent::start().await;
    let url = consul.url();

    // The watcher alone, its snapshots folded into live settings: every change is seen.
    let seen: Arc<Mutex<Vec<LiveSettings>>> = Arc::default();
    let record = seen.clone();
    let state = Mutex::new(LiveState::default());
    let mut s = settings(&consul, Duration::from_secs(5));
    s.kv_prefix = "watch-test/".into();
    let watcher = KvWatcher::new(
        &s,
        Arc::new(move |snapshot| {
            if let Some(l) = state.lock().unwrap().apply(snapshot) {
                record.lock().unwrap().push(l);
            }
        }),
    )
    .unwrap();
    let (tasks, shutdown) = (TaskTracker::new(), CancellationToken::new());
    tasks.spawn(watcher.run(shutdown.clone()));
    kv_put(&url, "watch-test/max_devices", "2").await;
    let last = || seen.lock().unwrap().last().cloned();
    eventually("the callback gets max_devices", || async {
        last().filter(|l| l.max_devices == Some(2))
    })
    .await;
    // Invalid, then a valid change of another key: the snapshot with both is applied, the
    // invalid value is ignored and the old one stays.
    kv_put(&url, "watch-test/max_devices", "none").await;
    kv_put(&url, "watch-test/rate_burst", "9").await;
    let l = eventually("the callback gets rate_burst", || async {
        last().filter(|l| l.rate_burst == Some(9))
    })
    .await;
    assert_eq!(l.max_devices, Some(2), "the invalid value was ignored");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|l| l.max_devices == Some(2)));
    stop_tasks(tasks, shutdown).await;

    // Through a real node: the settings reach the connections and the core.
    let server = TestServer::with(|c| {
        c.session.max_devices = 4;
        c.protocol.rate_per_sec = 200;
        c.consul.addr = Some(consul.http_addr());
    })
    .await;
    let ctx = server.node().ctx.clone();
    kv_put(&url, "chat-zinx/settings/max_devices", "2").await;
    kv_put(&url, "chat-zinx/settings/rate_per_sec", "50").await;
    kv_put(&url, "chat-zinx/settings/idle_timeout", "90s").await;
    eventually("the node applies the live settings", || async {
        let ok = ctx.core.limits().max_devices == 2
            && ctx.settings().rate_per_sec == 50
            && ctx.settings().idle_timeout == Duration::from_secs(90);
        ok.then_some(())
    })
    .await;

    kv_put(&url, "chat-zinx/settings/max_devices", "-1").await;
    kv_put(&url, "chat-zinx/settings/group_backlog", "3").await;
    eventually("the node applies group_backlog", || async {
        (ctx.core.limits().group_backlog == 3).then_some(())
    })
    .await;
    assert_eq!(ctx.core.limits().max_devices, 2, "invalid value ignored");

    // A removed key goes back to the configured value.
    kv_delete(&url, "chat-zinx/settings/max_devices").await;
    kv_delete(&url, "chat-zinx/settings/rate_per_sec").await;
    eventually("the node reverts to the configuration", || async {
        let ok = ctx.core.limits().max_devices == 4 && ctx.settings().rate_per_sec == 200;
        ok.then_some(())
    })
    .await;
    assert_eq!(ctx.settings().idle_timeout, Duration::from_secs(90));

    // The applied limit is the one the core enforces: a third device kicks the oldest.
    kv_put(&url, "chat-zinx/settings/max_devices", "1").await;
    eventually("max_devices 1 applied", || async {
        (ctx.core.limits().max_devices == 1).then_some(())
    })
    .await;
    let mut first = server.user("carol").await;
    let mut second = server.client().await;
    second.login("carol").await;
    let kicked = first.until_closed().await;
    assert!(
        kicked.iter().any(|f| f.id == ids::ERROR),
        "the older device was told why it is closed"
    );
    server.stop().await;
}

#[tokio::test]
async fn consul_going_away_fails_calls_as_unavailable_chat_goes_on_and_the_node_registers_again() {
    let mut consul = ConsulAgent::start().await;
    let url = consul.url();
    let server = TestServer::with(|c| {
        c.server.node_id = Some("cz-r".into());
        c.consul.addr = Some(consul.http_addr());
        c.consul.check_ttl = Duration::from_secs(2);
        c.consul.request_timeout = Duration::from_secs(2);
    })
    .await;
    let registry = server.node().ctx.core.backends().registry.clone();
    eventually("the node lists itself", || async {
        registry.nodes().await.ok().filter(|n| !n.is_empty())
    })
    .await;
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;

    consul.stop();

    // Calls fail with Unavailable instead of hanging.
    assert_unavailable("health", bounded("health", registry.health()).await);
    assert_unavailable(
        "update_load",
        bounded("update_load", registry.update_load("cz-r", 2, false)).await,
    );
    let r = eventually("nodes() reports the outage", || async {
        registry.nodes().await.err()
    })
    .await;
    assert_unavailable::<()>("nodes", Err(r));

    // The chat goes on.
    alice.msg("bob", "consul is down").await;
    assert_eq!(bob.expect(ids::TEXT_MSG).await["content"], "consul is down");

    // Dev mode forgets everything: the node registers again by itself.
    consul.restart().await;
    eventually("the node registers again", || async {
        agent_service(&url, "cz-r").await
    })
    .await;
    eventually("its check passes", || async {
        (check_status(&url, "cz-r").await.as_deref() == Some("passing")).then_some(())
    })
    .await;
    let nodes = eventually("the node lists itself again", || async {
        registry.nodes().await.ok().filter(|n| !n.is_empty())
    })
    .await;
    assert_eq!(ids(&nodes), ["cz-r"]);
    assert!(registry.health().await.is_ok());

    bob.msg("alice", "consul is back").await;
    assert_eq!(
        alice.expect(ids::TEXT_MSG).await["content"],
        "consul is back"
    );
    server.stop().await;
    assert!(agent_service(&url, "cz-r").await.is_none());
}
